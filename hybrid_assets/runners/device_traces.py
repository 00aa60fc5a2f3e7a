"""Labelled synthetic device health traces, and scoring predictions against their labels.

A trace is the sensor readings of one device, one reading per assessment, up to the moment its
outcome is known: *failing* traces end just before a failure (a thermal runaway, or correctable
memory errors accumulating before an uncorrectable one); *healthy* traces are noisy but
stationary, with hard negatives a predictor may confuse with a failure (a brief warm spike that
returns, a step to a hotter steady workload, one burst of correctable errors that does not grow).

The traces model sensors, not the runtime's predictor: temperatures follow an AR(1) noise around
a per-device baseline, error counters are Poisson counts, and rates, onsets and amplitudes are
drawn from wide ranges with a seeded RNG. The only limit used is the runtime's critical
temperature, and only to cut a runaway at the reading where the device has failed: a prediction
must come before that.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Union

CRITICAL_TEMPERATURE_C = 90.0  # where a thermal runaway has become the failure itself (health.py's critical limit)
FAILING_PATTERNS = ("thermal_ramp", "ecc_accumulation")
HEALTHY_PATTERNS = ("stationary", "warm_spike", "load_step", "ecc_burst")
HEALTHY_WEIGHTS = (0.45, 0.25, 0.15, 0.15)


@dataclass
class Trace:
    trace_id: int
    failing: bool
    pattern: str
    readings: list[dict[str, float]] = field(default_factory=list)


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method: fine for the small rates of error counters."""
    if lam <= 0:
        return 0
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


