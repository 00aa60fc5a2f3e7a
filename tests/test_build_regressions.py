"""Builds compared end to end: three builds through the CLI on real workers; the slowed one is
flagged on the right metric against the right baseline, the unchanged one is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hybrid_assets.catalog.loader import CATALOG_DIR
from hybrid_assets.store import MetricsStore
from workers.host.command import bundled_worker_command

pytestmark = [pytest.mark.dagster, pytest.mark.subprocess, pytest.mark.slow]
ROUND_TRIPS = 200


@pytest.fixture(scope="module")
def three_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    tmp = tmp_path_factory.mktemp("builds")
    catalog = yaml.safe_load((CATALOG_DIR / "part1.yaml").read_text())
    case = next(c for c in catalog["cases"] if c["id"] == "cold_start_device_discovery")
    case["params"] = {p: {"cold_starts": 2, "round_trips": ROUND_TRIPS, "payload_bytes": 64}
                      for p in ("smoke", "standard", "spec")}
    catalog["cases"] = [case]
    (tmp / "cases.yaml").write_text(yaml.safe_dump(catalog))
    worker = bundled_worker_command()
    slowed = [*worker, "--allow-fault-injection", "--fault-latency", "0.005"]  # +5 ms per request
    manifests = {"b1": worker, "b2": worker, "b3": slowed}  # b2 is b1's code under a new id
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["HYBRID_CATALOG_PATH"] = str(tmp / "cases.yaml")
    done = {}
    for build_id, cmd in manifests.items():
        path = tmp / f"{build_id}.json"
        path.write_text(json.dumps({"build_id": build_id, "version": "1.0", "worker_cmd": cmd}))
        done[build_id] = subprocess.run(
            [sys.executable, "-m", "hybrid_assets", "run", "--manifest", str(path), "--store", str(tmp / "m.duckdb"),
             "--reports", str(tmp / f"r-{build_id}")], env=env, capture_output=True, text=True, timeout=300)
        assert done[build_id].returncode in (0, 1), done[build_id].stdout[-2000:] + done[build_id].stderr[-3000:]
    return tmp, done


def _findings(store: MetricsStore, build_id: str):
    return store.query("SELECT * FROM v_regressions WHERE build_id = ? AND metric = 'round_trip_s'", [build_id])


def test_slowed_build_is_flagged_and_unchanged_build_is_not(three_builds) -> None:
    tmp, _ = three_builds
    store = MetricsStore(tmp / "m.duckdb")
    first = _findings(store, "b1")
    assert first.verdict.tolist() == ["INVALID"] and first.baseline_build_id.isna().all()  # no earlier build
    same = _findings(store, "b2")
    assert same.verdict.tolist() == ["UNCHANGED"], same.detail.tolist()
    assert same.baseline_build_id.tolist() == ["b1"]
    slowed = _findings(store, "b3")
    assert slowed.verdict.tolist() == ["REGRESSED"], slowed.detail.tolist()
    row = slowed.iloc[0]
    assert row.baseline_build_id == "b2" and row.change_ratio > 2 and row.p_value < 0.01 and row.ci_low > 1.1
    # Only b3 is flagged, on any metric.
    flagged = store.query("SELECT DISTINCT build_id FROM v_regressions WHERE verdict IN ('REGRESSED', 'DRIFTED')")
    assert flagged.build_id.tolist() == ["b3"]


def test_the_summary_and_report_name_the_regression(three_builds) -> None:
    tmp, done = three_builds
    assert "REGRESSED" in done["b3"].stdout and "round_trip_s" in done["b3"].stdout
    assert "REGRESSED" not in done["b2"].stdout
    report = (tmp / "r-b3" / "report.md").read_text()
    assert "REGRESSED" in report and "round_trip_s" in report
    # The report draws the trend of the metric that regressed, not just any line.
    png = "cold_start_device_discovery__round_trip_s__p99.png"
    assert [p.name for p in (tmp / "r-b3").glob("trends/*.png")] == [png]
    assert f"![trend of cold_start_device_discovery](trends/{png})" in report


def test_rerunning_a_build_replaces_its_results(three_builds) -> None:
    tmp, _ = three_builds
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["HYBRID_CATALOG_PATH"] = str(tmp / "cases.yaml")
    again = subprocess.run(
        [sys.executable, "-m", "hybrid_assets", "run", "--manifest", str(tmp / "b2.json"), "--store",
         str(tmp / "m.duckdb"), "--reports", str(tmp / "r-b2-again")], env=env, capture_output=True, text=True,
        timeout=300)
    assert again.returncode in (0, 1), again.stderr[-3000:]
    store = MetricsStore(tmp / "m.duckdb")
    per_build = store.query("SELECT build_id, count(*) AS runs FROM v_runs GROUP BY 1 ORDER BY 1")
    assert per_build.values.tolist() == [["b1", 1], ["b2", 1], ["b3", 1]]
    samples = store.query("SELECT count(*) AS n FROM v_samples WHERE build_id = 'b2' AND metric = 'round_trip_s'")
    assert samples.n[0] == ROUND_TRIPS
    assert store.query("SELECT count(*) AS n FROM superseded").n[0] == 1


def test_a_reused_build_id_and_an_unknown_baseline_are_refused(three_builds) -> None:
    tmp, _ = three_builds
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["HYBRID_CATALOG_PATH"] = str(tmp / "cases.yaml")
    clash = tmp / "clash.json"
    clash.write_text(json.dumps({"build_id": "b1", "version": "2.0", "worker_cmd": bundled_worker_command()}))
    before = MetricsStore(tmp / "m.duckdb").query("SELECT count(*) AS n FROM samples").n[0]
    done = subprocess.run([sys.executable, "-m", "hybrid_assets", "run", "--manifest", str(clash), "--store",
                           str(tmp / "m.duckdb")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "build id 'b1' is already registered" in done.stderr
    pin = subprocess.run([sys.executable, "-m", "hybrid_assets", "baseline", "pin", "nope", "--store",
                          str(tmp / "m.duckdb")], env=env, capture_output=True, text=True, timeout=120)
    assert pin.returncode == 2 and "no such build" in pin.stderr
    assert MetricsStore(tmp / "m.duckdb").query("SELECT count(*) AS n FROM samples").n[0] == before
