"""What the device runners share: a worker with simulated devices, a router, and a journalled
closed-loop background load, so every request's fate (result, error, never ended) is on record."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Union

from workers.host.client import WorkerClient
from workers.host.devices import DeviceRouter, RoutedResult
from workers.host.errors import WorkerError

MiB = 1 << 20
SMALL_WORK = {"iterations": 20, "matrix_n": 96}  # a few milliseconds on one CPU core


def sim_specs(n: int, *, prefix: str = "sim:gpu", memory_mib: int = 256, complex_caps: bool = False,
              start: int = 0) -> list[dict[str, Any]]:
    dtypes = (["float32", "float64", "float16", "bfloat16", "int8", "int32", "float8_e4m3fn"]
              if complex_caps else ["float32"])
    return [{"name": f"{prefix}{i}", "memory_bytes": memory_mib * MiB, "backing": "cpu", "dtypes": dtypes,
             "compute_units": 8 if complex_caps else 1} for i in range(start, start + n)]


@dataclass
class JournalEntry:
    seq: int
    submitted: float
    ended: Union[float, None] = None
    device: Union[str, None] = None
    error: Union[str, None] = None
    attempts: list[tuple[str, str]] = field(default_factory=list)


class BackgroundLoad:
    """``clients`` threads sending small inferences through the router back to back until stopped."""

    def __init__(self, router: DeviceRouter, clients: int, work: Union[dict[str, Any], None] = None) -> None:
        self.router = router
        self.work = dict(work or SMALL_WORK)
        self.journal: list[JournalEntry] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"bg-{i}", daemon=True) for i in range(clients)]

    def __enter__(self) -> BackgroundLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                entry = JournalEntry(len(self.journal), time.monotonic())
                self.journal.append(entry)
            try:
                routed = self.router.run(self.work, timeout=30.0)
            except WorkerError as exc:
                entry.error = exc.code
                entry.ended = time.monotonic()
                time.sleep(0.01)  # an erroring system must not be hammered in a tight loop
                continue
            entry.device, entry.attempts, entry.ended = routed.device, routed.attempts, time.monotonic()

    def entries(self) -> list[JournalEntry]:
        with self._lock:
            return list(self.journal)


def wait_for(predicate: Any, timeout: float, interval: float = 0.005) -> Union[float, None]:
    """Poll ``predicate`` until true; the monotonic time it became true, or None at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def start_worker(argv: list[str]) -> WorkerClient:
    return WorkerClient(argv, name="device-worker").start()


def routed_or_error(router: DeviceRouter, params: dict[str, Any], **kw: Any) -> Union[RoutedResult, WorkerError]:
    try:
        return router.run(params, **kw)
    except WorkerError as exc:
        return exc