class _Sensors:
    """One device's sensors: baseline temperature with AR(1) noise, power and fan following it,
    and a cumulative correctable-error counter."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.base = rng.uniform(48.0, 72.0)
        self.noise_sd = rng.uniform(0.4, 1.6)
        self.phi = rng.uniform(0.3, 0.8)  # sensor readings are correlated over consecutive samples
        self.noise = 0.0
        self.ecc = float(_poisson(rng, 3.0))  # a counter since boot: rarely zero on a long-lived device
        self.ecc_rate = rng.uniform(0.0, 0.03)  # correctable errors per reading on a healthy device
        self.power_base = rng.uniform(150.0, 320.0)

    def read(self, offset_c: float = 0.0, extra_ecc: float = 0.0) -> dict[str, float]:
        rng = self.rng
        self.noise = self.phi * self.noise + rng.gauss(0.0, self.noise_sd * math.sqrt(1 - self.phi ** 2))
        temp = self.base + offset_c + self.noise
        self.ecc += _poisson(rng, self.ecc_rate) + extra_ecc
        power = self.power_base + 2.5 * (temp - self.base) + rng.gauss(0.0, 6.0)
        fan = min(100.0, max(20.0, 30.0 + 1.8 * (temp - 45.0) + rng.gauss(0.0, 2.0)))
        return {"temperature_c": round(temp, 2), "power_w": round(power, 1), "ecc_correctable": self.ecc,
                "ecc_uncorrectable": 0.0, "fan_pct": round(fan, 1)}


def _thermal_ramp(rng: random.Random, s: _Sensors, length: int) -> list[dict[str, float]]:
    onset = rng.randint(int(0.25 * length), int(0.6 * length))
    target = rng.uniform(86.0, 100.0)  # where the runaway would be by the end of the trace
    curve = rng.uniform(1.0, 2.0)  # 1: linear; >1: accelerating, as cooling falls behind
    out = []
    for i in range(length):
        frac = max(0.0, (i - onset) / (length - 1 - onset))
        out.append(s.read(offset_c=(target - s.base) * frac ** curve))
    return out


def _ecc_accumulation(rng: random.Random, s: _Sensors, length: int) -> list[dict[str, float]]:
    onset = rng.randint(int(0.2 * length), int(0.6 * length))
    end_rate = rng.uniform(0.3, 2.5)  # correctable errors per reading just before the failure
    out = []
    for i in range(length):
        frac = max(0.0, (i - onset) / (length - 1 - onset))
        out.append(s.read(extra_ecc=float(_poisson(rng, end_rate * frac))))
    return out


def _warm_spike(rng: random.Random, s: _Sensors, length: int) -> list[dict[str, float]]:
    rise, hold, fall = rng.randint(1, 3), rng.randint(1, 4), rng.randint(2, 5)
    amplitude = min(rng.uniform(6.0, 18.0), 86.0 - s.base)  # a healthy device does not reach critical
    start = rng.randint(int(0.2 * length), length - (rise + hold + fall) - 3)
    out = []
    for i in range(length):
        k = i - start
        if k < 0 or k >= rise + hold + fall:
            level = 0.0
        elif k < rise:
            level = (k + 1) / rise
        elif k < rise + hold:
            level = 1.0
        else:
            level = 1.0 - (k - rise - hold + 1) / fall
        out.append(s.read(offset_c=amplitude * level))
    return out


def _load_step(rng: random.Random, s: _Sensors, length: int) -> list[dict[str, float]]:
    step = min(rng.uniform(4.0, 12.0), 84.0 - s.base)
    at = rng.randint(int(0.2 * length), int(0.8 * length))
    ramp = rng.randint(1, 4)  # heats up to the new steady state over a few readings
    return [s.read(offset_c=step * min(1.0, max(0.0, (i - at + 1) / ramp))) for i in range(length)]


def _ecc_burst(rng: random.Random, s: _Sensors, length: int) -> list[dict[str, float]]:
    at = rng.randint(int(0.2 * length), length - 2)
    size = float(rng.randint(2, 7))
    return [s.read(extra_ecc=size if i == at else 0.0) for i in range(length)]


_GENERATORS = {"thermal_ramp": _thermal_ramp, "ecc_accumulation": _ecc_accumulation, "stationary":
               lambda rng, s, n: [s.read() for _ in range(n)], "warm_spike": _warm_spike, "load_step": _load_step,
               "ecc_burst": _ecc_burst}


def generate_traces(count: int, failing_fraction: float, seed: int, length: int = 40) -> list[Trace]:
    """``count`` traces, ``round(count * failing_fraction)`` of them failing, in shuffled order."""
    if count <= 0:
        raise ValueError(f"traces must be > 0, got {count}")
    if not 0.0 <= failing_fraction <= 1.0:
        raise ValueError(f"failing_fraction must be within [0, 1], got {failing_fraction}")
    if length < 20:
        raise ValueError(f"trace length must be >= 20 readings, got {length}")
    rng = random.Random(seed)
    n_failing = round(count * failing_fraction)
    patterns = [rng.choice(FAILING_PATTERNS) for _ in range(n_failing)]
    patterns += rng.choices(HEALTHY_PATTERNS, HEALTHY_WEIGHTS, k=count - n_failing)
    rng.shuffle(patterns)
    traces = []
    for i, pattern in enumerate(patterns):
        readings = _GENERATORS[pattern](rng, _Sensors(rng), length)
        traces.append(Trace(i, pattern in FAILING_PATTERNS, pattern, cut_at_failure(readings)))
    return traces


def cut_at_failure(readings: list[dict[str, float]]) -> list[dict[str, float]]:
    """The readings before the first one at which the device has failed (critical temperature)."""
    for i, r in enumerate(readings):
        if r["temperature_c"] >= CRITICAL_TEMPERATURE_C:
            return readings[:i]
    return readings


@dataclass(frozen=True)
class Score:
    correct: bool
    false_alarm: bool  # predicted a failure on a healthy device
    missed: bool  # no prediction on a failing device


def score(failing: bool, predicted: bool) -> Score:
    return Score(correct=failing == predicted, false_alarm=predicted and not failing, missed=failing and not predicted)


def summarise(scores: list[tuple[Trace, Score]]) -> dict[str, Union[float, int]]:
    """Accuracy over all traces, false-alarm rate over healthy ones, miss rate over failing ones."""
    failing = [s for t, s in scores if t.failing]
    healthy = [s for t, s in scores if not t.failing]
    return {"traces": len(scores), "accuracy": sum(s.correct for _, s in scores) / len(scores) if scores else 0.0,
            "false_alarm_rate": sum(s.false_alarm for s in healthy) / len(healthy) if healthy else 0.0,
            "miss_rate": sum(s.missed for s in failing) / len(failing) if failing else 0.0,
            "failing": len(failing), "healthy": len(healthy)}
