"""Parquet export, trend plots and Data Docs from stores written with payloads (no workers)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import duckdb
import pytest
from PIL import Image

from hybrid_assets.analysis import NoHistoryError, UnknownCaseError, UnknownRunError
from hybrid_assets.analysis.export import TABLES, export_run_parquet
from hybrid_assets.analysis.plots import case_trend_pngs, load_trend, trend_png
from hybrid_assets.harness.results import Verdict
from hybrid_assets.store import MetricsStore
from tests.test_store import TESTBED
from tests.test_store import payload as store_payload

CASE = "cold_start_device_discovery"


def payload(run_id: str, n_samples: int, verdict: Verdict = Verdict.PASS, build_id: str = "local-0.1.0",
            case_id: str = CASE) -> dict:
    """tests/test_store.py's payload under the default run key (build/testbed/profile)."""
    return store_payload(run_id, n_samples, verdict, key=None, build_id=build_id, case_id=case_id)


def _build_payload(run_id: str, build_id: str, n_samples: int, verdict: Verdict = Verdict.PASS) -> dict:
    return payload(run_id, n_samples, verdict, build_id=build_id)


@pytest.fixture
def store(tmp_path: Path) -> MetricsStore:
    """Three builds registered as zeta, beta, alpha (so their order is not alphabetical), one
    run each; the last one flagged REGRESSED on round_trip_s."""
    s = MetricsStore(tmp_path / "m.duckdb")
    for i, build in enumerate(("zeta", "beta", "alpha")):
        s.write_case(_build_payload(f"run-{build}", build, 50 + 25 * i))
    s.write_regressions("run-alpha", CASE, [{"metric": "round_trip_s", "testbed_id": TESTBED.testbed_id,
                                             "profile": "smoke", "build_id": "alpha", "verdict": "REGRESSED"}])
    return s


def test_export_round_trip_gives_the_run_s_rows_and_only_those(store: MetricsStore, tmp_path: Path) -> None:
    store.write_case(_build_payload("run-beta-rerun", "beta", 40, Verdict.FAIL))  # supersedes run-beta
    paths = export_run_parquet(store, "run-beta-rerun", tmp_path / "out")
    assert set(paths) == set(TABLES) and all(p.parent == tmp_path / "out" for p in paths.values())
    expected = {
        "runs": 1, "builds": 1, "testbeds": 1, "baselines": 0, "case_results": 1, "samples": 40,
        "metrics": 9, "expectation_results": 1, "regressions": 0, "superseded": 1,
    }
    with duckdb.connect() as con:
        counts = {t: con.execute(f"SELECT count(*) FROM read_parquet('{p}')").fetchone()[0] for t, p in paths.items()}
        assert counts == expected
        run_ids = con.execute(f"SELECT DISTINCT run_id FROM read_parquet('{paths['samples']}')").fetchall()
        assert run_ids == [("run-beta-rerun",)]
        total = con.execute(f"SELECT sum(value) FROM read_parquet('{paths['samples']}')").fetchone()[0]
        old = con.execute(f"SELECT old_run_id, old_verdict FROM read_parquet('{paths['superseded']}')").fetchall()
        assert old == [("run-beta", "PASS")]
        manifest = con.execute(f"SELECT manifest->>'build_id' FROM read_parquet('{paths['builds']}')").fetchone()[0]
        assert manifest == "beta"
    in_store = store.query("SELECT sum(value) AS s FROM samples WHERE run_id = 'run-beta-rerun'").s[0]
    assert total == pytest.approx(in_store)
    # The whole regression row travels too.
    flagged = export_run_parquet(store, "run-alpha", tmp_path / "alpha")["regressions"]
    with duckdb.connect() as con:
        assert con.execute(f"SELECT verdict FROM read_parquet('{flagged}')").fetchall() == [("REGRESSED",)]


def test_export_of_an_unknown_run_names_the_latest_runs_and_writes_nothing(store: MetricsStore,
                                                                           tmp_path: Path) -> None:
    with pytest.raises(UnknownRunError, match=r"no run 'nope' in .*latest runs: run-alpha, run-beta, run-zeta"):
        export_run_parquet(store, "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.duckdb"]  # no staging folder left behind


def test_export_of_a_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no store at"):
        export_run_parquet(MetricsStore(tmp_path / "none.duckdb"), "run-1", tmp_path / "out")


def test_trend_follows_build_seq_and_marks_the_flagged_build(store: MetricsStore) -> None:
    with duckdb.connect(str(store.path), read_only=True) as con:
        trend = load_trend(con, testbed_id=TESTBED.testbed_id, profile="smoke", case_id=CASE,
                           metric="round_trip_s", statistic="p90")
    assert [p.build_id for p in trend.points] == ["zeta", "beta", "alpha"]  # first seen, not alphabetical
    assert [p.sample_count for p in trend.points] == [50, 75, 100]
    # payload() records 1..n ms: the p90 grows with n.
    assert trend.points[0].value < trend.points[1].value < trend.points[2].value
    assert trend.flagged == {"alpha": "REGRESSED"} and trend.unit == "s"


