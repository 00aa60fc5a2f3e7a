"""Sessions in real workers: a worker SIGKILLed mid-session resumes on its replacement with its state,
corruption is refused and rolled back, unknown ids are named, 50 concurrent sessions stay isolated,
crash modes kill the worker the way they say, and the in-flight policy holds."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from workers.host import WorkerClient, WorkerError, WorkerLost
from workers.host.pool import PoolConfig
from workers.host.sessions import SessionHost
from workers.protocol.messages import ErrorCode, Event
from workers.protocol.ops_sessions import JOB_PREFIX, job_output

pytestmark = pytest.mark.subprocess

FAST = PoolConfig(size=1, backoff_initial_s=0.05, stable_after_s=0.5, max_restarts=10)


def _host(worker_argv: list[str], **kw: Any) -> SessionHost:
    return SessionHost(worker_argv, config=kw.pop("config", FAST), **kw)


def test_sigkilled_worker_resumes_sessions_on_the_replacement(worker_argv: list[str]) -> None:
    with _host(worker_argv) as host:
        a = host.create({"user": "a", "n": 0})["id"]
        b = host.create({"user": "b", "n": 0})["id"]
        for _ in range(3):
            host.update(a, incr={"n": 1})
        host.update(b, {"theme": "dark"})
        victim_pid = host.client(0).pid
        reported: list[str] = []

        def on_event(ev: Event) -> None:
            if ev.event == "progress":
                reported.append(str(ev.data["message"]))
                if len(reported) == 2:
                    os.kill(victim_pid or 0, signal.SIGKILL)  # mid-job, two items acknowledged

        result = host.work(a, "job", 6, item_ms=50, on_event=on_event, timeout=60)
        assert host.client(0).pid != victim_pid
        expected = [job_output("job", i) for i in range(6)]
        assert result["outputs"] == expected and result["resumed_from"] >= 2
        assert reported[:2] == expected[:2]  # what was reported before the kill survived, in place
        assert host.get(a)["state"] == {"user": "a", "n": 3, JOB_PREFIX + "job": {"items": 6, "done": 6,
                                                                                   "outputs": expected}}
        assert host.get(b)["state"] == {"user": "b", "n": 0, "theme": "dark"}
        (rec,) = host.recoveries
        assert "SIGKILL" in rec.reason and rec.restored_at is not None
        assert rec.detected_at <= rec.ready_at <= rec.restored_at  # type: ignore[operator]
        assert sorted(rec.sessions_restored) == sorted([a, b]) and rec.resumed and not rec.failed


def test_in_flight_policy_marks_non_idempotent_failed_and_caps_resubmission(worker_argv: list[str]) -> None:
    with _host(worker_argv, max_resubmits=0) as host:
        sid = host.create({"x": 1})["id"]
        host.client(0).request("fault.session_crash", {"phase": "cleanup", "mode": "sigkill", "session": sid})
        with pytest.raises(WorkerLost, match="mark failed"):
            host.close_session(sid)
        assert host.get(sid)["state"] == {"x": 1}  # restored: its close never completed
        host.client(0).request("fault.session_crash", {"phase": "processing", "mode": "exception", "session": sid})
        with pytest.raises(WorkerLost, match="resubmitted 0 times"):
            host.update(sid, incr={"x": 1})
        assert host.get(sid)["state"] == {"x": 1}  # the lost update was never applied
    with _host(worker_argv) as host:  # the default: resubmitted once the replacement is restored
        host.client(0).request("fault.session_crash", {"phase": "initialization", "mode": "sigsegv"})
        info = host.create({"fresh": True})
        assert info["state"] == {"fresh": True} and host.recoveries[0].resumed


@pytest.mark.parametrize(("mode", "reason"), [("sigsegv", "SIGSEGV"), ("sigkill", "SIGKILL"),
                                              ("exception", "exited with code 1")])
def test_crash_modes_end_the_worker_as_they_say(worker_argv: list[str], mode: str, reason: str) -> None:
    with WorkerClient(worker_argv).start() as c:
        with pytest.raises(WorkerLost, match=reason):
            c.request("fault.crash", {"mode": mode}, timeout=10)
        assert not c.alive
    with WorkerClient(worker_argv).start() as c:
        with pytest.raises(WorkerError) as info:
            c.request("fault.crash", {"mode": "meteor"}, timeout=10)
        assert info.value.code == ErrorCode.INVALID_PARAMS and "meteor" in info.value.message and c.alive


def test_corruption_is_refused_rolled_back_or_repaired_from_the_journal(worker_argv: list[str]) -> None:
    with _host(worker_argv) as host:
        c = host.client(0)
        sid = host.create({"a": 1, "b": [1, 2], "c": {"d": 4}})["id"]
        host.update(sid, incr={"a": 1})
        good = host.get(sid)["state"]
        for kind, cause in (("partial_loss", "concurrent_access"), ("inconsistent", "serialization_error"),
                            ("complete", "storage_failure")):
            c.request("fault.session_corrupt", {"id": sid, "kind": kind, "cause": cause})
            with pytest.raises(WorkerError) as info:
                c.request("session.get", {"id": sid})
            assert info.value.code == ErrorCode.SESSION_CORRUPT and kind in info.value.message
            assert info.value.retryable  # rolled back to the snapshot
            assert c.request("session.get", {"id": sid})["state"] == good
        # The store lost the snapshot too: the worker refuses until the host restores it from its journal.
        c.request("fault.session_corrupt", {"id": sid, "kind": "complete", "cause": "storage_failure",
                                            "snapshot_too": True})
        with pytest.raises(WorkerError) as info:
            c.request("session.update", {"id": sid, "incr": {"a": 1}})
        assert info.value.code == ErrorCode.SESSION_CORRUPT and not info.value.retryable
        assert host.get(sid)["state"] == good  # the host restored it
        assert host.update(sid, incr={"a": 1})["version"] > 0 and host.repairs
        assert c.request("session.list", {})["totals"]["corruptions_detected"] >= 4


def test_unknown_ids_and_bad_input_are_named_and_the_worker_keeps_serving(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        for op, extra in (("session.get", {}), ("session.update", {"set": {"a": 1}}), ("session.close", {}),
                          ("session.work", {"job": "j", "items": 1})):
            with pytest.raises(WorkerError) as info:
                c.request(op, {"id": "s-0123456789abcdef", **extra})
            assert info.value.code == ErrorCode.SESSION_NOT_FOUND and "s-0123456789abcdef" in info.value.message
        sid = c.request("session.create", {"state": {"a": 1}})["id"]
        c.request("session.update", {"id": sid, "set": {"big1": "x" * (600 << 10)}})
        c.request("session.update", {"id": sid, "delete": ["big1"]})
        c.request("session.update", {"id": sid, "set": {"big1": "x" * (600 << 10)}})
        cases = [("session.update", {"id": sid, "delete": ["nope"]}, "nope"),
                 ("session.update", {"id": sid, "incr": {"a": 1}, "delete": ["a"]}, "named twice"),
                 ("session.update", {"id": sid, "set": {"big2": "x" * (600 << 10)}}, "exceeds"),
                 ("session.restore", {"id": sid, "state": {"a": 2}, "version": 3, "checksum": "0" * 64}, "checksum"),
                 ("session.create", {"workspace_bytes": -1}, "workspace_bytes")]
        for op, params, needle in cases:  # each refused by name, nothing applied
            with pytest.raises(WorkerError) as info:
                c.request(op, params)
            assert info.value.code == ErrorCode.INVALID_PARAMS, info.value
            assert needle in info.value.message
        state = c.request("session.get", {"id": sid})["state"]
        assert state["a"] == 1 and sorted(state) == ["a", "big1"]  # nothing refused was applied


def test_fifty_concurrent_sessions_stay_isolated(worker_argv: list[str]) -> None:
    with _host(worker_argv) as host:
        errors: list[str] = []
        ids: dict[int, str] = {}

        def user(u: int) -> None:
            try:
                sid = host.create({"canary": f"c-{u}", "n": 0})["id"]
                ids[u] = sid
                for _ in range(5):
                    host.update(sid, incr={"n": 1})
                state = host.get(sid)["state"]
                if state != {"canary": f"c-{u}", "n": 5}:
                    errors.append(f"user {u}: {state}")
            except WorkerError as exc:
                errors.append(f"user {u}: {exc}")

        threads = [threading.Thread(target=user, args=(u,)) for u in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        listing = host.list(0)
        assert listing["totals"]["sessions"] == 50 and len(set(ids.values())) == 50
        for sid in ids.values():
            host.close_session(sid)
        totals = host.list(0)["totals"]
        assert totals["sessions"] == 0 and totals["state_bytes"] == 0


def test_close_reports_and_frees_everything(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        before = c.request("session.list", {})["totals"]
        sid = c.request("session.create", {"state": {"a": 1}, "workspace_bytes": 2 << 20, "scratch_files": 3})["id"]
        held = c.request("session.list", {})["totals"]
        assert held["workspace_bytes"] == 2 << 20 and held["scratch_files"] == 3 and held["open_fds"] >= before[
            "open_fds"] + 3
        freed = c.request("session.close", {"id": sid})["freed"]
        assert freed["workspace_bytes"] == 2 << 20 and freed["scratch_files"] == 3 and freed["state_bytes"] > 0
        after = c.request("session.list", {})["totals"]
        for key in ("sessions", "workspace_bytes", "scratch_files", "scratch_entries", "open_fds"):
            assert after[key] <= before[key], key
        time.sleep(0.1)
        with pytest.raises(WorkerError) as info:
            c.request("session.close", {"id": sid})
        assert info.value.code == ErrorCode.SESSION_NOT_FOUND


def test_session_benchmark_prints_figures_and_ratios(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from workers.bench import sessions as bench

    assert bench.main(["--reps", "3", "--workspace-mib", "1", "--json", str(tmp_path / "b.json")]) == 0
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["create"]["n"] == 3 and figures["close_resources"]["p90_ms"] > 0
    assert set(figures["ratio_p50_to_echo"]) == {"create", "close", "create_resources", "close_resources"}
    assert "p50 / echo p50" in capsys.readouterr().out
