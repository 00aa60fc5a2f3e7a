"""What regression detection reads from the store: a handful of aggregate queries per case.

The history of a metric comes back already reduced to one row per build (DuckDB computes the
quantiles and counts), so a history of 100 builds is 100 rows, not every sample of them.
Only the run's own samples and its baseline build's samples travel as raw values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

import pandas as pd

from hybrid_assets.store import MetricsStore, UnknownBuildError


class UnknownRunError(LookupError):
    """The run (or the case within it) has no results in the store."""


@dataclass(frozen=True)
class RunContext:
    run_id: str
    case_id: str
    build_id: str
    build_seq: int
    testbed_id: str
    profile: str
    case_verdict: str


def run_context(store: MetricsStore, run_id: str) -> RunContext:
    """The run's build, its place in build order, testbed and profile (no case)."""
    if not store.path.exists():
        raise UnknownRunError(f"no store at {store.path}: run {run_id!r} has no results")
    df = store.query("SELECT r.build_id, b.build_seq, r.testbed_id, r.profile FROM runs r "
                     "JOIN v_builds b USING (build_id) WHERE r.run_id = ?", [run_id])
    if df.empty:
        raise UnknownRunError(f"run {run_id!r} has no results in {store.path}")
    row = df.iloc[0]
    return RunContext(run_id, "", str(row.build_id), int(row.build_seq), str(row.testbed_id), str(row.profile), "")


def run_cases(store: MetricsStore, run_id: str) -> list[str]:
    run_context(store, run_id)
    return store.query("SELECT case_id FROM case_results WHERE run_id = ? ORDER BY case_id", [run_id]).case_id.tolist()


def case_lines(store: MetricsStore, run_id: str, case_id: str) -> tuple[RunContext, Union[str, None], pd.DataFrame]:
    """In one round trip (a store connection costs ~15 ms): the run's context, the baseline
    pinned for its testbed and profile (the ``baselines`` table ``MetricsStore.pin_baseline``
    writes), and the case's expectation lines that judge a metric (metric, statistic,
    comparison, threshold, unit, verdict)."""
    if not store.path.exists():
        raise UnknownRunError(f"no store at {store.path}: run {run_id!r} has no results")
    df = store.query(
        "SELECT r.build_id, b.build_seq, r.testbed_id, r.profile, c.verdict AS case_verdict, p.build_id AS pinned, "
        "e.metric, e.statistic, e.comparison, e.threshold, e.unit, e.verdict "
        "FROM runs r JOIN v_builds b USING (build_id) "
        "LEFT JOIN case_results c ON c.run_id = r.run_id AND c.case_id = ? "
        "LEFT JOIN baselines p ON p.testbed_id = r.testbed_id AND p.profile = r.profile "
        "LEFT JOIN expectation_results e ON e.run_id = r.run_id AND e.case_id = c.case_id "
        "AND e.metric IS NOT NULL AND e.comparison IN ('<=', '>=') "
        "WHERE r.run_id = ? ORDER BY e.metric, e.check_name", [case_id, run_id])
    if df.empty:
        raise UnknownRunError(f"run {run_id!r} has no results in {store.path}")
    row = df.iloc[0]
    if pd.isna(row.case_verdict):
        raise UnknownRunError(f"run {run_id!r} has no result for case {case_id!r} in {store.path}")
    ctx = RunContext(run_id, case_id, str(row.build_id), int(row.build_seq), str(row.testbed_id), str(row.profile),
                     str(row.case_verdict))
    pinned = None if pd.isna(row.pinned) else str(row.pinned)
    lines = df[df.metric.notna()][["metric", "statistic", "comparison", "threshold", "unit", "verdict"]]
    return ctx, pinned, lines.reset_index(drop=True)


