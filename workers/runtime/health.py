"""Device health: assessment against limits, failure prediction from trends, and the monitor.

Assessment is a pure function of one reading, so a critical sensor value alerts the moment it is
reported (a simulated device's sensors report through ``devices.set_health``; real devices are
read by the monitor each tick). Prediction looks at the recent trend: a temperature rising
towards the critical limit, or correctable memory errors accumulating, are the usual precursors
of a device failure. The monitor thread samples every device each interval and sends one health
event per tick; the CPU time it spends is measured and reported, so its overhead is a figure.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthLimits:
    temperature_warning_c: float = 83.0
    temperature_critical_c: float = 90.0
    power_critical_w: float = 450.0
    memory_critical: float = 0.95  # utilisation of the device's memory budget
    # prediction
    window: int = 8  # readings the trend is fitted over
    horizon: int = 10  # readings ahead the temperature trend is projected
    min_slope_c: float = 0.4  # per reading: below this a rise is noise
    ecc_growth: float = 4.0  # correctable errors gained over the window


def assess(readings: dict[str, float], memory_utilisation: float,
           limits: HealthLimits = HealthLimits()) -> tuple[str, list[str]]:
    """("healthy" | "warning" | "critical", reasons) for one set of readings."""
    reasons: list[str] = []
    status = "healthy"
    temp = readings.get("temperature_c")
    if readings.get("ecc_uncorrectable", 0.0) > 0:
        reasons.append(f"{readings['ecc_uncorrectable']:g} uncorrectable memory errors")
        status = "critical"
    if temp is not None and temp >= limits.temperature_critical_c:
        reasons.append(f"temperature {temp:.1f} C >= {limits.temperature_critical_c:g} C")
        status = "critical"
    if readings.get("power_w", 0.0) >= limits.power_critical_w:
        reasons.append(f"power {readings['power_w']:.0f} W >= {limits.power_critical_w:g} W")
        status = "critical"
    if memory_utilisation >= limits.memory_critical:
        reasons.append(f"memory {memory_utilisation:.0%} of budget >= {limits.memory_critical:.0%}")
        status = "critical"
    if status == "healthy" and temp is not None and temp >= limits.temperature_warning_c:
        reasons.append(f"temperature {temp:.1f} C >= {limits.temperature_warning_c:g} C")
        status = "warning"
    return status, reasons


class FailurePredictor:
    """Per-device trend over the last ``window`` readings."""

    def __init__(self, limits: HealthLimits = HealthLimits()) -> None:
        self.limits = limits
        self._history: dict[str, collections.deque[tuple[float, float]]] = {}

    def forget(self, device: str) -> None:
        self._history.pop(device, None)

    def observe(self, device: str, readings: dict[str, float]) -> tuple[bool, list[str]]:
        lim = self.limits
        h = self._history.setdefault(device, collections.deque(maxlen=lim.window))
        h.append((readings.get("temperature_c", 0.0), readings.get("ecc_correctable", 0.0)))
        if len(h) < lim.window:
            return False, []
        temps = [t for t, _ in h]
        slope = _slope(temps)
        reasons = []
        projected = temps[-1] + slope * lim.horizon
        if slope >= lim.min_slope_c and projected >= lim.temperature_critical_c:
            reasons.append(f"temperature rising {slope:.2f} C/reading, {projected:.0f} C projected")
        growth = h[-1][1] - h[0][1]
        if growth >= lim.ecc_growth:
            reasons.append(f"{growth:g} correctable memory errors in {lim.window} readings")
        return bool(reasons), reasons


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0..n-1."""
    n = len(ys)
    mx = (n - 1) / 2
    my = sum(ys) / n
    den = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / den if den else 0.0


class HealthMonitor:
    """Samples every device each ``interval_s`` and hands one health snapshot to ``emit``."""

    def __init__(self, sample: Callable[[], list[dict[str, Any]]], emit: Callable[[dict[str, Any]], None],
                 interval_s: float = 1.0) -> None:
        self._sample, self._emit = sample, emit
        self.interval_s = interval_s
        self.enabled = False
        self._wake = threading.Event()
        self._stop = False
        self._thread: Union[threading.Thread, None] = None
        self.samples = 0
        self.cost_s = 0.0  # monitor thread CPU time, all ticks

    def configure(self, enabled: bool, interval_s: float) -> None:
        if interval_s < 0.05:
            raise ValueError(f"interval_s must be >= 0.05, got {interval_s}")
        self.enabled, self.interval_s = enabled, interval_s
        if enabled and self._thread is None:
            psutil.cpu_percent(None)  # the first reading only starts psutil's interval
            self._thread = threading.Thread(target=self._loop, name="health-monitor", daemon=True)
            self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def mean_cost_ms(self) -> Union[float, None]:
        return self.cost_s / self.samples * 1e3 if self.samples else None

    def _loop(self) -> None:
        next_tick = time.monotonic() + self.interval_s
        while not self._stop:
            self._wake.wait(max(0.0, next_tick - time.monotonic()))
            if self._wake.is_set():
                self._wake.clear()
                next_tick = time.monotonic() + self.interval_s
                continue  # reconfigured: restart the cadence
            next_tick += self.interval_s
            if not self.enabled:
                continue
            c0 = time.thread_time()
            try:
                devices = self._sample()
            except Exception:  # one failed reading must not end monitoring
                log.exception("health sampling failed")
                continue
            cost = time.thread_time() - c0
            self.samples += 1
            self.cost_s += cost
            self._emit({"domain": "device", "kind": "health", "seq": self.samples,
                        "cost_ms": round(cost * 1e3, 4), "devices": devices})
