"""The device registry: simulated devices with their state, memory and executors.

A simulated device is a name, a memory size and a real backing device. Its work runs for real
on the backing device (see ``devexec``); its memory manager's budget is its size. State changes
are the spec's device events: hot add and removal, disconnection by hardware, driver or power
failure, reconnection, and draining when its health turns critical (the automatic intervention).
Every change is validated before anything moves, announced through ``announce`` and numbered,
so the host can tell it missed none.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from workers.protocol.messages import ErrorCode
from workers.protocol.ops_devices import SimulatedDeviceSpec
from workers.runtime.context import OperationError

NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
REAL_NAME_RE = re.compile(r"^(cpu|cpu:\d+|cuda:\d+|cuda)$")
HEALTH_KEYS = ("temperature_c", "power_w", "ecc_correctable", "ecc_uncorrectable", "fan_pct")
NOMINAL_HEALTH = {"temperature_c": 45.0, "power_w": 80.0, "ecc_correctable": 0.0, "ecc_uncorrectable": 0.0,
                  "fan_pct": 30.0}


class DeviceState(enum.StrEnum):
    ONLINE = "online"
    DRAINING = "draining"  # health critical: running work finishes, new work is refused
    DISCONNECTED = "disconnected"  # hardware disconnect: gone from enumeration
    DRIVER_ERROR = "driver_error"  # driver failure: enumerated, unusable
    POWERED_OFF = "powered_off"  # power failure: gone, sensors silent

    @property
    def usable(self) -> bool:
        return self is DeviceState.ONLINE

    @property
    def enumerated(self) -> bool:
        return self in (DeviceState.ONLINE, DeviceState.DRAINING, DeviceState.DRIVER_ERROR)


_MODE_STATE = {"hardware_disconnect": DeviceState.DISCONNECTED, "driver_failure": DeviceState.DRIVER_ERROR,
               "power_failure": DeviceState.POWERED_OFF}


@dataclass
class SimulatedDevice:
    spec: SimulatedDeviceSpec
    state: DeviceState = DeviceState.ONLINE
    generation: int = 0  # bumped when the device goes away: work started before sees it
    health: dict[str, float] = field(default_factory=lambda: dict(NOMINAL_HEALTH))
    added_at: float = field(default_factory=time.monotonic)
    disconnect_mode: Union[str, None] = None

    @property
    def name(self) -> str:
        return self.spec.name


def validate_specs(specs: list[SimulatedDeviceSpec], taken: set[str],
                   backing_exists: Callable[[str], bool]) -> None:
    """Raise ValueError naming the first bad entry; nothing is changed by a bad configuration."""
    seen: set[str] = set()
    for i, s in enumerate(specs):
        where = f"device {i} ({s.name!r})"
        if not NAME_RE.match(s.name):
            raise ValueError(f"{where}: name must be 1-64 of letters, digits and ._:-")
        if REAL_NAME_RE.match(s.name):
            raise ValueError(f"{where}: {s.name!r} is a real device's name; simulated devices need their own")
        if s.name in seen or s.name in taken:
            raise ValueError(f"{where}: duplicate device name {s.name!r}")
        seen.add(s.name)
        if s.memory_bytes <= 0:
            raise ValueError(f"{where}: memory_bytes must be > 0, got {s.memory_bytes}")
        if s.compute_units <= 0:
            raise ValueError(f"{where}: compute_units must be > 0, got {s.compute_units}")
        if not backing_exists(s.backing):
            raise ValueError(f"{where}: backing device {s.backing!r} does not exist on this machine")


class DeviceRegistry:
    """Simulated devices by name. Thread-safe: changes arrive on the reader thread while
    device executors run work and the monitor reads health."""

    def __init__(self, *, announce: Callable[[dict[str, Any]], None],
                 backing_exists: Callable[[str], bool]) -> None:
        self._announce = announce
        self._backing_exists = backing_exists
        self._lock = threading.RLock()
        self._devices: dict[str, SimulatedDevice] = {}
        self.change_seq = 0
        # Called with (device, reason) when a device goes away or comes back empty: the
        # runtime fails the device's work and drops its memory (see ops_devices).
        self.on_lost: list[Callable[[SimulatedDevice, str], dict[str, int]]] = []
        self.on_online: list[Callable[[SimulatedDevice], None]] = []

    # ---- queries ---------------------------------------------------------------------
    def get(self, name: str) -> SimulatedDevice:
        with self._lock:
            dev = self._devices.get(name)
        if dev is None:
            raise KeyError(f"unknown simulated device {name!r}; known: {self.names()[:20]}")
        return dev

    def find(self, name: str) -> Union[SimulatedDevice, None]:
        with self._lock:
            return self._devices.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._devices)

    def devices(self) -> list[SimulatedDevice]:
        with self._lock:
            return list(self._devices.values())

    def require_usable(self, name: str, generation: Union[int, None] = None) -> SimulatedDevice:
        """The device, if new work may go to it (``generation`` None), or if work admitted at
        ``generation`` may go on; else DEVICE_LOST / DEVICE_UNAVAILABLE naming the device."""
        with self._lock:
            dev = self._devices.get(name)
            if dev is None:
                raise OperationError(ErrorCode.DEVICE_LOST, f"device {name!r} was removed", retryable=True)
            if generation is not None:  # work already admitted: only losing the device stops it
                if dev.generation != generation:
                    raise OperationError(ErrorCode.DEVICE_LOST, f"device {name!r} was lost under the work "
                                         f"({dev.disconnect_mode or 'reset'})", retryable=True)
                return dev
            if dev.state is DeviceState.DRAINING:
                raise OperationError(ErrorCode.DEVICE_UNAVAILABLE,
                                     f"device {name!r} is draining (health critical)", retryable=True)
            if not dev.state.usable:
                raise OperationError(ErrorCode.DEVICE_LOST, f"device {name!r} is {dev.state}", retryable=True)
            return dev

    # ---- changes -----------------------------------------------------------------------
    def _changed(self, dev: SimulatedDevice, change: str, **extra: Any) -> int:
        self.change_seq += 1
        self._announce({"domain": "device", "kind": "change", "change": change, "device": dev.name,
                        "state": str(dev.state), "seq": self.change_seq, **extra})
        return self.change_seq

    def configure(self, specs: list[SimulatedDeviceSpec]) -> tuple[list[str], list[SimulatedDevice]]:
        with self._lock:
            validate_specs(specs, set(), self._backing_exists)
            removed = list(self._devices)
            for name in removed:
                self.remove(name)
            return removed, [self.add(s)[0] for s in specs]

    def add(self, spec: SimulatedDeviceSpec) -> tuple[SimulatedDevice, int]:
        with self._lock:
            validate_specs([spec], set(self._devices), self._backing_exists)
            dev = SimulatedDevice(spec)
            self._devices[spec.name] = dev
            for hook in self.on_online:
                hook(dev)
            return dev, self._changed(dev, "added", memory_bytes=spec.memory_bytes, backing=spec.backing)

    def remove(self, name: str) -> tuple[int, dict[str, int]]:
        with self._lock:
            dev = self.get(name)
            del self._devices[name]
            dev.generation += 1
            dev.disconnect_mode = "removed"
            released = self._lose(dev, "removed")
            return self._changed(dev, "removed", **released), released

    def disconnect(self, name: str, mode: str) -> tuple[int, dict[str, int]]:
        with self._lock:
            dev = self.get(name)
            if not (dev.state.usable or dev.state is DeviceState.DRAINING):
                raise ValueError(f"device {name!r} is already {dev.state}")
            dev.state = _MODE_STATE[mode]
            dev.disconnect_mode = mode
            dev.generation += 1
            released = self._lose(dev, mode)
            return self._changed(dev, "disconnected", mode=mode, **released), released

    def reconnect(self, name: str) -> int:
        with self._lock:
            dev = self.get(name)
            if dev.state.usable or dev.state is DeviceState.DRAINING:
                raise ValueError(f"device {name!r} is {dev.state}, not disconnected")
            dev.state = DeviceState.ONLINE
            dev.disconnect_mode = None
            dev.health = dict(NOMINAL_HEALTH)
            for hook in self.on_online:
                hook(dev)
            return self._changed(dev, "reconnected")

    def set_health(self, name: str, readings: dict[str, float]) -> SimulatedDevice:
        unknown = sorted(set(readings) - set(HEALTH_KEYS))
        if unknown:
            raise ValueError(f"unknown health readings {unknown}; known: {list(HEALTH_KEYS)}")
        with self._lock:
            dev = self.get(name)
            if dev.state is DeviceState.POWERED_OFF or dev.state is DeviceState.DISCONNECTED:
                raise ValueError(f"device {name!r} is {dev.state}: its sensors do not report")
            dev.health.update({k: float(v) for k, v in readings.items()})
            return dev

    def set_draining(self, name: str, draining: bool, reasons: list[str]) -> Union[int, None]:
        """The automatic intervention: drain a device whose health is critical, restore it when
        it is healthy again. Returns the change's sequence number, or None if nothing changed."""
        with self._lock:
            dev = self._devices.get(name)
            if dev is None:
                return None
            if draining and dev.state is DeviceState.ONLINE:
                dev.state = DeviceState.DRAINING
                return self._changed(dev, "draining", reasons=reasons)
            if not draining and dev.state is DeviceState.DRAINING:
                dev.state = DeviceState.ONLINE
                return self._changed(dev, "restored")
            return None

    def _lose(self, dev: SimulatedDevice, reason: str) -> dict[str, int]:
        totals: dict[str, int] = {}
        for hook in self.on_lost:
            for k, v in hook(dev, reason).items():
                totals[k] = totals.get(k, 0) + v
        return totals
