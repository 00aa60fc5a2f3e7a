"""Host side against real processes: losses are explicit, hangs are detected, workers come back."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.conftest import fake_worker
from workers.host import WorkerClient, WorkerError, WorkerLost, WorkerStartError
from workers.host.errors import NoWorkerAvailable
from workers.host.pool import PoolConfig, WorkerPool

pytestmark = pytest.mark.subprocess


def test_worker_killed_mid_request_fails_it_explicitly_then_pool_serves_again(worker_argv: list[str]) -> None:
    with WorkerPool(worker_argv, PoolConfig(size=1, backoff_initial_s=0.05)) as pool:
        victim = pool.clients[0]
        threading.Timer(0.2, os.kill, (victim.pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        with pytest.raises(WorkerLost) as info:
            pool.request("fault.freeze", {"seconds": 5})  # not idempotent: never retried
        assert time.monotonic() - t0 < 3
        assert "SIGKILL" in info.value.message and "not idempotent" in info.value.message
        assert pool.request("ping", {"payload": "again"}, timeout=30) == {"payload": "again"}
        assert pool.clients[0].pid != victim.pid
        kinds = [e.kind for e in pool.events]
        assert kinds.count("ready") == 2 and "lost" in kinds


def test_idempotent_request_is_retried_on_the_replacement(worker_argv: list[str]) -> None:
    with WorkerPool(worker_argv, PoolConfig(size=1, backoff_initial_s=0.05)) as pool:
        victim = pool.clients[0]
        threading.Timer(0.2, os.kill, (victim.pid, signal.SIGKILL)).start()
        result = pool.request("fault.sleep", {"seconds": 0.5, "steps": 1}, timeout=30)
        assert result["slept_s"] >= 0.5 and pool.clients[0].pid != victim.pid


def test_hung_worker_is_detected_within_its_heartbeat_window(worker_argv: list[str]) -> None:
    # heartbeat 0.2 s x 3 missed = 0.6 s window
    with WorkerPool(worker_argv, PoolConfig(size=1, missed_heartbeats=3, backoff_initial_s=0.05)) as pool:
        t0 = time.monotonic()
        with pytest.raises(WorkerLost, match="hung: missed 3 heartbeats"):
            pool.request("fault.freeze", {"seconds": 30}, timeout=20)
        detected = time.monotonic() - t0
        assert detected < 0.6 + 0.2 + 0.5  # window + one heartbeat + supervisor period and slack
        hung = [e for e in pool.events if e.kind == "hung"]
        assert len(hung) == 1
        assert pool.request("ping", timeout=30) == {"payload": ""}


def test_sigstopped_worker_is_detected_as_hung(worker_argv: list[str]) -> None:
    with WorkerPool(worker_argv, PoolConfig(size=1, backoff_initial_s=0.05)) as pool:
        victim = pool.clients[0]
        os.kill(victim.pid, signal.SIGSTOP)
        assert pool.request("ping", timeout=30) == {"payload": ""}  # served by the replacement
        assert any(e.kind == "hung" and e.pid == victim.pid for e in pool.events)


def test_restart_limit_marks_the_slot_failed(worker_argv: list[str]) -> None:
    config = PoolConfig(size=1, max_restarts=2, backoff_initial_s=0.01, restart_window_s=60)
    with WorkerPool(worker_argv, config) as pool:
        for _ in range(3):
            pool.wait_ready(30)
            client = pool.clients[0] if pool.clients else None
            if client is None:
                break
            with pytest.raises(WorkerLost):
                pool.request("fault.crash", {"exit_code": 9})
        pool.wait_ready(30)
        assert pool.states() == ["failed"]
        with pytest.raises(NoWorkerAvailable, match="restart limit reached"):
            pool.request("ping", timeout=1)


def test_garbage_on_stdout_is_counted_not_fatal() -> None:
    with WorkerClient(fake_worker("garbage_worker.py")).start() as c:
        for i in range(3):
            assert c.request("ping", {"payload": str(i)}, timeout=5) == {"payload": str(i)}
        assert c.protocol_errors >= 6  # two bad lines per answer, plus the banner


@pytest.mark.parametrize(("argv", "problem"), [
    (["/no/such/worker"], "worker command not found"),
    (fake_worker("dies_before_hello.py"), "exited before the handshake (exited with code 3)"),
    (fake_worker("wrong_protocol.py"), "worker speaks protocol 99"),
])
def test_start_failures_are_named(argv: list[str], problem: str) -> None:
    with pytest.raises(WorkerStartError) as info:
        WorkerClient(argv, startup_timeout=20).start()
    assert problem in info.value.message
    if "dies_before" in argv[-1]:
        assert "cannot initialise the runtime" in info.value.message  # stderr tail
    if "wrong_protocol" in argv[-1]:
        assert info.value.code == "PROTOCOL_MISMATCH"


def test_handshake_timeout_is_named(worker_argv: list[str]) -> None:
    slow = [*worker_argv, "--fault-startup-delay", "5"]
    t0 = time.monotonic()
    with pytest.raises(WorkerStartError, match=r"no handshake within 0\.5 s"):
        WorkerClient(slow, startup_timeout=0.5).start()
    assert time.monotonic() - t0 < 3


def test_shutdown_escalates_to_sigkill() -> None:
    c = WorkerClient(fake_worker("stubborn_worker.py")).start()
    outcome = c.shutdown(request_grace=0.3, term_grace=0.3)
    assert outcome.how == "sigkill" and outcome.exit_code == -signal.SIGKILL


def test_shutdown_by_request_and_by_sigterm(worker_argv: list[str]) -> None:
    c = WorkerClient(worker_argv).start()
    assert c.shutdown().how == "request"
    c2 = WorkerClient(worker_argv).start()
    c2.submit("fault.freeze", {"seconds": 10})  # the reader is frozen: the request is never read
    time.sleep(0.2)
    outcome = c2.shutdown(request_grace=0.3, term_grace=5)
    assert outcome.how == "sigterm"


def test_pool_rejects_bad_config_and_unstartable_command() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PoolConfig(size=0)
    with pytest.raises(WorkerStartError, match="no worker"):
        WorkerPool(["/no/such/worker"], PoolConfig(size=2)).start()
    assert isinstance(WorkerError("X", "y"), Exception)


def test_oversized_request_fails_on_the_host_by_name(worker_argv: list[str]) -> None:
    with WorkerClient([*worker_argv, "--max-frame-bytes", "2048"]).start() as c:
        with pytest.raises(WorkerError, match="exceeds the worker's limit of 2048 bytes") as info:
            c.request("ping", {"payload": "x" * 5000}, timeout=5)
        assert info.value.code == "FRAME_TOO_LARGE"
        assert c.request("ping", {"payload": "ok"}) == {"payload": "ok"}
