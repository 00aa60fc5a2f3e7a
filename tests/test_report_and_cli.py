"""Reports and the CLI: the JUnit file and the exit status follow the checks."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from hybrid_assets.catalog import CatalogError, load_catalog
from hybrid_assets.catalog.loader import CATALOG_DIR
from hybrid_assets.cli import main, select_cases
from hybrid_assets.harness.results import Verdict
from hybrid_assets.report import build_report, to_html, to_junit, to_markdown
from hybrid_assets.store import MetricsStore
from tests.test_store import payload
from workers.host.command import bundled_worker_command


def store_with(tmp_path: Path, verdict: Verdict) -> MetricsStore:
    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_case(payload("run-1", 50, verdict))
    return store


def test_report_renders_evidence_and_junit_counts(tmp_path: Path) -> None:
    report = build_report(store_with(tmp_path, Verdict.FAIL), "run-1", load_catalog())
    assert not report.all_checks_passed and not report.production_ready
    md = to_markdown(report)
    assert "NOT READY" in md and "round_trip_p99_under_10ms" in md and "0.099" in md
    assert "<table>" in to_html(report)
    root = ET.fromstring(to_junit(report))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and failure.get("type") == "FAIL"
    part1 = next(c for c in report.criteria if c.part == 1)
    assert part1.passed == 0 and "42 promised" in part1.evidence


def test_report_subcommand_exit_status_follows_the_checks(tmp_path: Path) -> None:
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    ok.mkdir()
    bad.mkdir()
    store_with(ok, Verdict.PASS)
    store_with(bad, Verdict.INVALID)
    assert main(["report", "--store", str(ok / "m.duckdb"), "--reports", str(ok / "r")]) == 0
    assert main(["report", "--store", str(bad / "m.duckdb"), "--reports", str(bad / "r")]) == 1
    junit = ET.parse(bad / "r" / "junit.xml").getroot()
    assert junit.find("testsuite/testcase/failure").get("type") == "INVALID"


def test_selection_by_case_section_and_part() -> None:
    cases = load_catalog()
    assert [c.id for c in select_cases(cases, ["cold_start_device_discovery"], [], [])] == [
        "cold_start_device_discovery"]
    in_41 = select_cases(cases, [], ["4.1"], [])
    assert "cold_start_device_discovery" in {c.id for c in in_41}  # also_covers counts
    assert all("4.1" in c.sections for c in in_41)
    assert select_cases(cases, [], [], [3]) == [c for c in cases if c.part == 3]
    with pytest.raises(CatalogError, match=r"no case matches \['nope'\]"):
        select_cases(cases, ["nope"], [], [])
    with pytest.raises(CatalogError, match="matches no case"):
        select_cases(cases, ["cold_start_device_discovery"], [], [3])


@pytest.mark.subprocess
@pytest.mark.dagster
def test_cli_run_exits_1_when_a_check_fails(tmp_path: Path) -> None:
    catalog = yaml.safe_load((CATALOG_DIR / "part1.yaml").read_text())
    for case in catalog["cases"]:
        for profile in case["params"]:
            case["params"][profile] = {"cold_starts": 3, "round_trips": 60}
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(catalog))
    slow = " ".join([*bundled_worker_command(), "--allow-fault-injection", "--fault-startup-delay", "0.6"])
    env = {**os.environ, "HYBRID_CATALOG_PATH": str(tmp_path / "cases.yaml"), "DAGSTER_HOME": ""}
    env.pop("DAGSTER_HOME")
    cmd = [sys.executable, "-m", "hybrid_assets", "run", "--store", str(tmp_path / "m.duckdb"),
           "--reports", str(tmp_path / "r"), "--worker-cmd", slow, "--section", "1.1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FAIL     cold_start_device_discovery" in done.stdout
    failures = ET.parse(tmp_path / "r" / "junit.xml").getroot().findall(".//failure")
    assert {f.get("type") for f in failures} >= {"FAIL"}
    bad = subprocess.run([*cmd[:-2], "--section", "9.9"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no case matches ['9.9']" in bad.stderr
