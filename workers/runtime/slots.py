"""A fixed pool of threads serving a priority queue of requests (model loaders, inference slots).

Priority 0 runs first; equal priorities run in arrival order. Each item is answered through the
server's ``execute`` (so errors map to codes as everywhere else) and registered with the server
for ``cancel``: a queued item is answered CANCELLED when its turn comes without running, a
running one sees the cancellation at its next check.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.protocol.messages import ErrorCode, RequestId
from workers.runtime.context import RequestContext

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer

Work = Callable[[RequestContext, Any, float], Any]  # (ctx, params, queue_s) -> result


@dataclass(order=True)
class _Item:
    priority: int
    seq: int
    rid: RequestId = field(compare=False)
    op: str = field(compare=False)
    ctx: RequestContext = field(compare=False)
    params: Any = field(compare=False)
    work: Work = field(compare=False)
    enqueued: float = field(default_factory=time.monotonic, compare=False)
    timer: threading.Timer | None = field(default=None, compare=False)


class PriorityPool:
    def __init__(self, server: WorkerServer, name: str, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"{name}: a pool needs at least 1 thread, got {threads}")
        self.server, self.name = server, name
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self.running: dict[RequestId, str] = {}
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, rid: RequestId, op: str, priority: int, deadline_ms: float | None, params: Any,
               work: Work) -> None:
        ctx = RequestContext(self.server, rid, deadline_ms)
        with self._cv:
            if self._closed:
                self.server.fail(rid, ErrorCode.SHUTTING_DOWN, f"{self.name} pool is closed", True)
                return
            self.server.track_routed(rid, ctx)
            item = _Item(priority, next(self._seq), rid, op, ctx, params, work)
            heapq.heappush(self._heap, item)
            ctx.on_cancel = lambda it=item: self._cancel_queued(it)
            self._cv.notify()
        if deadline_ms is not None:
            # A request whose deadline passes while it waits for a slot is answered then, not when
            # a slot frees (which may be long after).
            item.timer = threading.Timer(deadline_ms / 1e3, self._expire_queued, args=(item,))
            item.timer.daemon = True
            item.timer.start()

    def _expire_queued(self, item: _Item) -> None:
        self._answer_queued(item, ErrorCode.DEADLINE_EXCEEDED,
                            f"deadline of {item.ctx.budget_ms:g} ms passed while queued for a {self.name} slot", True)

    def _cancel_queued(self, item: _Item) -> bool:
        return self._answer_queued(item, ErrorCode.CANCELLED, "cancelled by the host while queued", False)

    def _answer_queued(self, item: _Item, code: str, message: str, retryable: bool) -> bool:
        """Take a still-queued item out and answer it (True); a running one is left to its own checks."""
        with self._cv:
            if item not in self._heap:
                return False
            self._heap.remove(item)
            heapq.heapify(self._heap)
        self.server.untrack_routed(item.rid)
        self.server.fail(item.rid, code, message, retryable)
        return True

    def queued(self) -> int:
        with self._cv:
            return len(self._heap)

    def close(self, drain: bool) -> None:
        """Stop taking work; queued items are failed unless ``drain``; returns when threads end."""
        with self._cv:
            self._closed = True
            if not drain:
                for item in self._heap:
                    self.server.untrack_routed(item.rid)
                    self.server.fail(item.rid, ErrorCode.SHUTTING_DOWN, f"{self.name} closed before it ran", True)
                self._heap.clear()
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if not self._heap:
                    return
                item = heapq.heappop(self._heap)
                self.running[item.rid] = item.op
            if item.timer is not None:
                item.timer.cancel()  # it runs now; the deadline is checked as it runs
            queue_s = time.monotonic() - item.enqueued
            try:
                self.server.execute(item.rid, item.op, lambda ctx, p, it=item, q=queue_s: it.work(ctx, p, q),
                                    item.ctx, item.params)
            finally:
                self.server.untrack_routed(item.rid)
                with self._cv:
                    self.running.pop(item.rid, None)
