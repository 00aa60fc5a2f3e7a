"""The worker's bounded priority job queue: admission control, priorities, cancellation, stats.

Why not ``slots.PriorityPool``: the pool answers every item to the host itself and admits
everything. Here a job's answer goes to whoever submitted it (the host for ``job.run`` and
``workflow.run``, the batch coordinator for batch items), admission is bounded, and the
number of threads changes at run time (autoscaling). The conventions are the pool's: priority
0 first and arrival order within a priority, a cancel hook on the request context so a queued
job is answered at once, a deadline that passes while queued is answered then.

Capacity counts waiting jobs (running ones excluded) plus the windows reserved by admitted
batches, so the bound holds however batch items and single jobs mix. A job that finds the
queue full is answered QUEUE_FULL with ``retry_after_s``: the time for a tenth of the queue to
drain at the measured service rate (mean of the last 50 run times, over the concurrency).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

from workers.protocol.messages import ErrorCode, Event
from workers.protocol.ops_queue import (
    MAX_CAPACITY,
    MAX_CONCURRENCY,
    QueueConfigureParams,
    QueueStats,
    QueueTraceResult,
    TraceEntry,
)
from workers.runtime.context import Cancelled, DeadlineExceeded, OperationError, RequestContext

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer

log = logging.getLogger(__name__)

TRACE_MAX = 20_000  # finished jobs remembered for queue.trace (a bounded ring, ~4 MB)
SERVICE_WINDOW = 50  # run times the service-time estimate averages
NO_SAMPLE_SERVICE_S = 0.1  # the estimate before any job has finished and none is running

Finish = Callable[["Job", Any, Union[BaseException, None]], None]


class Job:
    """One unit of work in the queue. ``work(job)`` returns the result or raises; ``finish``
    receives (job, result, exception) exactly once, from whichever thread ends the job."""

    __slots__ = ("counted", "ctx", "deadline", "depth_at_admission", "ended", "enqueued", "finish", "key", "op",
                 "priority", "running_at_admission", "seq", "slot", "started", "state", "work")

    def __init__(self, key: str, op: str, priority: int, ctx: RequestContext, work: Callable[[Job], Any],
                 finish: Finish, counted: bool) -> None:
        self.key, self.op, self.priority, self.ctx = key, op, priority, ctx
        self.work, self.finish, self.counted = work, finish, counted
        self.seq = -1
        self.state = "new"  # new | queued | running | done
        self.enqueued = self.started = self.ended = 0.0
        self.depth_at_admission = self.running_at_admission = 0
        self.slot = -1
        self.deadline = ctx.deadline

    def __lt__(self, other: Job) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(code, message) the way ``WorkerServer.execute`` would answer the exception."""
    if isinstance(exc, Cancelled):
        return ErrorCode.CANCELLED, "cancelled by the host"
    if isinstance(exc, DeadlineExceeded):
        return ErrorCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, OperationError):
        return exc.code, exc.message
    if isinstance(exc, (ValueError, KeyError)):
        return ErrorCode.INVALID_PARAMS, str(exc.args[0] if exc.args else exc)
    return ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"


def validate_config(p: QueueConfigureParams) -> None:
    if not 1 <= p.capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be 1..{MAX_CAPACITY}, got {p.capacity}")
    if not 1 <= p.concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {p.concurrency}")
    if p.max_concurrency is not None and not p.concurrency <= p.max_concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"max_concurrency must be {p.concurrency}..{MAX_CONCURRENCY}, got {p.max_concurrency}")
    if p.scale_up_depth is not None and not 1 <= p.scale_up_depth <= p.capacity:
        raise ValueError(f"scale_up_depth must be 1..capacity ({p.capacity}), got {p.scale_up_depth}")
    if p.scale_down_idle_s <= 0:
        raise ValueError(f"scale_down_idle_s must be > 0, got {p.scale_down_idle_s}")
    if not 1 <= p.max_batches <= 1000:
        raise ValueError(f"max_batches must be 1..1000, got {p.max_batches}")
    if p.batch_window is not None and not 1 <= p.batch_window <= p.capacity:
        raise ValueError(f"batch_window must be 1..capacity ({p.capacity}), got {p.batch_window}")


