"""Host-side view of the worker's device events, timed when the host sees them.

The device runners measure from a host action (or a worker-side condition) to the moment an
event reaches the host. ``DeviceEvents`` subscribes to a ``WorkerClient``'s status events and
stamps each device event with ``time.monotonic()`` on the reading thread, when the listener
sees it; runners wait on it with a predicate instead of polling ``status_events``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from workers.host import WorkerClient
from workers.protocol.messages import Event

MiB = 1 << 20


@dataclass(frozen=True)
class Seen:
    t: float  # time.monotonic() when the host's listener saw the event
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))


class DeviceEvents:
    """Every ``domain: device`` status event of one client, in arrival order."""

    def __init__(self, client: WorkerClient, kinds: Union[set[str], None] = None) -> None:
        self._kinds = kinds
        self._cv = threading.Condition()
        self.events: list[Seen] = []
        client.on_status(self._on_status)

    def _on_status(self, ev: Event) -> None:
        now = time.monotonic()
        data = ev.data
        if data.get("domain") != "device" or (self._kinds is not None and data.get("kind") not in self._kinds):
            return
        with self._cv:
            self.events.append(Seen(now, dict(data)))
            self._cv.notify_all()

    def mark(self) -> int:
        """An index: ``wait_for`` and ``since`` look only at events after it."""
        with self._cv:
            return len(self.events)

    def since(self, start: int, kind: Union[str, None] = None) -> list[Seen]:
        with self._cv:
            return [s for s in self.events[start:] if kind is None or s.kind == kind]

    def wait_for(self, start: int, match: Callable[[Seen], bool], timeout: float) -> Union[Seen, None]:
        """The first event after ``start`` that ``match``es, waiting up to ``timeout`` s; None if none came."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cv:
            while True:
                while i < len(self.events):
                    if match(self.events[i]):
                        return self.events[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)


def sim_specs(n: int, prefix: str = "sim:gpu", memory_bytes: int = 64 * MiB) -> list[dict[str, Any]]:
    """``n`` simulated devices backed by the CPU (the testbed's real device)."""
    return [{"name": f"{prefix}{i}", "memory_bytes": memory_bytes, "backing": "cpu"} for i in range(n)]


def is_change(device: str, change: str) -> Callable[[Seen], bool]:
    return lambda s: s.kind == "change" and s.data.get("device") == device and s.data.get("change") == change
