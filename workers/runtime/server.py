"""The worker process: handshake, dispatch, a priority work queue, heartbeats.

Threads:
- the reader (main thread) decodes frames; a bad frame is answered with a protocol error
  and logged, never fatal; control operations (ping, status, cancel, shutdown) are served
  right there, ahead of queued work;
- one executor runs work operations one at a time, most urgent first (pipelines are not
  thread-safe, and a GPU runs one job at a time anyway);
- a heartbeat thread reports liveness every interval, so the host can tell a busy worker
  from a hung one.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Union

import msgspec

from workers.protocol import codec
from workers.protocol.codec import DecodeFailure
from workers.protocol.framing import FrameReader, FrameWriter
from workers.protocol.messages import (
    PROTOCOL_VERSION,
    Capabilities,
    ErrorCode,
    ErrorInfo,
    Event,
    Hello,
    OperationInfo,
    Request,
    RequestId,
    Response,
    StatusResult,
)
from workers.protocol.operations import DOMAINS, OPERATIONS, CancelResult, ShutdownResult
from workers.protocol.opspec import OperationSpec
from workers.runtime import handlers
from workers.runtime.context import Cancelled, DeadlineExceeded, OperationError, RequestContext

log = logging.getLogger("workers.server")

# Domain modules: each defines work_handlers(server) and may define control_handlers(server) (served
# on the reader thread) and routed_handlers(server) (work on the domain's own executor).
# The core handlers, then one module per protocol domain (workers.protocol.operations.DOMAINS).
DOMAIN_MODULES = (handlers, *(importlib.import_module(f"workers.runtime.ops_{d}") for d in DOMAINS))


@dataclass
class WorkerConfig:
    worker_id: str = field(default_factory=lambda: f"w-{uuid.uuid4().hex[:8]}")
    heartbeat_interval_s: float = 1.0
    max_frame_bytes: int = 1 << 20
    allow_fault_injection: bool = False
    latency_s: float = 0.0  # injected delay before every answer (fault injection only)


@dataclass(order=True)
class _Queued:
    priority: int
    seq: int
    request: Request = field(compare=False)
    spec: OperationSpec = field(compare=False)
    params: Any = field(compare=False)
    ctx: RequestContext = field(compare=False)
    answered: bool = field(default=False, compare=False)  # cancelled while queued


class WorkerServer:
    def __init__(self, config: WorkerConfig, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.config = config
        self.stop_hooks: list[Callable[[bool], None]] = []  # called with drain=True on EOF
        self.memory: dict[str, Any] = {}  # device -> MemoryManager (memory.configure, simulated devices)
        self._reader = FrameReader(stdin, config.max_frame_bytes)
        self._writer = FrameWriter(stdout)
        self._ops: dict[str, OperationSpec] = {
            s.name: s for s in OPERATIONS if config.allow_fault_injection or not s.fault
        }
        self._work: dict[str, Callable[[RequestContext, Any], Any]] = {}
        self._control_handlers: dict[str, Callable[[Any], Any]] = {}
        # Work that runs on a domain's own executor (a device's), not the shared queue; the
        # router answers it itself, through ``execute``.
        self._routed: dict[str, Callable[[Request, Any], None]] = {}
        for module in DOMAIN_MODULES:
            self._work.update(module.work_handlers(self))
            self._control_handlers.update(getattr(module, "control_handlers", lambda _s: {})(self))
            self._routed.update(getattr(module, "routed_handlers", lambda _s: {})(self))
        self._routed_ctx: dict[RequestId, RequestContext] = {}  # routed work in flight, for cancel
        self._queue: list[_Queued] = []
        self._queued_ids: dict[RequestId, _Queued] = {}
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._running: Union[_Queued, None] = None
        self._stopping = False
        self._drain = False  # on EOF queued work still runs; on shutdown it is refused
        self._started = time.monotonic()
        self._handled = 0
        self.protocol_errors = 0
        # fault.freeze holds this to stop the heartbeat and the reader: a hung worker.
        self.freeze_lock = threading.Lock()

    # ---- output -------------------------------------------------------------------

    def work_table(self) -> dict[str, Callable[[RequestContext, Any], Any]]:
        """A copy of the work handlers by operation name (workflows call them in-process)."""
        return dict(self._work)
    def send(self, message: msgspec.Struct) -> None:
        try:
            self._writer.write(codec.encode(message))
        except (BrokenPipeError, ValueError, OSError):
            # The host is gone; nothing to tell it. The reader sees EOF and we exit.
            self._stopping = True

    def write_raw(self, data: bytes) -> None:
        """Bytes onto the protocol stream unframed (fault injection only: fault.corrupt_output)."""
        self._writer.write_raw(data)

    def _error(self, rid: Union[RequestId, None], code: str, message: str, retryable: bool = False,
               retry_after_s: Union[float, None] = None) -> None:
        self.send(Response(id=rid, ok=False, error=ErrorInfo(code=code, message=message, retryable=retryable,
                                                             retry_after_s=retry_after_s)))

    def progress(self, rid: RequestId, step: int, total: int, message: str = "") -> None:
        data: dict[str, Any] = {"step": step, "total": total}
        if message:
            data["message"] = message
        self.send(Event(event="progress", id=rid, data=data))

    # ---- main loop ----------------------------------------------------------------
    def hello(self) -> Hello:
        ops = [OperationInfo(name=s.name, idempotent=s.idempotent, control=s.control,
                             description=s.description) for s in self._ops.values()]
        return Hello(
            protocol=PROTOCOL_VERSION, worker_id=self.config.worker_id, pid=os.getpid(),
            capabilities=Capabilities(
                operations=ops, max_frame_bytes=self.config.max_frame_bytes,
                heartbeat_interval_ms=self.config.heartbeat_interval_s * 1e3,
                fault_injection=self.config.allow_fault_injection,
                runtime={"implementation": "python", "version": platform.python_version()},
            ),
        )

    def serve(self) -> int:
        """Run until shutdown or EOF on stdin; the exit status."""
        self.send(self.hello())
        # Warnings and errors also travel to the host as log events (stderr keeps everything).
        logging.getLogger().addHandler(_ProtocolLogHandler(self))
        executor = threading.Thread(target=self._execute_loop, name="executor", daemon=True)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        executor.start()
        heartbeat.start()
        while not self._stopping:
            frame = self._reader.read()
            with self.freeze_lock:
                pass  # a frozen worker does not read either
            if frame is None:
                log.info("stdin closed: finishing queued work, then exiting")
                self._begin_stop(drain=True)
                break
            self._on_frame(frame)
        else:
            self._begin_stop(drain=False)
        executor.join()
        for hook in self.stop_hooks:
            hook(self._drain)
        return 0

    def _on_frame(self, frame: Any) -> None:
        if self.config.latency_s:
            time.sleep(self.config.latency_s)
        decoded = codec.decode_request(frame, self.config.max_frame_bytes)
        if isinstance(decoded, DecodeFailure):
            self.protocol_errors += 1
            log.warning("protocol error %s: %s", decoded.code, decoded.message)
            self._error(decoded.id, decoded.code, decoded.message)
            return
        req = decoded
        spec = self._ops.get(req.op)
        if spec is None:
            hint = " (fault operations need --allow-fault-injection)" if req.op.startswith("fault.") else ""
            self._error(req.id, ErrorCode.UNKNOWN_OPERATION, f"unknown operation {req.op!r}{hint}")
            return
        if not 0 <= req.priority <= 9:
            self._error(req.id, ErrorCode.INVALID_MESSAGE, f"priority must be 0..9, got {req.priority}")
            return
        if req.deadline_ms is not None and req.deadline_ms <= 0:
            self._error(req.id, ErrorCode.INVALID_MESSAGE, f"deadline_ms must be > 0, got {req.deadline_ms}")
            return
        try:
            params = codec.convert_params(req.params, spec.params)
        except msgspec.ValidationError as exc:
            self._error(req.id, ErrorCode.INVALID_PARAMS, f"invalid params for {req.op!r}: {exc}")
            return
        if spec.control:
            self._control(req, spec, params)
            return
        if spec.name in self._routed:
            with self._cv:
                stopping = self._stopping
                duplicate = req.id in self._routed_ctx or req.id in self._queued_ids
            if stopping:
                self._error(req.id, ErrorCode.SHUTTING_DOWN, "worker is shutting down", retryable=True)
                return
            if duplicate:
                self._error(req.id, ErrorCode.DUPLICATE_ID, f"request id {req.id!r} is already in flight")
                return
            self._routed[spec.name](req, params)
            return
        self._enqueue(req, spec, params)

    # ---- control operations (reader thread) --------------------------------------------
    def _control(self, req: Request, spec: OperationSpec, params: Any) -> None:
        if spec.name == "ping":
            self.send(Response(id=req.id, ok=True, result={"payload": params.payload}))
        elif spec.name == "status":
            self.send(Response(id=req.id, ok=True, result=codec.to_builtins(self.status())))
        elif spec.name == "cancel":
            state = self._cancel(params.target)
            self.send(Response(id=req.id, ok=True, result=codec.to_builtins(CancelResult(params.target, state))))
        elif spec.name == "shutdown":
            log.info("shutdown requested: %s", params.reason or "(no reason)")
            self.send(Response(id=req.id, ok=True, result=codec.to_builtins(ShutdownResult(True))))
            self._stopping = True
        else:
            # Domain control operations (hot add/remove, disconnection) must reach the runtime while
            # the executor is busy: that is the moment they describe.
            try:
                result = self._control_handlers[spec.name](params)
            except (ValueError, KeyError) as exc:
                self._error(req.id, ErrorCode.INVALID_PARAMS, f"{spec.name}: {exc.args[0] if exc.args else exc}")
            except Exception as exc:  # a failing handler must not take the reader down
                log.exception("control operation %s failed", spec.name)
                self._error(req.id, ErrorCode.INTERNAL_ERROR, f"{spec.name} failed: {type(exc).__name__}: {exc}")
            else:
                self.send(Response(id=req.id, ok=True, result=codec.to_builtins(result)))

    def status(self) -> StatusResult:
        with self._cv:
            running = self._running.request.id if self._running else None
            queued = len(self._queue)
        return StatusResult(
            worker_id=self.config.worker_id, pid=os.getpid(),
            uptime_ms=(time.monotonic() - self._started) * 1e3, queued=queued, running=running,
            handled=self._handled, protocol_errors=self.protocol_errors,
        )

    def _cancel(self, target: RequestId) -> str:
        with self._cv:
            item = self._queued_ids.get(target)
            if item is not None and item is not self._running:
                item.ctx.cancel()
                item.answered = True  # answered now, not when its turn comes; the executor skips it
                self._error(target, ErrorCode.CANCELLED, "cancelled by the host while queued")
                return "queued-cancelled"
            if self._running is not None and self._running.request.id == target:
                self._running.ctx.cancel()
                return "running-cancel-requested"
            routed = self._routed_ctx.get(target)
        if routed is not None:  # outside the lock: the executor's hook answers a queued one at once
            return "queued-cancelled" if routed.cancel() else "running-cancel-requested"
        return "unknown"

    def track_routed(self, rid: RequestId, ctx: RequestContext) -> None:
        with self._cv:
            self._routed_ctx[rid] = ctx

    def untrack_routed(self, rid: RequestId) -> None:
        with self._cv:
            self._routed_ctx.pop(rid, None)

    # ---- work queue (executor thread) ------------------------------------------------
    def _enqueue(self, req: Request, spec: OperationSpec, params: Any) -> None:
        with self._cv:
            if self._stopping:
                self._error(req.id, ErrorCode.SHUTTING_DOWN, "worker is shutting down", retryable=True)
                return
            if req.id in self._queued_ids:
                self._error(req.id, ErrorCode.DUPLICATE_ID, f"request id {req.id!r} is already in flight")
                return
            ctx = RequestContext(self, req.id, req.deadline_ms)
            item = _Queued(req.priority, next(self._seq), req, spec, params, ctx)
            heapq.heappush(self._queue, item)
            self._queued_ids[req.id] = item
            self._cv.notify()

    def _execute_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                item = heapq.heappop(self._queue)
                if item.answered:
                    self._queued_ids.pop(item.request.id, None)
                    continue
                if self._stopping and not self._drain:
                    self._queued_ids.pop(item.request.id, None)
                    self._error(item.request.id, ErrorCode.SHUTTING_DOWN,
                                "worker shut down before the request ran", retryable=True)
                    continue
                self._running = item
            try:
                self._run(item)
            finally:
                with self._cv:
                    self._running = None
                    self._queued_ids.pop(item.request.id, None)
                    self._handled += 1

    def _run(self, item: _Queued) -> None:
        self.execute(item.request.id, item.spec.name, self._work[item.spec.name], item.ctx, item.params)

    def execute(self, rid: RequestId, op: str, fn: Callable[[RequestContext, Any], Any], ctx: RequestContext,
                params: Any) -> None:
        """Run one operation and answer it; a failure is answered with its own error code, never fatal.
        Device executors call this too, from their own threads (the writer is thread-safe)."""
        try:
            ctx.check()
            result = fn(ctx, params)
            ctx.check()
        except Cancelled:
            self._error(rid, ErrorCode.CANCELLED, "cancelled by the host")
        except DeadlineExceeded as exc:
            self._error(rid, ErrorCode.DEADLINE_EXCEEDED, str(exc), retryable=True)
        except OperationError as exc:
            self._error(rid, exc.code, exc.message, retryable=exc.retryable, retry_after_s=exc.retry_after_s)
        except (ValueError, KeyError) as exc:  # the request named something wrong: say what
            self._error(rid, ErrorCode.INVALID_PARAMS, f"{op}: {exc.args[0] if exc.args else exc}")
        except Exception as exc:  # a failing handler must not take the worker down
            log.exception("operation %s failed", op)
            self._error(rid, ErrorCode.INTERNAL_ERROR, f"{op} failed: {type(exc).__name__}: {exc}")
        else:
            self.send(Response(id=rid, ok=True, result=codec.to_builtins(result)))

    def fail(self, rid: RequestId, code: str, message: str, retryable: bool = False,
             retry_after_s: Union[float, None] = None) -> None:
        self._error(rid, code, message, retryable, retry_after_s)

    def _begin_stop(self, drain: bool) -> None:
        with self._cv:
            self._stopping = True
            self._drain = drain
            self._cv.notify_all()

    # ---- heartbeat --------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        seq = 0
        interval = self.config.heartbeat_interval_s
        while not self._stopping:
            time.sleep(interval)
            with self.freeze_lock:
                pass
            seq += 1
            with self._cv:
                busy = self._running is not None
                queued = len(self._queue)
            self.send(Event(event="heartbeat", data={
                "seq": seq, "uptime_ms": round((time.monotonic() - self._started) * 1e3, 1),
                "busy": busy, "queued": queued,
            }))


class _ProtocolLogHandler(logging.Handler):
    def __init__(self, server: WorkerServer) -> None:
        super().__init__(level=logging.WARNING)
        self._server = server

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the worker
            message = str(record.msg)
        self._server.send(Event(event="log", data={"level": record.levelname, "logger": record.name,
                                                   "message": message[:2000]}))
