"""Every ```sql block of docs/analysts.md runs against a store that real runs produced, and
returns rows.

The store: one cheap case (``cold_start_device_discovery`` with no cold starts and 60 pings)
run with real workers through ``execute_case`` for three builds on this testbed, the first
build twice (a re-run: the second replaces the first and ``superseded`` keeps the old verdict),
a slowed worker (``--fault-latency 0.02``) where a build should look worse; regression detection
over the last build; and the Parquet the guide reads: the export of the last run in ``export/``,
and every executed case also written in the per-case layout of many machines
(``hybrid_assets.store.parquet``) under ``parquet/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import duckdb
import pytest

from hybrid_assets.analysis.export import export_run_parquet
from hybrid_assets.builds import BuildInfo
from hybrid_assets.catalog import load_catalog
from hybrid_assets.harness.execute import ExecutedCase, execute_case
from hybrid_assets.run_info import RunInfo
from hybrid_assets.store import MetricsStore, case_payload
from hybrid_assets.store.parquet import ParquetCaseStore
from hybrid_assets.testbed import fingerprint
from workers.host.command import bundled_worker_command
from workers.host.pool import PoolConfig, WorkerPool

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "analysts.md"
CASE_ID = "cold_start_device_discovery"
PARAMS = {"cold_starts": 0, "round_trips": 60, "payload_bytes": 64}  # the pool's pings only: seconds
SLOW = ["--allow-fault-injection", "--fault-latency", "0.02"]  # 20 ms a request: round_trip p99 <= 10 ms fails


def sql_blocks() -> list[tuple[str, str]]:
    """(title, sql) for every ```sql block, the title being the nearest bold line or heading above."""
    text = GUIDE.read_text()
    blocks = []
    for m in re.finditer(r"```sql\n(.*?)```", text, flags=re.S):
        before = text[: m.start()]
        titles = re.findall(r"^(?:\*\*(.+?)\*\*.*|#{2,4} (.+))$", before, flags=re.M)
        title = next((a or b for a, b in reversed(titles)), "untitled")
        blocks.append((title.strip(), m.group(1)))
    return blocks


BLOCKS = sql_blocks()


def _execute(store: MetricsStore, parquet: ParquetCaseStore, run_id: str, build: BuildInfo,
             slow: bool) -> ExecutedCase:
    case = next(c for c in load_catalog() if c.id == CASE_ID)
    case = dataclasses.replace(case, params={"smoke": PARAMS, "standard": PARAMS, "spec": PARAMS})
    argv = [*bundled_worker_command(), *(SLOW if slow else [])]
    run = RunInfo(run_id, build, fingerprint(), "smoke", argv, dt.datetime.now(dt.UTC).replace(tzinfo=None))
    with WorkerPool(argv, PoolConfig(size=1)) as pool:
        executed = execute_case(case, run, pool, store)
    parquet.write_case(case_payload(run, case, executed.outcome))  # the same result, as a farm writes it
    return executed


@pytest.fixture(scope="module")
def guide_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guide")
    store, parquet = MetricsStore(root / "hybrid.duckdb"), ParquetCaseStore(root / "parquet")
    b1, b2, b3 = BuildInfo.local("1.0.0"), BuildInfo.local("1.1.0"), BuildInfo.local("1.2.0")
    first = _execute(store, parquet, "guide-run-1a", b1, slow=True)
    rerun = _execute(store, parquet, "guide-run-1b", b1, slow=False)  # same build, testbed, profile: replaces 1a
    _execute(store, parquet, "guide-run-2", b2, slow=False)
    last = _execute(store, parquet, "guide-run-3", b3, slow=True)
    # The scenario the guide's flaky and regression queries need; a failed premise says so here.
    assert first.outcome.verdict != rerun.outcome.verdict, (first.outcome.reason, rerun.outcome.reason)
    assert str(last.outcome.verdict) == "FAIL", last.outcome.reason
    _detect(store, "guide-run-3")
    runs = store.query("SELECT run_id FROM v_runs").run_id.tolist()
    assert sorted(runs) == ["guide-run-1b", "guide-run-2", "guide-run-3"]
    export_run_parquet(store, "guide-run-3", root / "export")
    return root


def _detect(store: MetricsStore, run_id: str) -> None:
    from hybrid_assets.regress.detect import detect_run

    findings = detect_run(store, run_id)
    assert any(f.verdict == "REGRESSED" and f.metric == "round_trip_s" for f in findings), findings


def test_the_guide_has_the_first_questions() -> None:
    titles = " | ".join(t for t, _ in BLOCKS).lower()
    for topic in ("failed", "regressed", "trend", "flaky", "slowest", "invalid", "parquet"):
        assert topic in titles, f"no example query about {topic!r} in {GUIDE.name}: {titles}"
    every_sql = "\n".join(sql for _, sql in BLOCKS)
    for name in ("v_builds", "v_samples", "v_regressions", "superseded", "build_seq", "union_by_name"):
        assert name in every_sql, f"no example query uses {name}"


@pytest.mark.parametrize(("title", "sql"), BLOCKS, ids=[re.sub(r"\W+", "_", t)[:50] for t, _ in BLOCKS])
def test_guide_query_returns_rows(guide_root: Path, monkeypatch: pytest.MonkeyPatch, title: str, sql: str) -> None:
    monkeypatch.chdir(guide_root)  # the guide's Parquet paths are relative to where the export went
    assert "$" not in re.sub(r"'[^']*'", "", sql), f"{title}: a placeholder no test substitutes"
    with duckdb.connect(str(guide_root / "hybrid.duckdb"), read_only=True) as con:
        rows = con.execute(sql).fetchall()
    assert rows, f"{title}: no rows\n{sql}"