def test_trend_png_is_a_small_real_png(store: MetricsStore) -> None:
    png = trend_png(store, testbed_id=TESTBED.testbed_id, profile="smoke", case_id=CASE, metric="round_trip_s",
                    statistic="p99", threshold=0.01, comparison="<=")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (600, 300)
    assert len(png) < 100_000
    # Not a blank canvas: the line, the threshold and the marker put several colours on it.
    assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 10


def test_empty_history_is_an_error_not_an_empty_picture(store: MetricsStore) -> None:
    with pytest.raises(NoHistoryError, match=r"no p90 of 'round_trip_s' .* testbed 'tb-other'"):
        trend_png(store, testbed_id="tb-other", profile="smoke", case_id=CASE, metric="round_trip_s")
    with pytest.raises(NoHistoryError):
        trend_png(store, testbed_id=TESTBED.testbed_id, profile="smoke", case_id=CASE, metric="no_such_metric")
    with pytest.raises(ValueError, match="unknown statistic 'p42'"):
        trend_png(store, testbed_id=TESTBED.testbed_id, profile="smoke", case_id=CASE, metric="round_trip_s",
                  statistic="p42")
    with pytest.raises(ValueError, match="comparison must be"):
        trend_png(store, testbed_id=TESTBED.testbed_id, profile="smoke", case_id=CASE, metric="round_trip_s",
                  comparison="<")


def test_case_trend_pngs_plots_the_judged_metrics(store: MetricsStore, tmp_path: Path) -> None:
    paths = case_trend_pngs(store, "run-alpha", CASE, tmp_path / "plots")
    assert [p.name for p in paths] == [f"{CASE}__round_trip_s__p99.png"]  # the one line payload() judges
    assert Image.open(paths[0]).size == (600, 300)
    with pytest.raises(UnknownCaseError, match="has no case 'nope'"):
        case_trend_pngs(store, "run-alpha", "nope", tmp_path / "plots")
    with pytest.raises(UnknownRunError):
        case_trend_pngs(store, "run-missing", CASE, tmp_path / "plots")


def test_data_docs_of_an_unknown_run_fail_before_anything_is_written(store: MetricsStore, tmp_path: Path) -> None:
    from hybrid_assets.analysis.datadocs import build_data_docs

    with pytest.raises(UnknownRunError, match="no run 'nope'"):
        build_data_docs(store, "nope", tmp_path / "docs")
    assert not (tmp_path / "docs").exists()


@pytest.mark.slow
def test_data_docs_of_a_run_name_its_suites_checks_and_verdicts(tmp_path: Path) -> None:
    from hybrid_assets.analysis.datadocs import SITE_INDEX, build_data_docs_timed

    store = MetricsStore(tmp_path / "m.duckdb")
    store.write_case(payload("run-docs", 120))
    store.write_case(payload("run-docs", 5, case_id="case_no_longer_in_catalog"))
    index, timing = build_data_docs_timed(store, "run-docs", tmp_path / "docs")
    assert index == tmp_path / "docs" / SITE_INDEX and index.is_file()
    assert timing.cases == 1 and timing.skipped == ("case_no_longer_in_catalog",)
    assert "part1.cold_start_device_discovery" in index.read_text()
    pages = list((index.parent / "validations").rglob("*.html"))
    assert len(pages) == 1 and "run-docs" in str(pages[0])
    text = re.sub(r"\s+", " ", pages[0].read_text())
    for check in ("round_trip_p99_under_10ms", "discovery_time_p90_under_5s", "zero_communication_errors"):
        assert check in text, check
    assert "Verdict in the store: PASS (detail)" in text  # the stored line of payload()
    assert "none stored for this run" in text  # the suite's other lines: not in this payload
    assert not list((tmp_path / "docs").glob(".gx-build-*"))  # the build folder was swapped in and removed
    # A rebuild replaces the site in place.
    again, _ = build_data_docs_timed(store, "run-docs", tmp_path / "docs")
    assert again == index and index.is_file()


def test_the_per_case_parquet_layout_is_read_like_the_duckdb_file(tmp_path: Path) -> None:
    """Results a farm wrote as Parquet per case: export and plots read them the same way."""
    from hybrid_assets.store.parquet import ParquetCaseStore

    farm = ParquetCaseStore(tmp_path / "pq")
    for i, build in enumerate(("zeta", "beta")):
        farm.write_case(_build_payload(f"run-{build}", build, 50 + 25 * i))
    paths = export_run_parquet(farm, "run-beta", tmp_path / "out")
    with duckdb.connect() as con:
        assert con.execute(f"SELECT count(*) FROM read_parquet('{paths['samples']}')").fetchone()[0] == 75
    png = trend_png(farm, testbed_id=TESTBED.testbed_id, profile="smoke", case_id=CASE, metric="round_trip_s")
    assert Image.open(io.BytesIO(png)).size == (600, 300)
    with pytest.raises(UnknownRunError, match="latest runs: run-beta, run-zeta"):
        export_run_parquet(farm, "nope", tmp_path / "out2")
