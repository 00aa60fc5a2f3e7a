"""Step the offered load up until the system degrades, and report the knee.

The spec's 2.5 ("gradually increase inference load until degradation", steps of 10 to 500
per minute) asks for the highest load the system sustains. A step is degraded when its
error rate, its p95 latency against the first step's, or its achieved throughput against
the offered rate crosses a limit; the knee is the last healthy step before the first
degraded one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from hybrid_assets.load.driver import EventHook, Target, run_open_loop
from hybrid_assets.load.schedule import poisson_arrivals
from hybrid_assets.load.stats import LoadStats, LoadSummary


@dataclass(frozen=True)
class DegradationLimits:
    latency_factor: float = 2.0  # p95 over this many times the first step's p95
    max_error_rate: float = 0.01
    min_throughput_ratio: float = 0.9  # achieved / offered


@dataclass(frozen=True)
class StepResult:
    offered_rps: float
    summary: LoadSummary
    degraded: bool
    reason: str


@dataclass(frozen=True)
class RampResult:
    steps: list[StepResult]
    knee_rps: Union[float, None]  # None: even the first step degraded
    saturated: bool  # True when a degraded step was reached; False: the knee is above the last step


def judge_steps(offered: Sequence[float], summaries: Sequence[LoadSummary],
                limits: DegradationLimits = DegradationLimits(),
                arrived: Union[Sequence[float], None] = None) -> RampResult:
    """``arrived``: the rates that really arrived (a short Poisson step offers more or less
    than its nominal rate); throughput is judged against them when given."""
    steps: list[StepResult] = []
    baseline = summaries[0].latency_s.get("p95") if summaries else None
    knee: Union[float, None] = None
    for i, (rate, s) in enumerate(zip(offered, summaries, strict=True)):
        came = arrived[i] if arrived is not None else rate
        reasons = []
        if s.error_rate > limits.max_error_rate:
            reasons.append(f"error rate {s.error_rate:.3f} > {limits.max_error_rate:g}")
        p95 = s.latency_s.get("p95")
        if baseline and p95 is not None and p95 > limits.latency_factor * baseline:
            reasons.append(f"p95 {p95 * 1e3:.1f} ms > {limits.latency_factor:g}x baseline {baseline * 1e3:.1f} ms")
        if s.throughput_rps < limits.min_throughput_ratio * came:
            reasons.append(f"throughput {s.throughput_rps:.1f}/s < {limits.min_throughput_ratio:g}x "
                           f"the {came:.1f}/s that arrived")
        steps.append(StepResult(rate, s, bool(reasons), "; ".join(reasons)))
        if reasons:
            return RampResult(steps, knee, True)
        knee = rate
    return RampResult(steps, knee, False)


def run_ramp(target: Target, rates: Sequence[float], step_duration_s: float, *, seed: int = 0,
             max_in_flight: int = 64, limits: DegradationLimits = DegradationLimits()) -> RampResult:
    """Open-loop Poisson load at each rate in turn; stops after the first degraded step."""
    if not rates or any(b <= a for a, b in itertools.pairwise(rates)):
        raise ValueError(f"rates must be a non-empty increasing sequence, got {list(rates)}")
    offered: list[float] = []
    arrived: list[float] = []
    summaries: list[LoadSummary] = []
    for i, rate in enumerate(rates):
        stats = LoadStats()
        hook = EventHook()
        hook.subscribe(stats.on_event)
        arrivals = poisson_arrivals(rate, step_duration_s, seed + i)
        wall = run_open_loop(target, arrivals, hook, max_in_flight)
        offered.append(rate)
        arrived.append(len(arrivals) / step_duration_s)
        # Throughput over the step, or over the drain if answers came late: late is slower.
        summaries.append(stats.summary(max(wall, step_duration_s)))
        result = judge_steps(offered, summaries, limits, arrived)
        if result.saturated:
            return result
    return judge_steps(offered, summaries, limits, arrived)
