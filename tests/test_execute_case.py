"""A runner that fails mid-way: the case is ERROR, and what it measured is still stored."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

import pytest

from hybrid_assets import runners
from hybrid_assets.builds import BuildInfo
from hybrid_assets.catalog import load_catalog
from hybrid_assets.harness.execute import execute_case
from hybrid_assets.harness.results import Verdict
from hybrid_assets.run_info import RunInfo
from hybrid_assets.store import MetricsStore
from hybrid_assets.testbed import Testbed


def _run(run_id: str) -> RunInfo:
    return RunInfo(run_id, BuildInfo.local("0.1.0"), Testbed("tb", "h", "cpu", 2, 1, "none", {}), "smoke",
                   ["worker"], dt.datetime(2026, 12, 4))


class _NoPool:
    """The failing runner never asks for a worker."""


def test_failing_runner_is_error_and_keeps_its_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_crash(ctx: runners.RunnerContext) -> None:
        for i in range(10):
            ctx.recorder.record("round_trip_s", 0.001 * i, "s")
        raise RuntimeError("the harness broke")

    spec = runners.RunnerSpec("test.half_then_crash", frozenset({"round_trip_s"}), half_then_crash)
    monkeypatch.setattr(runners, "_registry", lambda: {spec.name: spec})
    case = dataclasses.replace(load_catalog()[0], runner="test.half_then_crash")
    run = _run("run-err")
    store = MetricsStore(tmp_path / "m.duckdb")
    executed = execute_case(case, run, _NoPool(), store, logging.getLogger("test"))  # type: ignore[arg-type]
    assert executed.outcome.verdict is Verdict.ERROR and "the harness broke" in executed.outcome.reason
    verdicts = store.query("SELECT verdict, error FROM v_verdicts")
    assert verdicts.verdict[0] == "ERROR" and "RuntimeError" in verdicts.error[0]
    assert store.query("SELECT count(*) AS n FROM samples").n[0] == 10
    lines = store.query("SELECT expectation, verdict FROM v_expectations WHERE metric = 'round_trip_s'")
    assert set(lines.verdict) == {"INVALID"}  # 10 samples cannot settle a p99 claim; still recorded


def test_unknown_runner_is_error_not_a_crash(tmp_path: Path) -> None:
    case = dataclasses.replace(load_catalog()[0], runner="nope.missing")
    run = _run("run-x")
    executed = execute_case(case, run, _NoPool(), MetricsStore(tmp_path / "m.duckdb"))  # type: ignore[arg-type]
    assert executed.outcome.verdict is Verdict.ERROR and "no runner named 'nope.missing'" in executed.outcome.reason


def test_planned_runner_records_not_implemented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planned = runners.RunnerSpec("device.hot_swap", frozenset({"round_trip_s"}), None)
    monkeypatch.setattr(runners, "_registry", lambda: {planned.name: planned})
    case = dataclasses.replace(load_catalog()[0], runner="device.hot_swap")
    run = _run("run-p")
    store = MetricsStore(tmp_path / "m.duckdb")
    executed = execute_case(case, run, _NoPool(), store)  # type: ignore[arg-type]
    assert executed.outcome.verdict is Verdict.ERROR and "not implemented" in executed.outcome.reason
    assert store.query("SELECT verdict FROM v_verdicts").verdict[0] == "ERROR"


def test_not_implemented_lines_are_error_not_invalid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planned = runners.RunnerSpec("device.hot_swap", frozenset({"round_trip_s"}), None)
    monkeypatch.setattr(runners, "_registry", lambda: {planned.name: planned})
    case = dataclasses.replace(load_catalog()[0], runner="device.hot_swap")
    run = _run("run-q")
    store = MetricsStore(tmp_path / "m.duckdb")
    execute_case(case, run, _NoPool(), store)  # type: ignore[arg-type]
    lines = store.query("SELECT verdict, detail FROM v_expectations")
    assert len(lines) == 12 and set(lines.verdict) == {"ERROR"}
    assert all("not implemented" in d for d in lines.detail)
