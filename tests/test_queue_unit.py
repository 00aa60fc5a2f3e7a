"""The job queue in-process: priority order, bounded admission with a retry-after, cancellation,
deadlines while queued, reconfiguration, trace paging, batch reservations; workflow and batch
preparation naming bad input."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest

from workers.protocol.messages import ErrorCode
from workers.protocol.ops_queue import BatchItem, BatchParams, QueueConfigureParams, WorkflowStep
from workers.runtime import batches, workflows
from workers.runtime.context import Cancelled, DeadlineExceeded, OperationError, RequestContext
from workers.runtime.jobqueue import Job, JobQueue
from workers.runtime.server import WorkerConfig, WorkerServer


class _Server:
    """What the queue needs of a server: somewhere to send status events."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)


class _Done:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: dict[str, tuple[Any, Any]] = {}
        self.order: list[str] = []

    def __call__(self, job: Job, result: Any, exc: Any) -> None:
        with self.lock:
            self.outcomes[job.key] = (result, exc)

    def wait(self, n: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while len(self.outcomes) < n:
            assert time.monotonic() < end, f"{len(self.outcomes)} of {n} jobs finished"
            time.sleep(0.005)


def _job(key: str, priority: int, done: _Done, work: Any = None, deadline_ms: float | None = None,
         counted: bool = True) -> Job:
    ctx = RequestContext(None, key, deadline_ms)  # type: ignore[arg-type]

    def default(job: Job) -> str:
        done.order.append(job.key)
        return job.key

    return Job(key, "echo", priority, ctx, work or default, done, counted)


@pytest.fixture
def queue() -> Any:
    q = JobQueue(_Server(), QueueConfigureParams(capacity=20, concurrency=1))  # type: ignore[arg-type]
    yield q
    q.close(drain=False)


def _blocker(done: _Done, gate: threading.Event) -> Job:
    def work(job: Job) -> str:
        gate.wait(10)
        return "blocker"
    return _job("blocker", 0, done, work)


def test_priority_zero_first_and_fifo_within_a_priority(queue: JobQueue) -> None:
    done, gate = _Done(), threading.Event()
    assert queue.admit(_blocker(done, gate)) is None
    time.sleep(0.05)  # the blocker runs; everything else waits
    plan = [("a", 5), ("b", 9), ("c", 0), ("d", 5), ("e", 0), ("f", 3)]
    for key, prio in plan:
        assert queue.admit(_job(key, prio, done)) is None
    assert queue.stats().depth_by_priority[5] == 2
    gate.set()
    done.wait(len(plan) + 1)
    assert done.order == ["c", "e", "f", "a", "d", "b"]


def test_full_queue_rejects_with_a_retry_after_and_admits_again_once_drained() -> None:
    q = JobQueue(_Server(), QueueConfigureParams(capacity=3, concurrency=1))  # type: ignore[arg-type]
    try:
        done, gate = _Done(), threading.Event()
        q.admit(_blocker(done, gate))
        time.sleep(0.05)
        for i in range(3):
            assert q.admit(_job(f"j{i}", 5, done)) is None
        retry = q.admit(_job("over", 5, done))
        assert retry is not None and retry > 0  # explicit, with a time to come back
        s = q.stats()
        assert (s.depth, s.rejected, s.high_water, s.admitted) == (3, 1, 3, 4)
        gate.set()
        done.wait(4)
        assert "over" not in done.outcomes  # rejected means never queued, never run
        assert q.admit(_job("after", 5, done)) is None
        done.wait(5)
        s = q.stats()
        assert (s.depth, s.completed, s.service_samples) == (0, 5, 5)
    finally:
        q.close(drain=False)


def test_retry_after_follows_measured_service_time_and_concurrency(queue: JobQueue) -> None:
    done = _Done()
    for i in range(5):
        queue.admit(_job(f"s{i}", 5, done, lambda job: time.sleep(0.04)))
    done.wait(5)
    s = queue.stats()
    assert 0.03 < s.service_time_s < 0.5
    # capacity 20: two jobs (a tenth) at the measured service time, over one thread
    assert s.retry_after_s == pytest.approx(2 * s.service_time_s, rel=0.01)


def test_cancel_a_queued_job_answers_it_at_once_and_skips_it(queue: JobQueue) -> None:
    done, gate = _Done(), threading.Event()
    queue.admit(_blocker(done, gate))
    time.sleep(0.05)
    victim = _job("victim", 5, done)
    queue.admit(victim)
    queue.admit(_job("other", 5, done))
    assert queue.take_queued(victim, "cancelled", Cancelled())
    assert isinstance(done.outcomes["victim"][1], Cancelled)
    assert not queue.take_queued(victim, "cancelled", Cancelled())  # answered once
    gate.set()
    done.wait(3)
    assert "victim" not in done.order and "other" in done.order
    assert queue.stats().cancelled == 1


def test_a_running_job_sees_its_cancellation(queue: JobQueue) -> None:
    done = _Done()

    def work(job: Job) -> None:
        job.ctx.wait(10)

    job = _job("long", 5, done, work)
    queue.admit(job)
    time.sleep(0.05)
    assert not queue.take_queued(job, "cancelled", Cancelled())  # running: not the queue's to answer
    job.ctx.cancel()
    done.wait(1, timeout=3)
    assert isinstance(done.outcomes["long"][1], Cancelled)


def test_deadline_passing_while_queued_is_answered_then(queue: JobQueue) -> None:
    done, gate = _Done(), threading.Event()
    queue.admit(_blocker(done, gate))
    time.sleep(0.02)
    t0 = time.monotonic()
    queue.admit(_job("late", 5, done, deadline_ms=100))
    done.wait(1, timeout=3)
    assert time.monotonic() - t0 < 1.0  # answered at its deadline, not when the blocker ends
    assert isinstance(done.outcomes["late"][1], DeadlineExceeded)
    gate.set()
    assert queue.stats().expired == 1


def test_reconfigure_refuses_a_capacity_below_the_waiting_jobs(queue: JobQueue) -> None:
    done, gate = _Done(), threading.Event()
    queue.admit(_blocker(done, gate))
    time.sleep(0.02)
    for i in range(4):
        queue.admit(_job(f"w{i}", 5, done))
    with pytest.raises(ValueError, match="below the 4 jobs"):
        queue.reconfigure(QueueConfigureParams(capacity=2))
    gate.set()


@pytest.mark.parametrize("bad, match", [
    ({"capacity": 0}, "capacity must be 1..5000"), ({"capacity": 5001}, "capacity must be 1..5000"),
    ({"concurrency": 0}, "concurrency must be"), ({"concurrency": 2, "max_concurrency": 1}, "max_concurrency"),
    ({"batch_window": 0}, "batch_window"),
])
def test_bad_settings_are_named(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        JobQueue(_Server(), QueueConfigureParams(**bad))  # type: ignore[arg-type]


def test_backlog_raises_concurrency_and_idle_lowers_it_with_status_events() -> None:
    server = _Server()
    q = JobQueue(server, QueueConfigureParams(capacity=20, concurrency=1, max_concurrency=2,  # type: ignore[arg-type]
                                              scale_up_depth=2, scale_down_idle_s=0.2))
    try:
        done = _Done()
        for i in range(4):
            q.admit(_job(f"x{i}", 5, done, lambda job: time.sleep(0.05)))
        assert q.stats().concurrency == 2
        done.wait(4)
        time.sleep(0.6)
        assert q.stats().concurrency == 1
        kinds = [(m.data["reason"], m.data["concurrency"]) for m in server.sent]
        assert kinds == [("backlog", 2), ("idle", 1)]
    finally:
        q.close(drain=False)


def test_batch_reservations_count_against_capacity(queue: JobQueue) -> None:
    done, gate = _Done(), threading.Event()
    queue.admit(_blocker(done, gate))
    time.sleep(0.02)
    assert queue.reserve(15) is None
    for i in range(5):
        assert queue.admit(_job(f"w{i}", 5, done)) is None
    assert queue.admit(_job("over", 5, done)) is not None
    assert queue.reserve(1) is not None
    assert queue.admit(_job("item", 5, done, counted=False)) is None  # a batch item rides on its reservation
    queue.release(15)
    gate.set()


def test_trace_pages_and_records_never_run_jobs(queue: JobQueue) -> None:
    done, gate = _Done(), threading.Event()
    queue.admit(_blocker(done, gate))
    time.sleep(0.02)
    victim = _job("victim", 5, done)
    queue.admit(victim)
    queue.take_queued(victim, "cancelled", Cancelled())
    gate.set()
    for i in range(3):
        queue.admit(_job(f"t{i}", 5, done))
    done.wait(5)
    first = queue.trace(-1, 2)
    rest = queue.trace(first.entries[-1].index, 100)
    entries = first.entries + rest.entries
    assert [e.key for e in entries] == ["victim", "blocker", "t0", "t1", "t2"]
    assert entries[0].started_s is None and entries[0].outcome == "cancelled" and entries[0].slot == -1
    assert all(e.started_s is not None and e.started_s >= e.enqueued_s for e in entries[1:])
    with pytest.raises(ValueError, match="limit"):
        queue.trace(-1, 0)


def test_shutdown_answers_every_waiting_job(queue: JobQueue) -> None:
    done, gate = _Done(), threading.Event()
    queue.admit(_blocker(done, gate))
    time.sleep(0.02)
    for i in range(3):
        queue.admit(_job(f"q{i}", 5, done))
    threading.Timer(0.1, gate.set).start()
    queue.close(drain=False)
    done.wait(4)
    for i in range(3):
        exc = done.outcomes[f"q{i}"][1]
        assert isinstance(exc, OperationError) and exc.code == ErrorCode.SHUTTING_DOWN and exc.retryable
    with pytest.raises(OperationError, match="shutting down"):
        queue.admit(_job("late", 5, done))


# ---- preparation of workflows and batches (a server in-process, never served) ------------------

@pytest.fixture
def table() -> workflows.OpTable:
    server = WorkerServer(WorkerConfig(allow_fault_injection=True), io.BytesIO(), io.BytesIO())
    return workflows.OpTable(server)


def test_unknown_or_unusable_step_ops_are_named(table: workflows.OpTable) -> None:
    with pytest.raises(ValueError, match=r"step 1 \(postprocess.nope\): unknown operation 'postprocess.nope'"):
        workflows.prepare(table, [WorkflowStep("echo"), WorkflowStep("postprocess.nope")])
    with pytest.raises(ValueError, match="do not nest"):
        workflows.prepare(table, [WorkflowStep("batch.run")])
    with pytest.raises(ValueError, match="no in-process implementation"):
        workflows.prepare(table, [WorkflowStep("ping")])
    with pytest.raises(ValueError, match=r"step 0 \(echo\): invalid params"):
        workflows.prepare(table, [WorkflowStep("echo", {"nope": 1})])
    with pytest.raises(ValueError, match=r"1\.\.16 steps"):
        workflows.prepare(table, [])
    with pytest.raises(ValueError, match="image_param 'prompt' does not take an image"):
        workflows.prepare(table, [WorkflowStep("inference.run", {"model": "m"}, image_param="prompt")])


def test_batch_preparation_assigns_seeds_by_index_and_names_bad_items(table: workflows.OpTable) -> None:
    p = BatchParams([BatchItem("inference.run", {"model": "m"}), BatchItem("inference.run", {"model": "m", "seed": 7})],
                    seed_base=100, indices=[4, 9])
    items = batches.prepare(table, p)
    assert [(it.index, it.seed) for it in items] == [(4, 104), (9, 7)]
    assert items[0].typed.output == "digest" and items[0].typed.progress is False
    with pytest.raises(ValueError, match="batch item 1: give either op or steps"):
        batches.prepare(table, BatchParams([BatchItem("echo"), BatchItem()]))
    with pytest.raises(ValueError, match=r"batch item 0 step 0 \(nope\): unknown operation"):
        batches.prepare(table, BatchParams([BatchItem(steps=[WorkflowStep("nope")])]))
    with pytest.raises(ValueError, match="indices has 1 entries for 2 items"):
        batches.prepare(table, BatchParams([BatchItem("echo"), BatchItem("echo")], indices=[0]))
    with pytest.raises(ValueError, match="no such shared-memory segment"):
        batches.prepare(table, BatchParams([BatchItem("inference.run", {
            "model": "m", "mode": "image_to_image", "init_image": {"shm": "hv-missing", "shape": [1, 8, 8, 3]}})]))
