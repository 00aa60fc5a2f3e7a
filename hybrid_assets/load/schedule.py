"""Arrival schedules for open-loop load: offsets in seconds from the start, seeded.

Open loop is what users do: they arrive whether or not the system kept up. A closed loop
(N users waiting for their answers) hides queueing delay, so both shapes exist.
"""

from __future__ import annotations

import random


def poisson_arrivals(rate: float, duration: float, seed: int = 0, start: float = 0.0) -> list[float]:
    """Arrival offsets of a Poisson process of ``rate`` per second over ``duration`` seconds."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    rng = random.Random(seed)
    out: list[float] = []
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= start + duration:
            return out
        out.append(t)


def burst_arrivals(base_rate: float, multiplier: float, duration: float, burst_start: float,
                   burst_duration: float, seed: int = 0) -> list[float]:
    """Poisson arrivals at ``base_rate``, with ``multiplier`` times that rate inside the burst
    window (the spec's 2.4: bursts of 10x to 500x over a baseline)."""
    if multiplier < 1:
        raise ValueError(f"a burst multiplies the base rate by at least 1, got {multiplier}")
    if not 0 <= burst_start < duration or burst_duration <= 0:
        raise ValueError("the burst window must start inside the run and last > 0 s")
    burst_end = min(duration, burst_start + burst_duration)
    pieces = []
    if burst_start > 0:
        pieces += poisson_arrivals(base_rate, burst_start, seed)
    pieces += poisson_arrivals(base_rate * multiplier, burst_end - burst_start, seed + 1, start=burst_start)
    if burst_end < duration:
        pieces += poisson_arrivals(base_rate, duration - burst_end, seed + 2, start=burst_end)
    return pieces


def uniform_arrivals(rate: float, duration: float) -> list[float]:
    """Evenly spaced arrivals: for ramps, where the step's rate matters more than its noise."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be > 0")
    n = int(rate * duration)
    return [i / rate for i in range(n)]
