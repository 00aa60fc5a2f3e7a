"""A supervised pool of N workers.

- Detects a lost worker: EOF or exit (the client notices), or a hang: no frame and no
  heartbeat for ``missed_heartbeats`` times the interval the worker announced.
- Restarts it with exponential back-off; at most ``max_restarts`` within
  ``restart_window_s``, after which the slot is marked failed. A worker that stayed up for
  ``stable_after_s`` counts as a stable start and resets the back-off (jupyter_client's rule).
- Every request in flight on a lost worker fails with ``WorkerLost``; the pool retries it
  on another worker only when the worker declared the operation idempotent.
- Shutdown escalates per worker: request, SIGTERM, SIGKILL.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from workers.host.client import EventCallback, ShutdownOutcome, WorkerClient
from workers.host.errors import NoWorkerAvailable, WorkerError, WorkerLost, WorkerStartError

log = logging.getLogger("workers.pool")


@dataclass(frozen=True)
class PoolEvent:
    kind: str  # "ready", "lost", "hung", "restart_scheduled", "start_failed", "failed"
    slot: int
    at: float  # monotonic
    detail: str = ""
    pid: Union[int, None] = None


@dataclass
class _Slot:
    index: int
    client: Union[WorkerClient, None] = None
    state: str = "starting"  # starting | ready | restarting | failed | closed
    consecutive_failures: int = 0
    restarts: collections.deque[float] = field(default_factory=collections.deque)
    last_error: str = ""


@dataclass(frozen=True)
class PoolConfig:
    size: int = 1
    missed_heartbeats: int = 3
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    max_restarts: int = 5
    restart_window_s: float = 60.0
    stable_after_s: float = 10.0
    startup_timeout_s: float = 60.0
    retries_for_idempotent: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"pool size must be at least 1, got {self.size}")
        if self.missed_heartbeats < 1:
            raise ValueError("missed_heartbeats must be at least 1")


class WorkerPool:
    def __init__(self, argv: Sequence[str], config: PoolConfig = PoolConfig(), *,
                 env: Union[Mapping[str, str], None] = None, name: str = "pool") -> None:
        self.argv = list(argv)
        self.config = config
        self.name = name
        self._env = env
        self._slots = [_Slot(i) for i in range(config.size)]
        self._cv = threading.Condition()
        self._closed = False
        self._rr = 0
        self.events: list[PoolEvent] = []
        self._listeners: list[Callable[[PoolEvent], None]] = []
        self._supervisor = threading.Thread(target=self._supervise, name=f"{name}-supervisor", daemon=True)

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> WorkerPool:
        """Start every worker (in parallel); raises if none could start."""
        threads = [threading.Thread(target=self._start_slot, args=(s,)) for s in self._slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not any(s.state == "ready" for s in self._slots):
            errors = "; ".join(f"worker {s.index}: {s.last_error}" for s in self._slots)
            self.close()
            raise WorkerStartError(f"no worker of {self.argv!r} could start: {errors}")
        self._supervisor.start()
        return self

    def close(self, request_grace: float = 5.0, term_grace: float = 5.0) -> list[ShutdownOutcome]:
        with self._cv:
            self._closed = True
            clients = [s.client for s in self._slots if s.client is not None]
            for s in self._slots:
                s.state = "closed"
            self._cv.notify_all()
        outcomes: list[ShutdownOutcome] = [ShutdownOutcome("already-exited", None, 0.0)] * len(clients)

        def stop(i: int, c: WorkerClient) -> None:
            outcomes[i] = c.shutdown(request_grace, term_grace)

        threads = [threading.Thread(target=stop, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outcomes

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def subscribe(self, listener: Callable[[PoolEvent], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, kind: str, slot: _Slot, detail: str = "", pid: Union[int, None] = None) -> None:
        ev = PoolEvent(kind, slot.index, time.monotonic(), detail, pid)
        self.events.append(ev)
        for fn in self._listeners:
            try:
                fn(ev)
            except Exception:
                log.exception("pool listener failed")

    def _start_slot(self, slot: _Slot) -> None:
        client = WorkerClient(self.argv, name=f"{self.name}-w{slot.index}", env=self._env,
                              startup_timeout=self.config.startup_timeout_s)
        try:
            client.start()
        except WorkerStartError as exc:
            slot.last_error = exc.message
            self._emit("start_failed", slot, exc.message)
            self._on_slot_down(slot, started_at=None)
            return
        client.on_lost(lambda c, reason, s=slot: self._on_client_lost(s, c, reason))
        with self._cv:
            if self._closed:
                closing = True
            else:
                closing = False
                slot.client = client
                slot.state = "ready"
                self._cv.notify_all()
        if closing:
            client.shutdown()
            return
        self._emit("ready", slot, pid=client.pid)

    # ---- loss and restart ---------------------------------------------------------------
    def _on_client_lost(self, slot: _Slot, client: WorkerClient, reason: str) -> None:
        with self._cv:
            if slot.client is not client or slot.state in ("closed", "failed"):
                return
            slot.state = "restarting"
            slot.last_error = reason
        self._emit("lost", slot, reason, client.pid)
        log.warning("worker %d (pid %s) lost: %s", slot.index, client.pid, reason)
        self._on_slot_down(slot, started_at=client.ready_at)

    def _on_slot_down(self, slot: _Slot, started_at: Union[float, None]) -> None:
        now = time.monotonic()
        with self._cv:
            if self._closed:
                return
            if started_at is not None and now - started_at >= self.config.stable_after_s:
                slot.consecutive_failures = 0  # it had been stable: this is a fresh failure
            slot.consecutive_failures += 1
            while slot.restarts and now - slot.restarts[0] > self.config.restart_window_s:
                slot.restarts.popleft()
            if len(slot.restarts) >= self.config.max_restarts:
                slot.state = "failed"
                detail = (f"restart limit reached: {self.config.max_restarts} restarts within "
                          f"{self.config.restart_window_s:g} s; last error: {slot.last_error}")
                slot.last_error = detail
                self._cv.notify_all()
            else:
                slot.restarts.append(now)
                slot.state = "restarting"
                detail = ""
            delay = min(self.config.backoff_initial_s * 2 ** (slot.consecutive_failures - 1),
                        self.config.backoff_max_s)
        if slot.state == "failed":
            log.error("worker %d failed for good: %s", slot.index, detail)
            self._emit("failed", slot, detail)
            return
        self._emit("restart_scheduled", slot, f"in {delay:.2f} s (attempt {slot.consecutive_failures})")
        timer = threading.Timer(delay, self._start_slot, args=(slot,))
        timer.daemon = True
        timer.start()

    def _supervise(self) -> None:
        while True:
            with self._cv:
                if self._closed:
                    return
                ready = [s for s in self._slots if s.state == "ready" and s.client is not None]
            now = time.monotonic()
            period = 0.5
            for slot in ready:
                c = slot.client
                assert c is not None and c.hello is not None
                interval = c.hello.capabilities.heartbeat_interval_ms / 1e3
                window = interval * self.config.missed_heartbeats
                period = min(period, interval / 2)
                silent_for = now - max(c.last_seen, c.ready_at or 0.0)
                if c.alive and silent_for > window:
                    why = (f"missed {self.config.missed_heartbeats} heartbeats "
                           f"(silent for {silent_for:.2f} s, window {window:.2f} s)")
                    self._emit("hung", slot, why, c.pid)
                    c.kill(reason=f"was hung: {why}")
            time.sleep(period)

    # ---- requests -----------------------------------------------------------------------
    def _acquire(self, deadline: float) -> WorkerClient:
        with self._cv:
            while True:
                if self._closed:
                    raise NoWorkerAvailable("the pool is closed")
                ready = [s for s in self._slots if s.state == "ready" and s.client is not None and s.client.alive]
                if ready:
                    self._rr += 1
                    best = min(ready, key=lambda s: (s.client.in_flight, (s.index - self._rr) % len(self._slots)))
                    assert best.client is not None
                    return best.client
                if all(s.state == "failed" for s in self._slots):
                    raise NoWorkerAvailable(f"every worker failed: {self.describe()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoWorkerAvailable(f"no worker became ready in time: {self.describe()}")
                self._cv.wait(min(remaining, 0.1))

    def request(self, op: str, params: Union[Mapping[str, Any], None] = None, *, timeout: float = 30.0,
                priority: int = 5, on_event: Union[EventCallback, None] = None) -> dict[str, Any]:
        """Run ``op`` on a ready worker; retried after a worker loss only if idempotent."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            client = self._acquire(deadline)
            remaining = max(0.001, deadline - time.monotonic())
            try:
                return client.request(op, params, timeout=remaining, priority=priority, on_event=on_event)
            except WorkerLost as exc:
                info = client.operation_info(op)
                idempotent = bool(info and info.idempotent)
                if not idempotent or attempts >= self.config.retries_for_idempotent:
                    why = "not idempotent" if not idempotent else f"{attempts} retries spent"
                    raise WorkerLost(f"{exc.message} (not retried: {why})", exc.request_id, op) from exc
                attempts += 1
                log.warning("retrying idempotent %s after worker loss (%d/%d)", op, attempts,
                            self.config.retries_for_idempotent)

    # ---- introspection ------------------------------------------------------------------
    def describe(self) -> str:
        parts = []
        for s in self._slots:
            extra = f" ({s.last_error})" if s.last_error and s.state != "ready" else ""
            parts.append(f"worker {s.index} {s.state}{extra}")
        return "; ".join(parts)

    @property
    def clients(self) -> list[WorkerClient]:
        with self._cv:
            return [s.client for s in self._slots if s.client is not None and s.state == "ready"]

    def states(self) -> list[str]:
        with self._cv:
            return [s.state for s in self._slots]

    def wait_ready(self, timeout: float) -> bool:
        """True once every slot is ready (or failed for good) within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while any(s.state in ("starting", "restarting") for s in self._slots):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(min(remaining, 0.05))
        return True


__all__ = ["PoolConfig", "PoolEvent", "WorkerError", "WorkerPool"]
