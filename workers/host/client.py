"""A host-side client for one worker process.

It spawns the worker, completes the handshake, sends requests and matches replies by id,
routes events (progress to the request's callback, heartbeats to liveness), and fails
every request still in flight with an explicit ``WorkerLost`` when the worker goes away.
Shutdown escalates: a shutdown request, then SIGTERM, then SIGKILL.

All deadlines use the monotonic clock.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from workers.host.errors import RequestTimeout, WorkerError, WorkerLost, WorkerStartError
from workers.protocol import codec
from workers.protocol.codec import DecodeFailure
from workers.protocol.framing import FrameDecoder, FrameWriter
from workers.protocol.messages import (
    PROTOCOL_VERSION,
    ErrorCode,
    Event,
    Hello,
    Request,
    RequestId,
    Response,
)

log = logging.getLogger("workers.host")

EventCallback = Callable[[Event], None]

# Worker messages are small (results of work go through shared memory); the host still
# allows more than a worker accepts so that a big discovery result is never cut.
HOST_MAX_FRAME_BYTES = 16 << 20


class PendingRequest:
    """A request in flight; ``result()`` waits for its one answer."""

    __slots__ = ("_done", "_error", "_gate", "_result", "id", "on_event", "op", "sent_at")

    def __init__(self, rid: RequestId, op: str, on_event: Union[EventCallback, None]) -> None:
        self.id = rid
        self.op = op
        self.sent_at = time.monotonic()
        # A held lock, released once on resolve: a tenth of the cost of a threading.Event,
        # which matters on a path that costs tens of microseconds in all.
        self._gate = threading.Lock()
        self._gate.acquire()
        self._done = False
        self._result: Union[dict[str, Any], None] = None
        self._error: Union[WorkerError, None] = None
        self.on_event = on_event

    def _resolve(self, result: Union[dict[str, Any], None], error: Union[WorkerError, None]) -> None:
        if self._done:
            return
        self._result, self._error = result, error
        self._done = True
        try:
            self._gate.release()
        except RuntimeError:  # resolved twice at once (a loss racing an answer): the first won
            pass

    @property
    def done(self) -> bool:
        return self._done

    def wait(self, timeout: Union[float, None]) -> bool:
        if self._done:
            return True
        if self._gate.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._gate.release()  # let any other waiter through too
        return self._done

    def result(self) -> dict[str, Any]:
        """The result of a finished request; raises its error."""
        if not self._done:
            raise RuntimeError("request still in flight")
        if self._error is not None:
            raise self._error
        return self._result or {}


@dataclass(frozen=True)
class ShutdownOutcome:
    how: str  # "request", "sigterm", "sigkill" or "already-exited"
    exit_code: Union[int, None]
    seconds: float


class WorkerClient:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "worker",
        env: Union[Mapping[str, str], None] = None,
        startup_timeout: float = 60.0,
        cwd: Union[str, None] = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self._env = dict(os.environ if env is None else env)
        self._startup_timeout = startup_timeout
        self._cwd = cwd
        self._proc: Union[subprocess.Popen[bytes], None] = None
        self._writer: Union[FrameWriter, None] = None
        self._pending: dict[RequestId, PendingRequest] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._hello_ready = threading.Event()
        self.hello: Union[Hello, None] = None
        self._lost_reason: Union[str, None] = None
        self._kill_reason: str = ""
        self._read_lock = threading.Lock()
        self._decoder = FrameDecoder(HOST_MAX_FRAME_BYTES)
        self._stdout_fd = -1
        self._eof = False
        self._eof_handled = False
        self._last_sync = 0.0
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._lost_callbacks: list[Callable[[WorkerClient, str], None]] = []
        self.spawned_at: Union[float, None] = None
        self.ready_at: Union[float, None] = None
        self.last_seen: float = time.monotonic()
        self.last_heartbeat: Union[float, None] = None
        self.protocol_errors = 0  # frames from the worker that were not valid messages
        self.late_responses = 0  # answers to requests the host had already given up on
        self.unmatched_errors: list[str] = []  # worker errors with no request id
        self.status_events: collections.deque[Event] = collections.deque(maxlen=10000)  # e.g. memory pressure
        self._status_listeners: list[Callable[[Event], None]] = []

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> WorkerClient:
        """Spawn and wait for the handshake; raises ``WorkerStartError`` naming the cause."""
        self.spawned_at = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self._env, cwd=self._cwd, bufsize=0, start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise WorkerStartError(f"worker command not found: {self.argv[0]!r} ({exc.strerror})") from exc
        except PermissionError as exc:
            raise WorkerStartError(f"worker command is not executable: {self.argv[0]!r}") from exc
        except OSError as exc:
            raise WorkerStartError(f"cannot start worker {self.argv!r}: {exc}") from exc
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._writer = FrameWriter(self._proc.stdin)
        self._stdout_fd = self._proc.stdout.fileno()
        threading.Thread(target=self._read_loop, name=f"{self.name}-reader", daemon=True).start()
        threading.Thread(target=self._stderr_loop, name=f"{self.name}-stderr", daemon=True).start()
        deadline = self.spawned_at + self._startup_timeout
        while not self._hello_ready.wait(0.05):
            if self._lost_reason is not None:
                break
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerStartError(
                    f"worker {self.argv!r} sent no handshake within {self._startup_timeout:g} s"
                    f"{self._stderr_hint()}"
                )
        if self.hello is None:
            self._proc.wait(timeout=5)
            raise WorkerStartError(
                f"worker {self.argv!r} exited before the handshake ({self._lost_reason}){self._stderr_hint()}"
            )
        if self.hello.protocol != PROTOCOL_VERSION:
            self.kill()
            raise WorkerStartError(
                f"worker speaks protocol {self.hello.protocol}, host speaks {PROTOCOL_VERSION}",
                code=ErrorCode.PROTOCOL_MISMATCH,
            )
        self.ready_at = time.monotonic()
        return self

    @property
    def pid(self) -> Union[int, None]:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._lost_reason is None

    @property
    def exit_code(self) -> Union[int, None]:
        return self._proc.poll() if self._proc else None

    @property
    def lost_reason(self) -> Union[str, None]:
        return self._lost_reason

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def operation_info(self, op: str) -> Any:
        if self.hello is None:
            return None
        return next((o for o in self.hello.capabilities.operations if o.name == op), None)

    def on_status(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for every status event, on the thread that read it: keep it short."""
        self._status_listeners.append(listener)

    def on_lost(self, callback: Callable[[WorkerClient, str], None]) -> None:
        self._lost_callbacks.append(callback)

    # ---- requests --------------------------------------------------------------------
    def submit(
        self,
        op: str,
        params: Union[Mapping[str, Any], None] = None,
        *,
        deadline_ms: Union[float, None] = None,
        priority: int = 5,
        on_event: Union[EventCallback, None] = None,
    ) -> PendingRequest:
        """Send a request; its ``PendingRequest`` resolves with the answer or an explicit error."""
        rid = next(self._ids)
        pending = PendingRequest(rid, op, on_event)
        frame = codec.encode(Request(id=rid, op=op, params=dict(params or {}),
                                     deadline_ms=deadline_ms, priority=priority))
        limit = self.hello.capabilities.max_frame_bytes if self.hello else None
        if limit is not None and len(frame) > limit:
            # The worker would answer FRAME_TOO_LARGE without an id; fail it here, by name.
            pending._resolve(None, WorkerError(ErrorCode.FRAME_TOO_LARGE,
                                               f"request of {len(frame)} bytes exceeds the worker's limit of "
                                               f"{limit} bytes", False, rid, op))
            return pending
        with self._lock:
            if self._lost_reason is not None or self._writer is None:
                pending._resolve(None, WorkerLost(f"{self.name} is not running: {self._lost_reason}", rid, op))
                return pending
            self._pending[rid] = pending
        try:
            self._writer.write(frame)
        except (BrokenPipeError, OSError, ValueError) as exc:
            self._fail_pending(rid, WorkerLost(f"{self.name}: cannot write to worker stdin ({exc})", rid, op))
            # The link is unusable: say so now, so a pool stops handing this client out before its
            # reader sees the end of the stream.
            self._mark_lost(f"its stdin cannot be written ({exc})")
        return pending

    def request(
        self,
        op: str,
        params: Union[Mapping[str, Any], None] = None,
        *,
        timeout: float = 30.0,
        priority: int = 5,
        on_event: Union[EventCallback, None] = None,
    ) -> dict[str, Any]:
        """Send and wait. The worker gets ``timeout`` as its deadline; the host waits a little
        longer for the worker's own DEADLINE_EXCEEDED, then gives up, cancels and raises."""
        pending = self.submit(op, params, deadline_ms=timeout * 1e3, priority=priority, on_event=on_event)
        if not self._wait_reading(pending, timeout + min(1.0, 0.1 * timeout + 0.05)):
            self._abandon(pending)
            raise RequestTimeout(f"no answer within {timeout:g} s", pending.id, op)
        return pending.result()

    def _wait_reading(self, pending: PendingRequest, timeout: float) -> bool:
        """Wait for ``pending``, reading the pipe in this thread when nobody else is.

        Handing each answer from a reader thread to the caller costs a thread wake-up, which
        on this kind of machine is as much as the whole round trip. So a waiting caller takes
        the read role itself; the background reader steps aside while callers are active."""
        deadline = time.monotonic() + timeout
        # While another caller holds the read role, it dispatches our answer too (the wait wakes at
        # once); we only poll to take the role over when it leaves. The poll backs off from 2 to
        # 10 ms, so dozens of waiting threads do not starve the worker of CPU with wake-ups.
        poll = self._POLL_MIN_S
        try:
            while not pending.done:
                self._last_sync = time.monotonic()
                remaining = deadline - self._last_sync
                if remaining <= 0:
                    return False
                if self._eof:
                    return pending.wait(min(remaining, 5.0))  # the loss is being reported
                if self._read_lock.acquire(blocking=False):
                    poll = self._POLL_MIN_S
                    try:
                        if not self._pump(min(remaining, 0.05)):
                            break
                    finally:
                        self._read_lock.release()
                else:
                    pending.wait(min(remaining, poll))
                    poll = min(poll * 2, self._POLL_MAX_S)
        finally:
            self._last_sync = time.monotonic()
        if self._eof and not pending.done:
            self._finish_eof()  # or another thread is finishing it: the loss resolves pending
            return pending.wait(max(0.0, deadline - time.monotonic()))
        return pending.done

    def _abandon(self, pending: PendingRequest) -> None:
        with self._lock:
            self._pending.pop(pending.id, None)
        if self.alive:
            try:
                self.submit("cancel", {"target": pending.id})
            except WorkerError:
                pass

    def _fail_pending(self, rid: RequestId, error: WorkerError) -> None:
        with self._lock:
            pending = self._pending.pop(rid, None)
        if pending is not None:
            pending._resolve(None, error)

    # ---- reading ------------------------------------------------------------------------
    # One thread at a time holds the read role (``_read_lock``): the background reader
    # while the client is idle or used asynchronously, a synchronous caller while it waits
    # for its answer. Whoever reads dispatches every frame to whom it belongs.
    _PARK_S = 0.02  # the background reader stays off the pipe this long after a caller read
    _POLL_MIN_S = 0.002  # a waiting caller's first poll for the read role
    _POLL_MAX_S = 0.01

    def _read_loop(self) -> None:
        while not self._eof:
            if time.monotonic() - self._last_sync < self._PARK_S:
                time.sleep(self._PARK_S / 2)
                continue
            if not self._read_lock.acquire(timeout=self._PARK_S):
                continue
            try:
                self._pump(self._PARK_S)
            finally:
                self._read_lock.release()
        self._finish_eof()

    def _pump(self, timeout: float) -> bool:
        """Read what the pipe has (waiting at most ``timeout``) and dispatch it; False at EOF.
        The caller holds ``_read_lock``."""
        if self._eof:
            return False
        try:
            readable, _, _ = select.select([self._stdout_fd], [], [], timeout)
            if not readable:
                return True
            data = os.read(self._stdout_fd, 65536)
        except (OSError, ValueError) as exc:
            log.warning("%s: stdout read failed: %s", self.name, exc)
            data = b""
        if data:
            frames = self._decoder.feed(data)
        else:
            frames = self._decoder.finish()
            self._eof = True
        for frame in frames:
            self._dispatch(frame)
        return not self._eof

    def _finish_eof(self) -> None:
        with self._lock:
            if self._eof_handled:
                return
            self._eof_handled = True
        exit_desc = self._describe_exit()
        self._mark_lost(f"{self._kill_reason} and {exit_desc}" if self._kill_reason else exit_desc)
        self._close_pipes()

    def _close_pipes(self) -> None:
        """A lost worker's pipes are closed, or every replacement leaks descriptors. stdout is
        closed under the read role, so nobody selects on a number the kernel may reuse."""
        assert self._proc is not None
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
        with self._read_lock:
            if self._proc.stdout is not None and not self._proc.stdout.closed:
                self._proc.stdout.close()

    def _dispatch(self, frame: Any) -> None:
        self.last_seen = time.monotonic()
        msg = codec.decode_worker_message(frame)
        if isinstance(msg, DecodeFailure):
            self.protocol_errors += 1
            log.warning("%s: not a protocol message (%s): %s", self.name, msg.code, msg.message)
        elif isinstance(msg, Response):
            self._on_response(msg)
        elif isinstance(msg, Event):
            self._on_event(msg)
        elif isinstance(msg, Hello):
            if self.hello is None:
                self.hello = msg
                self._hello_ready.set()
            else:
                self.protocol_errors += 1
                log.warning("%s: second handshake ignored", self.name)

    def _on_response(self, msg: Response) -> None:
        if msg.id is None:
            detail = f"{msg.error.code}: {msg.error.message}" if msg.error else "?"
            self.unmatched_errors.append(detail)
            log.warning("%s: worker reported a protocol error: %s", self.name, detail)
            return
        with self._lock:
            pending = self._pending.pop(msg.id, None)
        if pending is None:
            self.late_responses += 1
            return
        if msg.ok:
            pending._resolve(msg.result or {}, None)
        else:
            info = msg.error
            if info is None:
                pending._resolve(None, WorkerError(ErrorCode.INVALID_MESSAGE, "error response without error",
                                                   False, msg.id, pending.op))
            else:
                pending._resolve(None, WorkerError.from_info(info, msg.id, pending.op))

    def _on_event(self, ev: Event) -> None:
        if ev.event == "heartbeat":
            self.last_heartbeat = time.monotonic()
        elif ev.event == "log":
            log.log(_level(ev.data.get("level")), "%s: %s", self.name, ev.data.get("message", ""))
        elif ev.event == "status":
            self.status_events.append(ev)
            if ev.data.get("kind") != "health":  # health ticks every second: too chatty for the log
                log.info("%s status: %s", self.name, ev.data)
            for listener in self._status_listeners:
                try:
                    listener(ev)
                except Exception:  # a listener must not kill the reader
                    log.exception("%s: status listener failed", self.name)
        elif ev.id is not None:
            with self._lock:
                pending = self._pending.get(ev.id)
            if pending is not None and pending.on_event is not None:
                try:
                    pending.on_event(ev)
                except Exception:  # a caller's callback must not kill the reader
                    log.exception("%s: event callback failed", self.name)

    def _stderr_loop(self) -> None:
        assert self._proc and self._proc.stderr
        for raw in iter(self._proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("%s stderr: %s", self.name, line)
        self._proc.stderr.close()

    def _describe_exit(self) -> str:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "closed its stdout but is still running"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"

    def _stderr_hint(self) -> str:
        time.sleep(0.05)  # let the stderr thread catch the last lines
        tail = [line for line in list(self._stderr_tail)[-8:] if line.strip()]
        return ("; stderr: " + " | ".join(tail)) if tail else ""

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            if self._lost_reason is not None:
                return
            self._lost_reason = reason
            pending, self._pending = list(self._pending.values()), {}
        # Supervisors first: by the time a caller sees WORKER_LOST, its pool already knows the
        # worker is gone and will not hand the dead client out again.
        for cb in self._lost_callbacks:
            try:
                cb(self, reason)
            except Exception:
                log.exception("%s: on_lost callback failed", self.name)
        for p in pending:
            p._resolve(None, WorkerLost(f"{self.name} (pid {self.pid}) {reason} with the request in flight",
                                        p.id, p.op))
        if pending:
            log.warning("%s %s: failed %d in-flight request(s)", self.name, reason, len(pending))

    # ---- fault injection (from outside the protocol) -----------------------------------------
    def close_stdin(self) -> None:
        """Close the worker's stdin: it finishes queued work and exits; later requests fail."""
        if self._writer is not None:
            self._writer.close()

    def write_raw(self, data: bytes) -> None:
        """Write bytes onto the worker's stdin unframed, as damage in transit would."""
        if self._writer is None:
            raise WorkerLost(f"{self.name} is not running")
        self._writer.write_raw(data)

    def break_pipe(self) -> None:
        """Sever both pipes at the host's end at once, as a broken stdin/stdout link would: the host
        loses the link now (in-flight requests fail WORKER_LOST), the worker sees EOF and EPIPE."""
        if self._proc is None:
            raise WorkerLost(f"{self.name} is not running")
        self._kill_reason = "the stdin/stdout pipe broke"
        with self._read_lock:
            self._eof = True  # before the close: nobody may select on a number the kernel reuses
            if self._proc.stdout is not None and not self._proc.stdout.closed:
                self._proc.stdout.close()
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
        # Report the loss now, whoever holds the read role (it waits for the exit status).
        threading.Thread(target=self._finish_eof, name=f"{self.name}-broken", daemon=True).start()

    # ---- shutdown ------------------------------------------------------------------------
    def kill(self, reason: str = "") -> None:
        """SIGKILL, at once (a hung worker); in-flight requests fail as the pipe closes,
        with ``reason`` as the explanation they carry."""
        if reason:
            self._kill_reason = reason
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def shutdown(self, request_grace: float = 5.0, term_grace: float = 5.0) -> ShutdownOutcome:
        """Ask, then SIGTERM, then SIGKILL; each step waits its grace on the monotonic clock."""
        t0 = time.monotonic()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return ShutdownOutcome("already-exited", proc.poll() if proc else None, 0.0)
        how = "request"
        if self._lost_reason is None:
            self.submit("shutdown", {"reason": "host shutdown"})
        try:
            proc.wait(timeout=request_grace)
        except subprocess.TimeoutExpired:
            how = "sigterm"
            proc.terminate()
            try:
                proc.wait(timeout=term_grace)
            except subprocess.TimeoutExpired:
                how = "sigkill"
                proc.kill()
                proc.wait(timeout=10)
        if self._writer is not None:
            try:
                self._writer.close()  # under the writer's lock, not behind its back
            except OSError:
                pass
        return ShutdownOutcome(how, proc.returncode, time.monotonic() - t0)

    def __enter__(self) -> WorkerClient:
        return self if self.hello else self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _level(name: Any) -> int:
    return getattr(logging, str(name or "INFO").upper(), logging.INFO)
