"""What a running operation sees: its deadline, cancellation, and a progress channel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Union

from workers.protocol.messages import RequestId

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


class Cancelled(Exception):
    pass


class DeadlineExceeded(Exception):
    pass


class OperationError(Exception):
    """A failure the host should see with its own error code (e.g. DEVICE_LOST), not INTERNAL_ERROR."""

    def __init__(self, code: str, message: str, retryable: bool = False,
                 retry_after_s: Union[float, None] = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retryable = code, message, retryable
        self.retry_after_s = retry_after_s


class RequestContext:
    def __init__(self, server: WorkerServer, rid: RequestId, deadline_ms: Union[float, None]) -> None:
        self._server = server
        self.id = rid
        self.received = time.monotonic()
        self.deadline = None if deadline_ms is None else self.received + deadline_ms / 1e3
        self.budget_ms = deadline_ms
        self._cancelled = threading.Event()
        # Set by an executor holding the request in its own queue, so a cancel answers a queued
        # request at once instead of when its turn comes (which may be never, behind long work).
        # It returns True when it answered the request (it was still queued).
        self.on_cancel: Union[Callable[[], Union[bool, None]], None] = None

    def cancel(self) -> bool:
        """Mark the request cancelled; True if an executor answered it at once (still queued)."""
        self._cancelled.set()
        hook = self.on_cancel
        return bool(hook()) if hook is not None else False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def remaining(self) -> Union[float, None]:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise if the host cancelled this request or its deadline has passed."""
        if self._cancelled.is_set():
            raise Cancelled()
        if self.deadline is not None and time.monotonic() > self.deadline:
            late_ms = (time.monotonic() - self.deadline) * 1e3
            raise DeadlineExceeded(f"deadline of {self.budget_ms:g} ms exceeded by {late_ms:.1f} ms")

    def wait(self, seconds: float) -> None:
        """Sleep that wakes on cancel and stops at the deadline."""
        remaining = self.remaining()
        timeout = seconds if remaining is None else max(0.0, min(seconds, remaining))
        self._cancelled.wait(timeout)
        self.check()

    def progress(self, step: int, total: int, message: str = "") -> None:
        self._server.progress(self.id, step, total, message)
