"""Handlers of the queue operations (see workers/protocol/ops_queue.py).

``job.run``, ``workflow.run`` and ``batch.run`` are routed: the reader thread checks them and
admits or rejects them at once (bad input and QUEUE_FULL are answered without waiting behind
work), then the job queue's threads run them. The queue is created with the defaults on first
use; ``queue.configure`` sets it up or changes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import msgspec

from workers.protocol import codec
from workers.protocol.messages import ErrorCode, Request
from workers.protocol.ops_queue import (
    BatchParams,
    JobInfo,
    JobParams,
    JobResult,
    QueueConfigureParams,
    QueueStats,
    QueueStatsParams,
    QueueTraceParams,
    QueueTraceResult,
    WorkflowParams,
)
from workers.runtime import batches, workflows
from workers.runtime.context import OperationError, RequestContext
from workers.runtime.jobqueue import Job, JobQueue, replay
from workers.runtime.workflows import OpTable

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


class QueueRuntime:
    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.ops = OpTable(server)
        self._queue: Union[JobQueue, None] = None
        self._lock = threading.Lock()
        server.stop_hooks.append(self._stop)

    def _stop(self, drain: bool) -> None:
        if self._queue is not None:
            self._queue.close(drain)

    def queue(self) -> JobQueue:
        with self._lock:
            if self._queue is None:
                self._queue = JobQueue(self.server, QueueConfigureParams())
            return self._queue

    # ---- control ---------------------------------------------------------------------------
    def configure(self, p: QueueConfigureParams) -> QueueStats:
        with self._lock:
            if self._queue is None:
                self._queue = JobQueue(self.server, p)  # ValueError names a bad setting
                return self._queue.stats()
        return self._queue.reconfigure(p)

    def stats(self, p: QueueStatsParams) -> QueueStats:
        return self.queue().stats(p.reset_high_water)

    def trace(self, p: QueueTraceParams) -> QueueTraceResult:
        return self.queue().trace(p.after, p.limit)

    # ---- admission -------------------------------------------------------------------------
    def route_job(self, req: Request, p: JobParams) -> None:
        try:
            resolved = self.ops.resolve(p.op, where="job.run")
            typed = workflows.convert(resolved.spec, p.params, "job.run")
        except ValueError as exc:
            self.server.fail(req.id, ErrorCode.INVALID_PARAMS, str(exc))
            return

        def work(job: Job) -> JobResult:
            result = resolved.fn(job.ctx, typed)
            return JobResult(p.op, codec.to_builtins(result), _info(job, self.queue()))

        self._admit(req, "job.run", work)

    def route_workflow(self, req: Request, p: WorkflowParams) -> None:
        try:
            prepared = workflows.prepare(self.ops, p.steps)
        except ValueError as exc:
            self.server.fail(req.id, ErrorCode.INVALID_PARAMS, str(exc))
            return

        def work(job: Job) -> Any:
            out = workflows.run(self.server, job.ctx, prepared, p.output)
            return msgspec.structs.replace(out, job=_info(job, self.queue()))

        self._admit(req, "workflow.run", work)

    def _admit(self, req: Request, op: str, work: Callable[[Job], Any]) -> None:
        queue = self.queue()
        ctx = RequestContext(self.server, req.id, req.deadline_ms)

        def finish(job: Job, result: Any, error: Union[BaseException, None]) -> None:
            self.server.untrack_routed(req.id)
            # The outcome is reached: answer exactly it (a fresh context, so execute's own checks of a
            # cancel or deadline that came after the result cannot replace it).
            self.server.execute(req.id, op, replay(result, error), RequestContext(self.server, req.id, None), None)

        job = Job(str(req.id), op, req.priority, ctx, work, finish, counted=True)
        ctx.on_cancel = lambda: queue.take_queued(job, "cancelled", OperationError(
            ErrorCode.CANCELLED, "cancelled by the host while queued"))
        self.server.track_routed(req.id, ctx)
        try:
            retry = queue.admit(job)
        except OperationError as exc:
            self.server.untrack_routed(req.id)
            self.server.fail(req.id, exc.code, exc.message, exc.retryable)
            return
        if retry is not None:
            self.server.untrack_routed(req.id)
            self.server.fail(req.id, ErrorCode.QUEUE_FULL, _full_message(queue, retry), True, retry)

    def route_batch(self, req: Request, p: BatchParams) -> None:
        queue = self.queue()
        t0 = time.perf_counter()
        try:
            items = batches.prepare(self.ops, p)
            if p.window is not None and not 1 <= p.window <= queue.capacity:
                raise ValueError(f"window must be 1..capacity ({queue.capacity}), got {p.window}")
        except ValueError as exc:
            self.server.fail(req.id, ErrorCode.INVALID_PARAMS, f"batch.run: {exc}")
            return
        prepare_s = time.perf_counter() - t0
        window = min(p.window or queue.batch_window, len(items))
        try:
            retry = queue.reserve(window)
        except OperationError as exc:
            self.server.fail(req.id, exc.code, exc.message, exc.retryable)
            return
        if retry is not None:
            self.server.fail(req.id, ErrorCode.QUEUE_FULL, _full_message(queue, retry, batch=window), True, retry)
            return
        batches.Batch(self.server, queue, req, p, items, prepare_s, window).start()


def _info(job: Job, queue: JobQueue) -> JobInfo:
    return JobInfo(job.seq, job.depth_at_admission, job.running_at_admission, round(job.started - job.enqueued, 6),
                   round(queue.now() - job.started, 6), round(job.enqueued, 6), round(job.started, 6), job.slot)


def _full_message(queue: JobQueue, retry: float, batch: int = 0) -> str:
    s = queue.stats()
    what = f"a batch window of {batch}" if batch else "the job"
    limit = f"; {s.batches_active} of {queue.max_batches} batches active" if batch else ""
    return (f"job queue full: {s.depth} waiting + {s.reserved} reserved by batches, capacity {s.capacity}, "
            f"no room for {what}{limit}; retry after {retry:g} s (a tenth of the queue at "
            f"{s.service_time_s:.4g} s per job over {s.service_samples} measured, concurrency {s.concurrency})")


def runtime(server: WorkerServer) -> QueueRuntime:
    rt = getattr(server, "_queue_runtime", None)
    if rt is None:
        rt = server._queue_runtime = QueueRuntime(server)  # type: ignore[attr-defined]
    return rt


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    runtime(server)  # registers the stop hook
    return {}


def routed_handlers(server: WorkerServer) -> dict[str, Callable[[Request, Any], None]]:
    rt = runtime(server)
    return {"job.run": rt.route_job, "workflow.run": rt.route_workflow, "batch.run": rt.route_batch}


def control_handlers(server: WorkerServer) -> dict[str, Callable[[Any], Any]]:
    rt = runtime(server)
    return {"queue.configure": rt.configure, "queue.stats": rt.stats, "queue.trace": rt.trace}
