"""Drivers: fire requests at a target and emit one ``RequestEvent`` per request.

Latency is measured on the monotonic clock from the moment a request was *meant* to start
(its scheduled arrival in open loop), not from when a thread got round to sending it, so a
saturated system shows its queueing delay instead of hiding it (coordinated omission).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Union

from workers.host.errors import WorkerError

Target = Callable[[int], Any]  # called with the request's sequence number; raises on failure


@dataclass(frozen=True)
class RequestEvent:
    seq: int
    user: int  # closed loop: the user; open loop: -1
    scheduled: float  # monotonic time the request was due
    started: float  # monotonic time it was sent
    finished: float
    ok: bool
    error: Union[str, None]  # error code (WorkerError.code) or exception type

    @property
    def latency(self) -> float:
        return self.finished - self.scheduled

    @property
    def service_time(self) -> float:
        return self.finished - self.started


class EventHook:
    """Listeners called for every event, on the thread that finished the request."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[RequestEvent], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Callable[[RequestEvent], None]) -> None:
        self._listeners.append(fn)

    def fire(self, ev: RequestEvent) -> None:
        with self._lock:  # listeners need not be thread-safe
            for fn in self._listeners:
                fn(ev)


def _call(target: Target, seq: int, user: int, scheduled: float, hook: EventHook) -> None:
    started = time.monotonic()
    ok, error = True, None
    try:
        target(seq)
    except WorkerError as exc:
        ok, error = False, exc.code
    except Exception as exc:  # the target's failure is a measurement, not a crash of the driver
        ok, error = False, type(exc).__name__
    hook.fire(RequestEvent(seq, user, scheduled, started, time.monotonic(), ok, error))


def run_closed_loop(target: Target, users: int, ops_per_user: int, hook: EventHook,
                    think_time: float = 0.0) -> float:
    """``users`` threads, each sending ``ops_per_user`` requests back to back; the wall time."""
    if users < 1 or ops_per_user < 1:
        raise ValueError("users and ops_per_user must be at least 1")
    seqs = iter(range(users * ops_per_user))
    seq_lock = threading.Lock()

    def user_loop(user: int) -> None:
        for _ in range(ops_per_user):
            with seq_lock:
                seq = next(seqs)
            now = time.monotonic()
            _call(target, seq, user, now, hook)
            if think_time:
                time.sleep(think_time)

    t0 = time.monotonic()
    threads = [threading.Thread(target=user_loop, args=(u,), name=f"user-{u}") for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


def run_open_loop(target: Target, arrivals: Sequence[float], hook: EventHook, max_in_flight: int = 64,
                  lag_hook: Union[Callable[[float], None], None] = None) -> float:
    """Send one request per arrival offset (seconds from now); at most ``max_in_flight`` run at
    once, the rest wait, and their wait counts in their latency. The wall time until the last
    answer. ``lag_hook`` receives how late each dispatch was against its schedule."""
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="open-loop") as pool:
        for seq, offset in enumerate(sorted(arrivals)):
            due = t0 + offset
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if lag_hook is not None:
                lag_hook(time.monotonic() - due)
            pool.submit(_call, target, seq, -1, due, hook)
    return time.monotonic() - t0