class JobQueue:
    def __init__(self, server: WorkerServer, config: QueueConfigureParams) -> None:
        validate_config(config)
        self.server = server
        self._cv = threading.Condition()
        self._heap: list[Job] = []  # lazy deletion: jobs no longer queued are skipped when popped
        self._seq = itertools.count()
        self._epoch = time.monotonic()
        self._closed = False
        self._threads: dict[int, threading.Thread] = {}
        self._depth = 0
        self._counted_depth = 0  # waiting jobs that count against capacity (not batch items)
        self._reserved = 0
        self._by_priority = [0] * 10
        self._running = 0
        self._running_jobs: dict[int, Job] = {}  # slot -> job
        self._batches = 0
        self._service: collections.deque[float] = collections.deque(maxlen=SERVICE_WINDOW)
        self._trace: collections.deque[TraceEntry] = collections.deque(maxlen=TRACE_MAX)
        self._trace_next = 0
        self._counts = dict.fromkeys(("admitted", "rejected", "completed", "failed", "cancelled", "expired",
                                      "batch_items_done", "scale_events"), 0)
        self._high_water = 0
        self._deadlines: list[tuple[float, int, Job]] = []
        self._dl_cv = threading.Condition()
        self._apply(config)
        self._concurrency = config.concurrency
        for i in range(self._concurrency):
            self._start_slot(i)
        self._reaper = threading.Thread(target=self._reap_loop, name="jobqueue-deadlines", daemon=True)
        self._reaper.start()

    # ---- configuration ---------------------------------------------------------------------
    def _apply(self, c: QueueConfigureParams) -> None:
        self.capacity = c.capacity
        self.base_concurrency = c.concurrency
        self.max_concurrency = c.max_concurrency if c.max_concurrency is not None else c.concurrency
        self.scale_up_depth = c.scale_up_depth if c.scale_up_depth is not None else max(1, c.capacity // 4)
        self.scale_down_idle_s = c.scale_down_idle_s
        self.max_batches = c.max_batches
        self.batch_window = c.batch_window if c.batch_window is not None else min(2, c.capacity)

    def reconfigure(self, c: QueueConfigureParams) -> QueueStats:
        validate_config(c)
        with self._cv:
            held = self._counted_depth + self._reserved
            if held > c.capacity:
                raise ValueError(f"capacity {c.capacity} is below the {held} jobs now waiting or reserved: "
                                 "let the queue drain first")
            self._apply(c)
            old = self._concurrency
            self._concurrency = c.concurrency  # threads above it retire after their current job
            for i in range(old, self._concurrency):
                self._start_slot(i)
            self._cv.notify_all()
        return self.stats()

    def _start_slot(self, index: int) -> None:
        """Caller holds ``_cv`` (or is the constructor)."""
        t = threading.Thread(target=self._slot_loop, args=(index,), name=f"jobqueue-{index}", daemon=True)
        self._threads[index] = t
        t.start()

    # ---- admission -------------------------------------------------------------------------
    def now(self) -> float:
        """Seconds on the queue's clock (worker monotonic, zero at creation)."""
        return time.monotonic() - self._epoch

    def retry_after_s(self) -> float:
        """Caller may hold ``_cv``: the time for a tenth of the capacity to drain."""
        if self._service:
            service = sum(self._service) / len(self._service)
        else:  # nothing finished yet: the running jobs have taken at least this long
            now = self.now()
            service = max([NO_SAMPLE_SERVICE_S] + [now - j.started for j in self._running_jobs.values()])
        drain = max(1, math.ceil(self.capacity / 10)) * service / max(1, self._concurrency)
        return round(min(300.0, max(0.01, drain)), 3)

    def admit(self, job: Job) -> Union[float, None]:
        """Queue ``job``; None when admitted, else the retry-after of a QUEUE_FULL answer.
        Raises OperationError(SHUTTING_DOWN) once the queue is closing."""
        scaled = None
        with self._cv:
            if self._closed:
                raise OperationError(ErrorCode.SHUTTING_DOWN, "the job queue is shutting down", True)
            held = self._counted_depth + self._reserved
            if job.counted and held >= self.capacity:
                self._counts["rejected"] += 1
                return self.retry_after_s()
            job.depth_at_admission = self._depth  # jobs waiting when it arrived
            job.running_at_admission = self._running
            self._push(job)
            scaled = self._maybe_scale_up()
            self._cv.notify()
        if job.deadline is not None:
            with self._dl_cv:
                heapq.heappush(self._deadlines, (job.deadline, job.seq, job))
                if len(self._deadlines) > 2 * self._depth + 1000:  # drop the entries of jobs already gone
                    self._deadlines = [e for e in self._deadlines if e[2].state == "queued"]
                    heapq.heapify(self._deadlines)
                self._dl_cv.notify()
        if scaled is not None:
            self._announce(*scaled)
        return None

    def _push(self, job: Job) -> None:
        job.seq = next(self._seq)
        job.enqueued = self.now()
        job.state = "queued"
        heapq.heappush(self._heap, job)
        self._depth += 1
        self._counted_depth += job.counted
        self._by_priority[job.priority] += 1
        self._counts["admitted"] += 1
        self._high_water = max(self._high_water, self._counted_depth + self._reserved)

    def _unqueue(self, job: Job) -> None:
        """Caller holds ``_cv``; ``job`` leaves the waiting set."""
        self._depth -= 1
        self._counted_depth -= job.counted
        self._by_priority[job.priority] -= 1

    def reserve(self, slots: int) -> Union[float, None]:
        """Capacity for a batch's window; None when granted, else the retry-after."""
        with self._cv:
            if self._closed:
                raise OperationError(ErrorCode.SHUTTING_DOWN, "the job queue is shutting down", True)
            if self._batches >= self.max_batches or self._counted_depth + self._reserved + slots > self.capacity:
                self._counts["rejected"] += 1
                return self.retry_after_s()
            self._reserved += slots
            self._batches += 1
            self._high_water = max(self._high_water, self._counted_depth + self._reserved)
            return None

    def release(self, slots: int) -> None:
        with self._cv:
            self._reserved -= slots
            self._batches -= 1

    def take_queued(self, job: Job, outcome: str, exc: BaseException) -> bool:
        """End a job that is still waiting (cancel, deadline, shutdown); False when it already runs or ended."""
        with self._cv:
            if job.state != "queued":
                return False
            job.state = "done"
            self._unqueue(job)
            self._counts[outcome if outcome in ("cancelled", "expired") else "failed"] += 1
            job.ended = self.now()
            self._record(job, outcome)
        job.finish(job, None, exc)
        return True

    # ---- autoscaling -----------------------------------------------------------------------
    def _maybe_scale_up(self) -> Union[tuple[int, int, str], None]:
        """Caller holds ``_cv``: one more thread when the backlog is deep and the ceiling allows."""
        if self._concurrency >= self.max_concurrency or self._depth < self.scale_up_depth:
            return None
        self._concurrency += 1
        self._start_slot(self._concurrency - 1)
        self._counts["scale_events"] += 1
        return self._concurrency - 1, self._concurrency, "backlog"

    def _announce(self, previous: int, now: int, reason: str) -> None:
        self.server.send(Event(event="status", data={
            "domain": "queue", "kind": "scaled", "previous": previous, "concurrency": now, "reason": reason,
            "depth": self._depth, "t_s": round(self.now(), 4)}))

    # ---- execution -------------------------------------------------------------------------
    def _next(self, index: int) -> Union[Job, None]:
        """Caller holds ``_cv``: the most urgent waiting job, or None (retire or closed)."""
        idle_since = time.monotonic()
        while True:
            if index >= self._concurrency:
                self._threads.pop(index, None)
                return None
            while self._heap and self._heap[0].state != "queued":
                heapq.heappop(self._heap)
            if self._heap:
                return heapq.heappop(self._heap)
            if self._closed:
                self._threads.pop(index, None)
                return None
            extra = index >= self.base_concurrency
            self._cv.wait(self.scale_down_idle_s if extra else None)
            if (extra and index == self._concurrency - 1 and not self._heap
                    and time.monotonic() - idle_since >= self.scale_down_idle_s):
                self._concurrency -= 1
                self._counts["scale_events"] += 1
                self._threads.pop(index, None)
                self._cv.release()  # announce outside the lock; the writer may block on the pipe
                try:
                    self._announce(index + 1, index, "idle")
                finally:
                    self._cv.acquire()
                return None

    def _slot_loop(self, index: int) -> None:
        while True:
            with self._cv:
                job = self._next(index)
                if job is None:
                    return
                job.state = "running"
                job.slot = index
                job.started = self.now()
                self._unqueue(job)
                self._running += 1
                self._running_jobs[index] = job
            result: Any = None
            error: Union[BaseException, None] = None
            try:
                job.ctx.check()
                result = job.work(job)
            except BaseException as exc:  # every outcome goes to finish, which answers it
                error = exc
            with self._cv:
                job.ended = self.now()
                job.state = "done"
                self._running -= 1
                self._running_jobs.pop(index, None)
                outcome = _outcome(error)
                if outcome != "cancelled":  # a cancelled run stopped early: not a service time
                    self._service.append(job.ended - job.started)
                self._counts[{"ok": "completed", "cancelled": "cancelled"}.get(outcome, "failed")] += 1
                self._record(job, outcome)
            try:
                job.finish(job, result, error)
            except Exception:  # a failing answer must not take the slot down
                log.exception("answering job %s (%s) failed", job.key, job.op)

    def _record(self, job: Job, outcome: str) -> None:
        """Caller holds ``_cv``."""
        ran = job.slot >= 0
        self._trace.append(TraceEntry(self._trace_next, job.seq, job.key, job.op, job.priority, round(job.enqueued, 6),
                                      round(job.started, 6) if ran else None, round(job.ended, 6), job.slot, outcome))
        self._trace_next += 1
        if not job.counted and outcome in ("ok", "error"):  # a batch item that ran
            self._counts["batch_items_done"] += 1

    # ---- deadlines -------------------------------------------------------------------------
    def _reap_loop(self) -> None:
        while True:
            expired: list[Job] = []
            with self._dl_cv:
                if self._closed and not self._deadlines:
                    return
                if not self._deadlines:
                    self._dl_cv.wait(1.0 if self._closed else None)
                    continue
                wait = self._deadlines[0][0] - time.monotonic()
                if wait > 0:
                    self._dl_cv.wait(min(wait, 1.0) if self._closed else wait)
                    if self._closed:
                        return
                    continue
                while self._deadlines and self._deadlines[0][0] <= time.monotonic():
                    expired.append(heapq.heappop(self._deadlines)[2])
            for job in expired:
                if job.state == "queued":
                    budget = job.ctx.budget_ms
                    self.take_queued(job, "expired", DeadlineExceeded(
                        f"deadline of {budget:g} ms passed while queued (position {job.depth_at_admission} "
                        f"at admission)" if budget is not None else "deadline passed while queued"))

    # ---- reading ---------------------------------------------------------------------------
    def stats(self, reset_high_water: bool = False) -> QueueStats:
        with self._cv:
            service = sum(self._service) / len(self._service) if self._service else 0.0
            out = QueueStats(
                capacity=self.capacity, concurrency=self._concurrency, base_concurrency=self.base_concurrency,
                max_concurrency=self.max_concurrency, depth=self._depth, reserved=self._reserved,
                running=self._running, high_water=self._high_water, admitted=self._counts["admitted"],
                rejected=self._counts["rejected"], completed=self._counts["completed"], failed=self._counts["failed"],
                cancelled=self._counts["cancelled"], expired=self._counts["expired"], batches_active=self._batches,
                batch_items_done=self._counts["batch_items_done"], service_time_s=round(service, 6),
                service_samples=len(self._service), retry_after_s=self.retry_after_s(),
                scale_events=self._counts["scale_events"], depth_by_priority=list(self._by_priority))
            if reset_high_water:
                self._high_water = self._counted_depth + self._reserved
        return out

    def trace(self, after: int, limit: int) -> QueueTraceResult:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._cv:
            first = self._trace[0].index if self._trace else self._trace_next
            start = max(0, after + 1 - first)
            entries = list(itertools.islice(self._trace, start, start + limit))
            dropped = max(0, first - (after + 1))
            return QueueTraceResult(entries, self._trace_next - 1, dropped)

    # ---- shutdown --------------------------------------------------------------------------
    def close(self, drain: bool) -> None:
        """Stop admitting; waiting jobs run (``drain``) or are answered SHUTTING_DOWN; waits for the slots."""
        with self._cv:
            self._closed = True
            waiting = [] if drain else [j for j in self._heap if j.state == "queued"]
            self._cv.notify_all()
        for job in waiting:
            self.take_queued(job, "shutdown", OperationError(
                ErrorCode.SHUTTING_DOWN, "worker shut down before the job ran", True))
        with self._dl_cv:
            self._dl_cv.notify_all()
        for t in list(self._threads.values()):
            t.join(timeout=30)


def _outcome(error: Union[BaseException, None]) -> str:
    if error is None:
        return "ok"
    if isinstance(error, Cancelled):
        return "cancelled"
    return "error"


def replay(result: Any, error: Union[BaseException, None]) -> Callable[[RequestContext, Any], Any]:
    """A handler for ``WorkerServer.execute`` that gives back an outcome already reached, so a job's
    answer is mapped to codes exactly as every other operation's is."""
    def fn(ctx: RequestContext, params: Any) -> Any:
        if error is not None:
            raise error
        return result
    return fn
