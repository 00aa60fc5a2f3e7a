"""Host-side errors: every failed request surfaces as one of these, never silently."""

from __future__ import annotations

from typing import Union

from workers.protocol.messages import ErrorCode, ErrorInfo, RequestId


class WorkerError(Exception):
    """A request failed: the worker answered with an error, or the host gave up on it."""

    def __init__(self, code: str, message: str, retryable: bool = False,
                 request_id: Union[RequestId, None] = None, op: str = "",
                 retry_after_s: Union[float, None] = None) -> None:
        self.code = code
        self.retry_after_s = retry_after_s  # QUEUE_FULL: when to try again
        self.message = message
        self.retryable = retryable
        self.request_id = request_id
        self.op = op
        where = f" ({op} #{request_id})" if op else ""
        super().__init__(f"{code}{where}: {message}")

    @classmethod
    def from_info(cls, info: ErrorInfo, request_id: RequestId, op: str) -> WorkerError:
        return cls(info.code, info.message, info.retryable, request_id, op, info.retry_after_s)


class WorkerLost(WorkerError):
    """The worker died, hung or closed its pipe while the request was in flight."""

    def __init__(self, message: str, request_id: Union[RequestId, None] = None, op: str = "") -> None:
        super().__init__(ErrorCode.WORKER_LOST, message, True, request_id, op)


class RequestTimeout(WorkerError):
    def __init__(self, message: str, request_id: Union[RequestId, None] = None, op: str = "") -> None:
        super().__init__(ErrorCode.TIMEOUT, message, True, request_id, op)


class WorkerStartError(WorkerError):
    """The worker could not be spawned, or never completed the handshake."""

    def __init__(self, message: str, code: str = ErrorCode.WORKER_START_FAILED) -> None:
        super().__init__(code, message, False)


class NoWorkerAvailable(WorkerError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NO_WORKER_AVAILABLE, message, True)
