"""Host-side device routing: least-loaded placement, failover, CPU-only degradation, reintegration.

The worker announces device changes as status events; the router keeps its view of which
devices may take work from those events and from the errors work comes back with. A request
whose device is lost under it (DEVICE_LOST) or refuses it (DEVICE_UNAVAILABLE) is sent to another
device; when no accelerator is left, work goes to the fallback device (the CPU): degraded, not
failed. A reconnected or restored device takes work again from the next request on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from workers.host.client import WorkerClient
from workers.host.errors import WorkerError
from workers.protocol.messages import ErrorCode, Event

log = logging.getLogger(__name__)

FAILOVER_CODES = (ErrorCode.DEVICE_LOST, ErrorCode.DEVICE_UNAVAILABLE)


@dataclass
class DeviceView:
    name: str
    state: str = "online"  # online, draining, lost
    in_flight: int = 0
    completed: int = 0
    lost_at: Union[float, None] = None  # when the router learned the device was gone (monotonic)
    lost_via: str = ""  # "event" or the error code that told it first
    back_at: Union[float, None] = None  # when it was taken back


@dataclass
class RoutedResult:
    result: dict[str, Any]
    device: str  # where it finally ran
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (device, error code) that failed first
    degraded: bool = False  # ran on the fallback because no accelerator was online

    @property
    def failed_over(self) -> bool:
        return bool(self.attempts)


class NoDeviceAvailable(WorkerError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NO_WORKER_AVAILABLE, message, retryable=True)


class DeviceRouter:
    def __init__(self, client: WorkerClient, devices: Sequence[str], *, fallback: Union[str, None] = "cpu",
                 max_attempts: int = 4) -> None:
        if not devices:
            raise ValueError("DeviceRouter needs at least one device")
        self.client = client
        self.fallback = fallback
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        self.views: dict[str, DeviceView] = {name: DeviceView(name) for name in devices}
        self.order = list(devices)  # preference: the first online device is the primary
        self.primary: Union[str, None] = self.order[0]
        self.promotions: list[tuple[float, str, Union[str, None]]] = []  # (monotonic, old primary, new)
        self.dispatches: list[tuple[float, str, str]] = []  # (monotonic, device, role) per request sent
        self.changes: list[tuple[float, dict[str, Any]]] = []  # (monotonic, event data) as received
        client.on_status(self._on_status)

    # ---- the router's view ------------------------------------------------------------------
    def _on_status(self, ev: Event) -> None:
        data = ev.data
        if data.get("domain") != "device" or data.get("kind") != "change":
            return
        now = time.monotonic()
        name, change = data.get("device"), data.get("change")
        with self._lock:
            self.changes.append((now, dict(data)))
            if change == "added" and name not in self.views:
                self.views[name] = DeviceView(name)
                self.order.append(name)
                if self.primary is None:
                    self.primary = name
                return
            view = self.views.get(name)
            if view is None:
                return
            if change in ("removed", "disconnected"):
                self._mark_lost(view, now, "event")
                if change == "removed":
                    del self.views[name]
                    self.order.remove(name)
            elif change == "draining":
                view.state = "draining"
            elif change in ("reconnected", "restored"):
                view.state, view.back_at = "online", now

    def _mark_lost(self, view: DeviceView, now: float, via: str) -> None:
        if view.state != "lost":
            view.state, view.lost_at, view.lost_via = "lost", now, via
        if view.name == self.primary:  # promote the next online device, without an operator
            nxt = next((n for n in self.order if n in self.views and self.views[n].state == "online"), None)
            self.promotions.append((now, view.name, nxt))
            self.primary = nxt

    def online(self) -> list[str]:
        with self._lock:
            return [v.name for v in self.views.values() if v.state == "online"]

    def view(self, name: str) -> Union[DeviceView, None]:
        with self._lock:
            return self.views.get(name)

    def _choose(self, exclude: set[str], role: str) -> tuple[str, bool]:
        with self._lock:
            if role == "primary" and self.primary is not None and self.primary not in exclude \
                    and self.views[self.primary].state == "online":
                self.views[self.primary].in_flight += 1
                return self.primary, False
            candidates = [v for v in self.views.values() if v.state == "online" and v.name not in exclude]
            if candidates:
                best = min(candidates, key=lambda v: (v.in_flight, v.completed))
                best.in_flight += 1
                return best.name, False
        if self.fallback is not None:
            return self.fallback, True
        raise NoDeviceAvailable(f"no device online among {sorted(self.views)} and no fallback")

    def _done(self, name: str, ok: bool) -> None:
        with self._lock:
            view = self.views.get(name)
            if view is not None:
                view.in_flight = max(0, view.in_flight - 1)
                view.completed += int(ok)

    # ---- work -----------------------------------------------------------------------------------
    def run(self, params: dict[str, Any], *, timeout: float = 60.0, device: Union[str, None] = None,
            role: str = "any") -> RoutedResult:
        """Run ``device.run`` with ``params`` (minus the device) on a chosen device, failing over:
        on ``device`` first if given, on the primary for ``role="primary"``, else the least loaded."""
        attempts: list[tuple[str, str]] = []
        tried: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            if device is not None and not attempts:
                name, degraded = device, False
                with self._lock:
                    if name in self.views:
                        self.views[name].in_flight += 1
            else:
                name, degraded = self._choose(tried, role)
            with self._lock:
                self.dispatches.append((time.monotonic(), name, role))
            try:
                result = self.client.request("device.run", {**params, "device": name},
                                             timeout=max(0.1, deadline - time.monotonic()))
            except WorkerError as exc:
                self._done(name, False)
                if exc.code not in FAILOVER_CODES or len(attempts) + 1 >= self.max_attempts:
                    raise
                attempts.append((name, exc.code))
                tried.add(name)
                with self._lock:
                    view = self.views.get(name)
                    if view is not None:
                        if exc.code == ErrorCode.DEVICE_LOST:
                            self._mark_lost(view, time.monotonic(), exc.code)
                        elif view.state == "online":
                            view.state = "draining"
                log.info("device %s refused work (%s); failing over", name, exc.code)
                continue
            self._done(name, True)
            return RoutedResult(result, name, attempts, degraded)
