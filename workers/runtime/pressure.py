"""Memory pressure levels with hysteresis: each crossing is announced once, never flapping.

The spec's responses (1.4, 3.2): warning and proactive cleanup from 75-80 %, degraded mode from
85-90 %, emergency recovery from 95 %. A level is entered when utilisation reaches its
threshold and left only when utilisation falls ``hysteresis`` below it, so a workload hovering
at 85 % produces one DEGRADED announcement, not one per allocation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union


class PressureLevel(enum.IntEnum):
    NORMAL = 0
    WARNING = 1  # proactive cache cleanup
    DEGRADED = 2  # reduced functionality, user notified
    EMERGENCY = 3  # emergency recovery

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class PressureThresholds:
    warning: float = 0.75
    degraded: float = 0.85
    emergency: float = 0.95
    hysteresis: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.warning < self.degraded < self.emergency <= 1:
            raise ValueError("thresholds must satisfy 0 < warning < degraded < emergency <= 1, got "
                             f"{self.warning}, {self.degraded}, {self.emergency}")
        if not 0 <= self.hysteresis < self.warning:
            raise ValueError(f"hysteresis must be in [0, warning), got {self.hysteresis}")

    def entry(self, level: PressureLevel) -> float:
        return {PressureLevel.WARNING: self.warning, PressureLevel.DEGRADED: self.degraded,
                PressureLevel.EMERGENCY: self.emergency}[level]


Listener = Callable[[PressureLevel, PressureLevel, float], None]  # (old, new, utilisation)


class PressureTracker:
    def __init__(self, thresholds: Union[PressureThresholds, None] = None,
                 listener: Union[Listener, None] = None) -> None:
        self.thresholds = thresholds or PressureThresholds()
        self.level = PressureLevel.NORMAL
        self._listener = listener
        self.transitions: list[tuple[PressureLevel, PressureLevel, float]] = []

    def update(self, utilisation: float) -> PressureLevel:
        """Move to the level ``utilisation`` calls for, announcing a change once."""
        t = self.thresholds
        new = self.level
        # Up: the highest level whose entry threshold is reached.
        for level in (PressureLevel.EMERGENCY, PressureLevel.DEGRADED, PressureLevel.WARNING):
            if utilisation >= t.entry(level):
                new = max(new, level)
                break
        # Down: only once utilisation is hysteresis below the current level's entry.
        while new > PressureLevel.NORMAL and utilisation < t.entry(new) - t.hysteresis:
            new = PressureLevel(new - 1)
        if new != self.level:
            old, self.level = self.level, new
            self.transitions.append((old, new, utilisation))
            if self._listener is not None:
                self._listener(old, new, utilisation)
        return self.level
