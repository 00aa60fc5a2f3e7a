"""One executor per device: its own queue and thread, so devices work in parallel.

The shared work queue serialises everything a worker does; a runtime with several devices
must not, or a busy device would leave the others idle. Each device (real or simulated) gets a
thread and a FIFO queue when work first arrives for it. Losing a device fails its queued work at
once with DEVICE_LOST and makes its running work fail at the next step (the workload checks the
device's generation between steps), so nothing waits on a device that is gone.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from workers.protocol.messages import ErrorCode, RequestId
from workers.runtime.context import RequestContext

log = logging.getLogger(__name__)

Run = Callable[[RequestContext, Any], Any]


@dataclass
class _Item:
    rid: RequestId
    ctx: RequestContext
    params: Any
    enqueued: float = field(default_factory=time.monotonic)


class DeviceExecutor:
    def __init__(self, device: str, execute: Callable[[RequestId, str, Run, RequestContext, Any], None],
                 fail: Callable[[RequestId, str, str, bool], None], run: Run,
                 untrack: Callable[[RequestId], None] = lambda rid: None) -> None:
        self.device = device
        self._execute, self._fail, self._run_fn, self._untrack = execute, fail, run, untrack
        self._queue: collections.deque[_Item] = collections.deque()
        self._cv = threading.Condition()
        self._running: Union[_Item, None] = None
        self._closed = False
        self._thread: Union[threading.Thread, None] = None
        self.completed = 0
        self.busy_s = 0.0  # time spent running work: the device's utilisation over a window
        self.models: dict[str, Any] = {}  # loaded models: name -> allocation ids or tensors

    # ---- queue ---------------------------------------------------------------------------
    def submit(self, rid: RequestId, ctx: RequestContext, params: Any) -> None:
        with self._cv:
            if self._closed:
                self._fail(rid, ErrorCode.SHUTTING_DOWN, "worker is shutting down", True)
                return
            item = _Item(rid, ctx, params)
            self._queue.append(item)
            ctx.on_cancel = lambda it=item: self._cancel_queued(it)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"device-{self.device}", daemon=True)
                self._thread.start()
            self._cv.notify()

    def depth(self) -> tuple[int, bool]:
        """(queued, running): the device's load as the router sees it."""
        with self._cv:
            return len(self._queue), self._running is not None

    def fail_all(self, message: str) -> int:
        """Fail queued work now and the running item at its next step; how many requests failed."""
        with self._cv:
            queued = list(self._queue)
            self._queue.clear()
            running = self._running
        for item in queued:
            item.ctx.cancel()
            self._fail(item.rid, ErrorCode.DEVICE_LOST, message, True)
        return len(queued) + (1 if running is not None else 0)

    def _cancel_queued(self, item: _Item) -> bool:
        with self._cv:
            try:
                self._queue.remove(item)
            except ValueError:
                return False  # already running (it sees the cancellation at its next step) or done
        self._untrack(item.rid)
        self._fail(item.rid, ErrorCode.CANCELLED, "cancelled by the host while queued", False)
        return True

    def close(self, drain: bool, timeout: float = 30.0) -> None:
        """Stop taking work. With a grace ``timeout`` (shutdown), running work still going after
        it is cancelled and answered SHUTTING_DOWN; with none (a lost device) the running item
        fails by itself with DEVICE_LOST at its next step."""
        with self._cv:
            self._closed = True
            if not drain:
                queued = list(self._queue)
                self._queue.clear()
            else:
                queued = []
            self._cv.notify_all()
            thread = self._thread
        for item in queued:
            self._fail(item.rid, ErrorCode.SHUTTING_DOWN, "worker shut down before the request ran", True)
        if thread is not None:
            thread.join(timeout)
            with self._cv:
                running = self._running
            if timeout > 0 and thread.is_alive() and running is not None:
                # Still running after the grace period: stop it at its next step and answer it now,
                # so the host is never left waiting on a worker that is exiting.
                running.ctx.cancel()
                self._fail(running.rid, ErrorCode.SHUTTING_DOWN,
                           f"worker shut down while the request was still running after {timeout:g} s", True)

    # ---- thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._running = item
            item.ctx.queued_s = time.monotonic() - item.enqueued  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            try:
                self._execute(item.rid, "device.run", self._run_fn, item.ctx, item.params)
            finally:
                self._untrack(item.rid)
                with self._cv:
                    self._running = None
                    self.completed += 1
                    self.busy_s += time.perf_counter() - t0
