"""The job queue in a real worker: a full queue rejects with a retry-after and accepts again once
drained; priority order holds under load; queued and running jobs cancel; a batch that times out
keeps its completed items and resumes (also across a killed worker); jobs in flight when the
worker dies fail WORKER_LOST, queued ones at shutdown SHUTTING_DOWN; bad input is named and the
worker keeps serving."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from workers.host import WorkerClient, WorkerError
from workers.host.jobs import BatchRunner, request_admitted
from workers.protocol.messages import ErrorCode

pytestmark = pytest.mark.subprocess


def _sleep_job(seconds: float) -> dict[str, Any]:
    return {"op": "fault.sleep", "params": {"seconds": seconds}}


def _outcome(p: Any) -> Any:
    assert p.wait(15), f"request {p.id} never answered"
    try:
        return p.result()
    except WorkerError as exc:
        return exc


def test_full_queue_rejects_with_retry_after_then_admits_once_drained(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("queue.configure", {"capacity": 4, "concurrency": 1})
        running = c.submit("job.run", _sleep_job(0.4))
        time.sleep(0.1)
        queued = [c.submit("job.run", _sleep_job(0.05)) for _ in range(4)]
        over = [c.submit("job.run", {"op": "echo", "params": {"payload": str(i)}}) for i in range(3)]
        rejections = [_outcome(p) for p in over]
        for exc in rejections:
            assert isinstance(exc, WorkerError) and exc.code == ErrorCode.QUEUE_FULL and exc.retryable
            assert exc.retry_after_s is not None and exc.retry_after_s > 0
            assert "capacity 4" in exc.message
        assert all(not isinstance(_outcome(p), WorkerError) for p in [running, *queued])  # none admitted is lost
        stats = c.request("queue.stats")
        assert (stats["depth"], stats["rejected"], stats["high_water"], stats["completed"]) == (0, 3, 4, 5)
        t0 = time.perf_counter()
        assert c.request("job.run", {"op": "echo", "params": {"payload": "again"}})["result"] == {"payload": "again"}
        assert time.perf_counter() - t0 < 1.0  # back to normal latency, no restart


def test_request_admitted_retries_queue_full_after_the_named_time(worker_argv: list[str]) -> None:
    from workers.host.jobs import Admission

    with WorkerClient(worker_argv).start() as c:
        c.request("queue.configure", {"capacity": 1, "concurrency": 1})
        c.submit("job.run", _sleep_job(0.3))
        time.sleep(0.05)
        c.submit("job.run", _sleep_job(0.1))
        adm = Admission()
        out = request_admitted(c, "job.run", {"op": "echo", "params": {"payload": "x"}}, max_wait_s=10, admission=adm)
        assert out["result"] == {"payload": "x"}
        assert adm.rejections >= 1 and adm.waited_s > 0
        c.submit("job.run", _sleep_job(0.5))
        time.sleep(0.05)
        c.submit("job.run", _sleep_job(0.1))
        with pytest.raises(WorkerError) as info:  # a budget too short for the backlog: the rejection surfaces
            request_admitted(c, "job.run", {"op": "echo", "params": {"payload": "y"}}, max_wait_s=0.0)
        assert info.value.code == ErrorCode.QUEUE_FULL


def test_priority_order_holds_under_load(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("queue.configure", {"capacity": 200, "concurrency": 1})
        blocker = c.submit("job.run", _sleep_job(0.3))
        time.sleep(0.1)
        prios = [(i * 7) % 10 for i in range(60)]
        pending = [(prio, c.submit("job.run", {"op": "echo", "params": {"payload": str(i)}}, priority=prio))
                   for i, prio in enumerate(prios)]
        _outcome(blocker)
        jobs = sorted(((_outcome(p)["job"], prio) for prio, p in pending), key=lambda jp: jp[0]["started_s"])
        started = [(prio, job["seq"]) for job, prio in jobs]
        assert started == sorted(started)  # 0 first, admission order within a priority


def test_cancel_a_queued_and_a_running_job(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        running = c.submit("job.run", {"op": "fault.sleep", "params": {"seconds": 10, "steps": 100}})
        time.sleep(0.2)
        queued = c.submit("job.run", _sleep_job(10))
        time.sleep(0.05)
        t0 = time.monotonic()
        c.request("cancel", {"target": queued.id})
        c.request("cancel", {"target": running.id})
        for p, words in ((queued, "while queued"), (running, "cancelled by the host")):
            exc = _outcome(p)
            assert isinstance(exc, WorkerError) and exc.code == ErrorCode.CANCELLED and words in exc.message
        assert time.monotonic() - t0 < 2.0
        stats = c.request("queue.stats")
        assert (stats["cancelled"], stats["running"], stats["depth"]) == (2, 0, 0)
        assert c.request("job.run", {"op": "echo", "params": {"payload": "z"}})["result"] == {"payload": "z"}


def test_a_timed_out_batch_keeps_its_completed_items_and_resumes(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        items = [_sleep_job(0.12) for _ in range(8)]
        reported: list[dict[str, Any]] = []
        first = c.request("batch.run", {"items": items}, timeout=0.5,
                          on_event=lambda ev: reported.append(ev.data["item"]) if "item" in ev.data else None)
        assert first["stopped"] == "deadline" and not first["complete"]
        ok = [it["index"] for it in first["items"] if it["status"] == "ok"]
        assert 1 <= len(ok) < 8 and first["pending"] == [i for i in range(8) if i not in ok]
        assert {it["index"] for it in reported if it["status"] == "ok"} == set(ok)  # reported as they finished
        runner = BatchRunner(lambda: c, call_timeout_s=0.5, max_calls=10)
        out = runner.run(items)
        assert out.complete and out.ok == 8 and out.calls >= 2 and out.resumed_from
        assert [it["index"] for it in out.items] == list(range(8))
        assert c.request("queue.stats")["reserved"] == 0  # every batch gave its window back


def test_a_cancelled_batch_whose_items_all_wait_says_it_was_cancelled(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        blocker = c.submit("job.run", _sleep_job(0.5))
        time.sleep(0.1)
        batch = c.submit("batch.run", {"items": [_sleep_job(0.1), _sleep_job(0.1)]})
        time.sleep(0.1)
        c.request("cancel", {"target": batch.id})
        out = _outcome(batch)
        assert (out["stopped"], out["not_run"], out["pending"], out["complete"]) == ("cancelled", 2, [0, 1], False)
        assert not isinstance(_outcome(blocker), WorkerError)


def test_batch_resumes_on_a_replacement_after_the_worker_is_killed(worker_argv: list[str]) -> None:
    clients: list[WorkerClient] = []

    def get_client() -> WorkerClient:
        if not clients or not clients[-1].alive:
            clients.append(WorkerClient(worker_argv).start())
        return clients[-1]

    killed: list[int] = []

    def on_item(item: dict[str, Any]) -> None:
        if item["status"] == "ok" and item["index"] == 2 and not killed:
            killed.append(item["index"])
            clients[-1].kill("test kills the worker mid-batch")

    try:
        items = [{"op": "echo", "params": {"payload": str(i)}} if i % 2 else _sleep_job(0.1) for i in range(10)]
        out = BatchRunner(get_client, call_timeout_s=30, window=1, on_item=on_item).run(items)
        assert killed and out.workers_lost == 1 and len(clients) == 2
        assert out.complete and out.ok == 10
        assert out.resumed_from and out.resumed_from[0] >= 3  # items 0..2 were kept, not rerun
    finally:
        for c in clients:
            c.shutdown()


def test_jobs_in_flight_fail_worker_lost_and_queued_ones_shutting_down(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        jobs = [c.submit("job.run", _sleep_job(5)) for _ in range(3)]
        time.sleep(0.2)
        c.kill("test")
        for p in jobs:
            exc = _outcome(p)
            assert isinstance(exc, WorkerError) and exc.code == ErrorCode.WORKER_LOST
    with WorkerClient(worker_argv).start() as c:
        running = c.submit("job.run", _sleep_job(0.3))
        time.sleep(0.1)
        queued = [c.submit("job.run", _sleep_job(5)) for _ in range(3)]
        time.sleep(0.05)
        c.submit("shutdown", {"reason": "test"})
        assert not isinstance(_outcome(running), WorkerError)
        for p in queued:
            exc = _outcome(p)
            assert isinstance(exc, WorkerError) and exc.code == ErrorCode.SHUTTING_DOWN and exc.retryable


def test_bad_input_is_named_and_the_worker_keeps_serving(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        cases: list[tuple[str, dict[str, Any], int, str, str]] = [
            ("job.run", {"op": "echo", "params": {"payload": "x"}}, 12, ErrorCode.INVALID_MESSAGE,
             "priority must be 0..9"),
            ("queue.configure", {"capacity": 0}, 5, ErrorCode.INVALID_PARAMS, "capacity must be 1..5000, got 0"),
            ("queue.configure", {"capacity": 5001}, 5, ErrorCode.INVALID_PARAMS, "capacity must be 1..5000, got 5001"),
            ("workflow.run", {"steps": [{"op": "echo"}, {"op": "safety.nope"}]}, 5, ErrorCode.INVALID_PARAMS,
             "step 1 (safety.nope): unknown operation 'safety.nope'"),
            ("job.run", {"op": "inference.run", "params": {"model": "m"}}, 5, ErrorCode.INVALID_PARAMS,
             "no model root configured"),
            ("batch.run", {"items": [{"op": "echo"}, {"op": "echo", "steps": []}]}, 5, ErrorCode.INVALID_PARAMS,
             "batch item 1: give either op or steps, not both"),
            ("batch.run", {"items": []}, 5, ErrorCode.INVALID_PARAMS, "1..10000 items"),
            ("batch.run", {"items": [{"op": "echo"}], "images": "shm"}, 5, ErrorCode.INVALID_PARAMS,
             "images 'shm' needs include_results"),
        ]
        for op, params, prio, code, words in cases:
            with pytest.raises(WorkerError) as info:
                c.request(op, params, priority=prio)
            assert info.value.code == code and words in info.value.message, (op, info.value)
        assert c.request("job.run", {"op": "echo", "params": {"payload": "alive"}})["result"] == {"payload": "alive"}
        assert c.request("queue.stats")["capacity"] == 1000  # the refused settings changed nothing


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_a_full_queue_refuses_a_batch_and_concurrency_scales_with_status_events(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("queue.configure", {"capacity": 3, "concurrency": 1, "max_concurrency": 2, "scale_up_depth": 2,
                                      "scale_down_idle_s": 0.3})
        jobs = [c.submit("job.run", _sleep_job(0.5)) for _ in range(5)]  # 2 run, at least 2 wait for 0.5 s
        # Every job decided (admitted, or refused when the second slot starts late), not a fixed sleep.
        _wait_for(lambda: (lambda st: st["admitted"] + st["rejected"] == 5)(c.request("queue.stats")))
        with pytest.raises(WorkerError) as info:
            c.request("batch.run", {"items": [{"op": "echo"}] * 5})
        assert info.value.code == ErrorCode.QUEUE_FULL and "batch window" in info.value.message
        for p in jobs:
            _outcome(p)

        def scaled() -> list[tuple[str, int]]:
            return [(ev.data["reason"], ev.data["concurrency"]) for ev in c.status_events
                    if ev.data.get("domain") == "queue"]

        _wait_for(lambda: len(scaled()) >= 2)  # idle for scale_down_idle_s, then back to 1
        assert scaled() == [("backlog", 2), ("idle", 1)]
        assert c.request("batch.run", {"items": [{"op": "echo"}] * 5})["ok"] == 5
