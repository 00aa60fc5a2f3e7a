"""Fault experiments against real workers: detection, recovery, nothing lost, no leaks;
and a runtime that never recovers is reported as failing, with its numbers."""

from __future__ import annotations

import pytest

from hybrid_assets.faults.experiment import run_experiment
from hybrid_assets.faults.injectors import INJECTORS
from hybrid_assets.faults.journal import RequestJournal
from workers.host.pool import PoolConfig, WorkerPool

pytestmark = pytest.mark.subprocess


def test_journal_counts_lost_requests_and_refuses_double_ends() -> None:
    j = RequestJournal()
    a, b, c = j.accept(), j.accept(), j.accept()
    j.end(a)
    j.end(b, "WORKER_LOST")
    counts = j.counts()
    assert (counts.accepted, counts.results, counts.errors, counts.lost) == (3, 1, 1, 1)
    assert counts.errors_by_code == {"WORKER_LOST": 1}
    with pytest.raises(KeyError, match="not open"):
        j.end(a)
    j.end(c)
    assert j.counts().lost == 0


@pytest.mark.parametrize("fault", ["sigkill", "sigstop", "close_pipe", "protocol_crash"])
def test_recoverable_faults_are_detected_recovered_and_lose_nothing(worker_argv: list[str], fault: str) -> None:
    with WorkerPool(worker_argv, PoolConfig(size=1, backoff_initial_s=0.05)) as pool:
        r = run_experiment(pool, fault, INJECTORS[fault], observe_s=20.0)
        assert r.steady_before and r.detected and r.recovered, r
        assert r.detection_s is not None and r.detection_s < 2.0
        assert r.recovery_s is not None and r.recovery_s >= r.detection_s
        assert r.requests.lost == 0 and r.requests.results > 0, r.requests
        assert not r.leaks, r.leaks
        assert r.passed


def test_corrupted_bytes_are_absorbed_without_losing_the_worker(worker_argv: list[str]) -> None:
    with WorkerPool(worker_argv, PoolConfig(size=1)) as pool:
        pid = pool.clients[0].pid
        r = run_experiment(pool, "corrupt_bytes", INJECTORS["corrupt_bytes"], observe_s=3.0)
        assert not r.detected and r.recovered and r.recovery_s == 0.0
        assert pool.clients[0].pid == pid and r.requests.lost == 0 and r.passed


def test_a_runtime_that_never_recovers_is_reported_with_its_numbers(worker_argv: list[str]) -> None:
    with WorkerPool(worker_argv, PoolConfig(size=1, max_restarts=0)) as pool:
        r = run_experiment(pool, "sigkill", INJECTORS["sigkill"], observe_s=5.0, settle_s=0.5)
        assert r.detected and r.detection_s is not None
        assert not r.recovered and r.recovery_s is None and not r.passed
        assert r.requests.errors > 0 and r.requests.lost == 0  # failures were explicit
        assert "NO_WORKER_AVAILABLE" in r.requests.errors_by_code or "WORKER_LOST" in r.requests.errors_by_code
        assert any("workers alive" in leak for leak in r.leaks)