def check_known_build(store: MetricsStore, build_id: str) -> int:
    """The build's place in build order; UnknownBuildError if the store has no such build."""
    if not store.path.exists():
        raise UnknownBuildError(f"baseline build {build_id!r} is not a known build: there is no store at {store.path}")
    df = store.query("SELECT build_seq FROM v_builds WHERE build_id = ?", [build_id])
    if df.empty:
        latest = store.query("SELECT build_id FROM v_builds ORDER BY build_seq DESC LIMIT 5").build_id.tolist()
        raise UnknownBuildError(f"baseline build {build_id!r} is not a known build in {store.path} "
                                f"(latest builds: {latest or 'none'}); nothing was compared")
    return int(df.build_seq[0])


def baseline_results(store: MetricsStore, ctx: RunContext, build_id: str) -> int:
    """How many runs of ``build_id`` (other than this run) have a result for this case on this
    testbed and profile."""
    df = store.query(
        "SELECT count(*) AS n FROM case_results c JOIN runs r USING (run_id) "
        "WHERE r.build_id = ? AND r.testbed_id = ? AND r.profile = ? AND c.case_id = ? AND c.run_id <> ?",
        [build_id, ctx.testbed_id, ctx.profile, ctx.case_id, ctx.run_id])
    return int(df.n[0])


HISTORY_QUANTILES = (0.25, 0.5, 0.75)  # median and the IQR (for each build's standard error)


def history(store: MetricsStore, ctx: RunContext, metrics: Sequence[str],
            quantiles: Iterable[float]) -> pd.DataFrame:
    """One row per (metric, build) up to and including the run's build, on its testbed and
    profile: build_id, build_seq, n (finite samples), q (list of the quantiles, in the order of
    ``quantile_list``), mean, passed (every run of that build passed this case)."""
    qs = quantile_list(quantiles)
    marks = ", ".join("?" for _ in metrics)
    return store.query(
        f"SELECT s.metric, r.build_id, b.build_seq, count(*) AS n, "
        f"quantile_cont(s.value, [{', '.join(repr(q) for q in qs)}]) AS q, avg(s.value) AS mean, "
        f"bool_and(c.verdict = 'PASS') AS passed "
        f"FROM samples s JOIN runs r USING (run_id) JOIN v_builds b USING (build_id) "
        f"JOIN case_results c ON c.run_id = s.run_id AND c.case_id = s.case_id "
        f"WHERE s.case_id = ? AND r.testbed_id = ? AND r.profile = ? AND b.build_seq <= ? "
        f"AND s.metric IN ({marks}) AND isfinite(s.value) "
        f"GROUP BY s.metric, r.build_id, b.build_seq ORDER BY s.metric, b.build_seq",
        [ctx.case_id, ctx.testbed_id, ctx.profile, ctx.build_seq, *metrics])


def quantile_list(extra: Iterable[float]) -> list[float]:
    return sorted({*HISTORY_QUANTILES, *(float(q) for q in extra)})


def raw_samples(store: MetricsStore, ctx: RunContext, metrics: Sequence[str],
                baselines: dict[str, str]) -> pd.DataFrame:
    """The run's own samples of ``metrics`` (is_current) and, for each metric named in
    ``baselines``, the samples of its baseline build's other runs on this testbed and profile.
    Columns: is_current, build_id, metric, value. Non-finite values come back too (NaN/inf):
    the caller counts them."""
    pairs = list(baselines.items())
    pair_sql = " OR ".join("(r.build_id = ? AND s.metric = ?)" for _ in pairs) or "FALSE"
    params: list[object] = [ctx.run_id, ctx.case_id, ctx.testbed_id, ctx.profile, *metrics, ctx.run_id]
    for metric, build in pairs:
        params += [build, metric]
    marks = ", ".join("?" for _ in metrics)
    return store.query(
        f"SELECT s.run_id = ? AS is_current, r.build_id, s.metric, s.value "
        f"FROM samples s JOIN runs r USING (run_id) "
        f"WHERE s.case_id = ? AND r.testbed_id = ? AND r.profile = ? AND s.metric IN ({marks}) "
        f"AND (s.run_id = ? OR ({pair_sql}))", params)
