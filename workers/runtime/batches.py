"""Batches: N items (operations or workflows) run through the job queue, results aggregated.

A batch is admitted as a whole (every item checked, seeds assigned, input images verified,
then a window of queue capacity reserved, or QUEUE_FULL) and feeds its items into the queue a
window at a time, at the request's priority: a more urgent job overtakes a batch at the next
dispatch, and batches of one priority take turns (each refill goes to the back of its
priority). Each finished item is reported at once in a progress event carrying its result, so
a host that loses the worker still holds every completed item. On the deadline or a cancel the
batch stops feeding, cancels what is queued or running, and answers with the completed items
and the indices to resubmit: nothing completed is lost, a resumed batch starts from there.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import msgspec

from workers.protocol import codec
from workers.protocol.images import ImageInput, ImageRef, read
from workers.protocol.messages import ErrorCode, Event, Request, Response
from workers.protocol.operations import OPERATIONS_BY_NAME
from workers.protocol.ops_queue import MAX_BATCH_ITEMS, BatchItemResult, BatchParams, BatchResult, WorkflowStep
from workers.runtime import workflows
from workers.runtime.context import Cancelled, DeadlineExceeded, OperationError, RequestContext
from workers.runtime.jobqueue import Job, JobQueue, describe_error
from workers.runtime.workflows import OpTable, PreparedWorkflow, Resolved

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


@dataclass
class Item:
    index: int
    key: str
    op: str  # the operation, or "workflow"
    effective: Any  # params as run (dict, or the list of steps), for the digest
    seed: Union[int, None]
    model: Union[str, None]
    resolved: Union[Resolved, None] = None
    typed: Any = None
    workflow: Union[PreparedWorkflow, None] = None


def _adjust(op: str, params: dict[str, Any], index: int, p: BatchParams, last: bool) -> dict[str, Any]:
    """Seeds assigned (seed_base + index where the item sets none), per-step progress events off
    (the batch reports per item), digests instead of images where the host asked for digests."""
    spec = OPERATIONS_BY_NAME.get(op)
    if spec is None:
        return params
    fields = workflows.param_types(spec.params)
    out = dict(params)
    if p.seed_base is not None and "seed" in fields and "seed" not in out:
        out["seed"] = p.seed_base + index
    if "progress" in fields and "progress" not in out:
        out["progress"] = False
    if last and p.images == "digest" and op == "inference.run" and "output" not in out:
        out["output"] = "digest"
    return out


def _first(params_list: list[dict[str, Any]], name: str) -> Any:
    return next((d[name] for d in params_list if name in d), None)


def prepare(table: OpTable, p: BatchParams) -> list[Item]:
    """Every item resolved and checked, seeds assigned, input images read and verified: a bad item
    is named (by its index) before anything is admitted."""
    if not 1 <= len(p.items) <= MAX_BATCH_ITEMS:
        raise ValueError(f"a batch needs 1..{MAX_BATCH_ITEMS} items, got {len(p.items)}")
    if p.images == "shm" and not p.include_results:
        raise ValueError("images 'shm' needs include_results: the host takes each image from its item's result")
    indices = p.indices if p.indices is not None else list(range(len(p.items)))
    if len(indices) != len(p.items):
        raise ValueError(f"indices has {len(indices)} entries for {len(p.items)} items")
    if len(set(indices)) != len(indices) or min(indices) < 0:
        raise ValueError("indices must be distinct and >= 0")
    checked: set[str] = set()
    items = []
    for i, raw in enumerate(p.items):
        index = indices[i]
        where = f"batch item {index}"
        if (raw.op is None) == (raw.steps is None):
            raise ValueError(f"{where}: give either op or steps, not {'both' if raw.op else 'neither'}")
        if raw.op is not None:
            params = _adjust(raw.op, raw.params, index, p, last=True)
            resolved = table.resolve(raw.op, where=where)
            typed = workflows.convert(resolved.spec, params, where)
            _check_images(typed, checked, where)
            items.append(Item(index, raw.key, raw.op, params, params.get("seed"), params.get("model"),
                              resolved=resolved, typed=typed))
        else:
            assert raw.steps is not None
            steps = [WorkflowStep(s.op, _adjust(s.op, s.params, index, p, last=False), s.image_param)
                     for s in raw.steps]
            prepared = workflows.prepare(table, steps, where)
            first, resolved = prepared.steps[0]  # later steps' images come from the steps before them
            _check_images(workflows.convert(resolved.spec, first.params, where), checked, where)
            plist = [s.params for s in steps]
            items.append(Item(index, raw.key, "workflow", [codec.to_builtins(s) for s in steps],
                              _first(plist, "seed"), _first(plist, "model"), workflow=prepared))
    return items


def _check_images(typed: Any, checked: set[str], where: str) -> None:
    """Read and verify every input image an item names (once per segment)."""
    for name in typed.__struct_fields__:
        value = getattr(typed, name)
        for v in value if isinstance(value, list) else [value]:
            ref = v.ref if isinstance(v, ImageInput) else v if isinstance(v, ImageRef) else None
            if ref is None or ref.shm in checked:
                continue
            try:
                read(ref, verify=True)
            except ValueError as exc:
                raise ValueError(f"{where}: {name}: {exc}") from None
            checked.add(ref.shm)


class Batch:
    def __init__(self, server: WorkerServer, queue: JobQueue, req: Request, p: BatchParams, items: list[Item],
                 prepare_s: float, window: int) -> None:
        self.server, self.queue, self.rid, self.priority = server, queue, req.id, req.priority
        self.items, self.images, self.window, self.prepare_s = items, p.images, window, prepare_s
        self.include_results = p.include_results
        self.ctx = RequestContext(server, req.id, req.deadline_ms)
        self.results = [BatchItemResult(index=it.index, key=it.key, op=it.op, status="not_run", seed=it.seed,
                                        model=it.model, params_sha256=workflows.params_digest(it.effective))
                        for it in items]
        self._lock = threading.RLock()
        self._next = 0
        self._in_flight: dict[int, Job] = {}
        self._done = 0
        self._answered = False
        self._stopped = ""
        self._timer: Union[threading.Timer, None] = None
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self.ctx.on_cancel = lambda: self.stop("cancelled")
        self.server.track_routed(self.rid, self.ctx)
        remaining = self.ctx.remaining()
        if remaining is not None:
            self._timer = threading.Timer(max(0.0, remaining), self.stop, args=("deadline",))
            self._timer.daemon = True
            self._timer.start()
        self.server.send(Event(event="progress", id=self.rid, data={
            "step": 0, "total": len(self.items), "stage": "admitted", "prepare_s": round(self.prepare_s, 6),
            "window": self.window, "t_s": round(self.queue.now(), 6)}))  # the queue's clock, as in queue.trace
        with self._lock:
            self._feed()

    def _feed(self) -> None:
        """Caller holds the lock: keep ``window`` items in the queue."""
        while not self._stopped and len(self._in_flight) < self.window and self._next < len(self.items):
            pos = self._next
            self._next += 1
            it = self.items[pos]
            ctx = RequestContext(self.server, self.rid, None)  # the batch's timer cancels it at the deadline
            job = Job(f"{self.rid}/{it.index}", it.op, self.priority, ctx, lambda job, it=it: self._work(job, it),
                      lambda job, r, e, pos=pos: self._item_done(pos, job, r, e), counted=False)
            self._in_flight[pos] = job
            try:
                self.queue.admit(job)  # batch items ride on the batch's reservation: always admitted
            except OperationError:  # the queue is closing
                self._in_flight.pop(pos)
                threading.Thread(target=self.stop, args=("shutdown",), daemon=True).start()
                return

    def _work(self, job: Job, it: Item) -> tuple[Any, list[str]]:
        if it.workflow is not None:
            wf = workflows.run(self.server, job.ctx, it.workflow, self.images)
            return wf, list(wf.sha256)
        assert it.resolved is not None
        result = it.resolved.fn(job.ctx, it.typed)
        image = workflows.find_image(result)
        if image is not None:
            if self.images == "digest":
                workflows.release(self.server, image)
            return result, list(image.sha256)
        built = codec.to_builtins(result)
        digests = built.get("sha256") if isinstance(built, dict) else None  # a list (inference) or one digest
        if isinstance(digests, str):
            return result, [digests]
        return result, [d for d in digests if isinstance(d, str)] if isinstance(digests, list) else []

    def _item_done(self, pos: int, job: Job, outcome: Any, exc: Union[BaseException, None]) -> None:
        with self._lock:
            self._in_flight.pop(pos, None)
            if self._answered:
                return  # stopped and answered: this item is already listed for resubmission
            r = self.results[pos]
            r.queue_s = round((job.started or job.ended) - job.enqueued, 6)
            r.run_s = round(job.ended - job.started, 6) if job.slot >= 0 else 0.0
            if exc is None:
                result, digests = outcome
                r.status, r.sha256 = "ok", digests
                if self.include_results:
                    r.result = codec.to_builtins(result)
            elif job.slot < 0 and isinstance(exc, (Cancelled, DeadlineExceeded, OperationError)):
                r.status = "not_run"
                r.code, r.message = describe_error(exc)
            else:
                r.status = "cancelled" if isinstance(exc, Cancelled) else "error"
                r.code, r.message = describe_error(exc)
            self._done += 1
            self.server.send(Event(event="progress", id=self.rid, data={
                "step": self._done, "total": len(self.items), "item": codec.to_builtins(r)}))
            self._feed()
            finished = self._done == len(self.items)
        if finished:
            self._answer(self._stopped)  # the last in-flight item of a stopping batch may end it first

    def stop(self, reason: str) -> None:
        with self._lock:
            if self._answered or self._stopped:
                return
            self._stopped = reason
            in_flight = list(self._in_flight.items())
        for pos, job in in_flight:
            if not self.queue.take_queued(job, "cancelled", Cancelled()):
                job.ctx.cancel()  # running: it stops at its next check; listed as cancelled now
                with self._lock:
                    r = self.results[pos]
                    if r.status == "not_run":
                        r.status, r.code = "cancelled", ErrorCode.CANCELLED
                        r.message = f"batch stopped ({reason}) while the item ran"
        self._answer(reason)

    def _answer(self, reason: str) -> None:
        with self._lock:
            if self._answered:
                return
            self._answered = True
            results = list(self.results)
        if self._timer is not None:
            self._timer.cancel()
        self.queue.release(self.window)
        self.server.untrack_routed(self.rid)
        counts = {s: sum(1 for r in results if r.status == s) for s in ("ok", "error", "cancelled", "not_run")}
        pending = [r.index for r in results if r.status in ("cancelled", "not_run")]
        aggregate = hashlib.sha256(msgspec.json.encode([[r.index, r.status, r.sha256] for r in results])).hexdigest()
        out = BatchResult(len(results), counts["ok"], counts["error"], counts["cancelled"], counts["not_run"],
                          not pending, reason, results, pending, self.prepare_s, time.perf_counter() - self._t0,
                          aggregate)
        self.server.send(Response(id=self.rid, ok=True, result=codec.to_builtins(out)))
