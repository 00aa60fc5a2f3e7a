"""The session runners against real workers, with tiny parameters: every registered metric of the
planned entry is produced, and what they measure on a healthy runtime is what it should be."""

from __future__ import annotations

from typing import Any

import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import runner_spec
from hybrid_assets.runners.planned import planned_runners
from tests.runner_harness import run_runner


def _run(runner: str, params: dict[str, Any], worker_argv: list[str]) -> Recorder:
    assert planned_runners()[runner] <= runner_spec(runner).metrics
    return run_runner(runner, params, worker_argv)


def test_runners_refuse_unknown_parameters_by_name() -> None:
    with pytest.raises(ValueError, match="injector"):
        _run("processing.worker_crash_recovery", {"injector": "meteor", "crash_timing": "during_processing",
                                                  "crash_frequency": "single_crash", "injections": 1}, [])
    with pytest.raises(ValueError, match="state_corruption_type"):
        _run("processing.session_state_corruption", {"state_corruption_type": "x", "corruption_causes": [],
                                                     "injections_per_cause": 1}, [])
    with pytest.raises(ValueError, match="triggers"):
        _run("processing.session_recovery", {"crashes": 1, "triggers": ["flood"]}, [])


@pytest.mark.subprocess
@pytest.mark.parametrize(("timing", "frequency", "injector", "injections", "workers"), [
    ("during_processing", "single_crash", "sigkill", 1, 1),
    ("during_initialization", "repeated_crashes", "protocol_crash", 2, 1),
    ("during_cleanup", "cascade_crashes", "sigsegv", 1, 2),
])
def test_worker_crash_recovery(worker_argv: list[str], timing: str, frequency: str, injector: str, injections: int,
                               workers: int) -> None:
    rec = _run("processing.worker_crash_recovery", {
        "crash_trigger": "x", "crash_timing": timing, "crash_frequency": frequency, "injector": injector,
        "injections": injections, "workers": workers, "model": "", "job_items": 4, "item_ms": 10,
        "stable_after_s": 0.3}, worker_argv)
    crashes = injections * workers
    for metric in ("crash_detection_s", "worker_restart_s", "session_state_restored_ok",
                   "partial_results_lost_count", "lost_requests_count"):
        assert len(rec.values(metric)) == crashes, metric
    assert max(rec.values("crash_detection_s")) < 5.0
    assert rec.values("session_state_restored_ok") == [1.0] * crashes, rec.samples
    assert set(rec.values("partial_results_lost_count")) == {0.0}
    assert set(rec.values("lost_requests_count")) == {0.0}
    assert all(s.labels["restored"] for s in rec.samples if s.metric == "worker_restart_s")
    assert rec.values("leaked_resource_count")


@pytest.mark.subprocess
def test_session_state_corruption(worker_argv: list[str]) -> None:
    rec = _run("processing.session_state_corruption", {
        "state_corruption_type": "complete_state_corruption", "injections_per_cause": 1,
        "corruption_causes": ["concurrent_access", "serialization_error", "storage_failure"],
        "probe_delay_s": [0.0, 0.8]}, worker_argv)
    assert rec.values("state_corruption_detected") == [1.0, 1.0, 1.0]
    assert rec.values("operation_on_corrupt_state_count") == [0.0, 0.0, 0.0]
    assert rec.values("state_restored_consistent_ok") == [1.0, 1.0, 1.0], rec.samples
    assert len(rec.values("state_corruption_detection_s")) == 3 and len(rec.values("state_recovery_s")) == 3
    sweep = [s for s in rec.samples if s.metric == "state_corruption_detected" and s.labels["probe_delay_s"]]
    assert sweep[0].labels["detected_by"] == "worker sweep"  # nobody touched it: the background check found it


@pytest.mark.subprocess
def test_session_lifecycle_and_recovery(worker_argv: list[str]) -> None:
    rec = _run("processing.session_lifecycle", {"sessions": 4, "workspace_mib": 1, "scratch_files": 2}, worker_argv)
    assert len(rec.values("session_creation_s")) == 4 and len(rec.values("session_cleanup_s")) == 4
    assert rec.values("session_leaked_resources_count") == [0.0] * 4
    rec = _run("processing.session_recovery", {"crashes": 3, "stable_after_s": 0.3}, worker_argv)
    assert [s.labels["trigger"] for s in rec.samples if s.metric == "session_recovery_s"] == [
        "unhandled_exception", "resource_exhaustion", "kill"]
    assert all(s.labels["recovered"] for s in rec.samples if s.metric == "session_recovery_s")
    assert rec.values("session_state_lost") == [0.0] * 3


@pytest.mark.subprocess
def test_concurrent_sessions_and_isolation(worker_argv: list[str]) -> None:
    rec = _run("processing.concurrent_sessions", {"sessions": 3, "hold_s": 1.0, "model": "tiny-random"},
               worker_argv)
    assert rec.values("active_sessions_count") and set(rec.values("active_sessions_count")) == {3.0}
    assert set(rec.values("shared_model_copies_count")) == {1.0}
    assert rec.values("session_failed") == [0.0] * 3 and rec.values("session_request_latency_s")
    rec = _run("processing.session_isolation", {"sessions": 2, "pairs": 1, "model": "tiny-random"}, worker_argv)
    assert len(rec.values("isolation_overhead_ratio")) == 1
    assert len(rec.values("isolation_overhead_state_only_ratio")) == 1
    assert rec.values("cross_session_leak") == [0.0] * 2
    assert "SESSION_NOT_FOUND" in rec.notes["guessed_id"]


@pytest.mark.subprocess
def test_state_updates_and_error_propagation(worker_argv: list[str]) -> None:
    rec = _run("processing.state_updates", {"updates": 30, "sessions": 2}, worker_argv)
    assert len(rec.values("state_update_latency_s")) == 30 and set(rec.values("state_update_lost")) == {0.0}
    assert len(rec.values("state_update_lost")) == 30
    rec = _run("processing.error_propagation", {"injections": 2, "faults": ["exception", "crash"],
                                                "report_window_s": 30}, worker_argv)
    assert rec.values("error_lost") == [0.0, 0.0], rec.samples
    codes = [s.labels["code"] for s in rec.samples if s.metric == "error_propagation_s"]
    assert codes == ["INTERNAL_ERROR", "WORKER_LOST"]
