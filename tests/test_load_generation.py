"""Load generation: schedules have the configured rates, drivers count every request,
latency includes queueing, the ramp finds the knee of a system with a known capacity."""

from __future__ import annotations

import math
import threading
import time

import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.load import EventHook, LoadStats, burst_arrivals, poisson_arrivals, run_closed_loop, run_open_loop
from hybrid_assets.load.ramp import DegradationLimits, judge_steps, run_ramp
from hybrid_assets.load.schedule import uniform_arrivals
from workers.host.errors import WorkerError


def hooked() -> tuple[EventHook, LoadStats]:
    hook, stats = EventHook(), LoadStats()
    hook.subscribe(stats.on_event)
    return hook, stats


@pytest.mark.parametrize(("rate", "duration"), [(50.0, 200.0), (1000.0, 10.0)])
def test_poisson_arrivals_have_the_configured_mean_rate(rate: float, duration: float) -> None:
    for seed in range(5):
        n = len(poisson_arrivals(rate, duration, seed))
        expected = rate * duration
        assert abs(n - expected) < 4 * math.sqrt(expected), (seed, n, expected)  # 4 sigma
    a, b = poisson_arrivals(rate, 1.0, seed=7), poisson_arrivals(rate, 1.0, seed=7)
    assert a == b and a == sorted(a) and all(0 <= t < 1.0 for t in a)


def test_burst_multiplies_the_rate_inside_its_window_only() -> None:
    arr = burst_arrivals(base_rate=100, multiplier=10, duration=30, burst_start=10, burst_duration=10, seed=3)
    inside = sum(10 <= t < 20 for t in arr)
    outside = len(arr) - inside
    assert 0.8 * 10000 < inside < 1.2 * 10000 and 0.8 * 2000 < outside < 1.2 * 2000
    with pytest.raises(ValueError, match="at least 1"):
        burst_arrivals(100, 0.5, 10, 1, 1)


def test_closed_loop_counts_every_request_and_error() -> None:
    hook, stats = hooked()

    def target(seq: int) -> None:
        if seq % 10 == 0:
            raise WorkerError("INTERNAL_ERROR", "boom")

    wall = run_closed_loop(target, users=4, ops_per_user=25, hook=hook)
    s = stats.summary(wall)
    assert s.requests == 100 and s.errors == 10 and s.error_rate == pytest.approx(0.1)
    assert s.errors_by_code == {"INTERNAL_ERROR": 10}
    assert sorted(e.seq for e in stats.events) == list(range(100))
    assert {e.user for e in stats.events} == {0, 1, 2, 3}


def test_open_loop_latency_includes_queueing_delay() -> None:
    # One server (max_in_flight=1), 10 ms of service, 20 requests arriving at once:
    # the last one waits for the 19 before it. A closed loop would report 10 ms for all.
    hook, stats = hooked()
    run_open_loop(lambda seq: time.sleep(0.01), [0.0] * 20, hook, max_in_flight=1)
    lat = sorted(e.latency for e in stats.events)
    assert lat[0] < 0.05 and lat[-1] > 0.19
    assert max(e.service_time for e in stats.events) < 0.05


def test_open_loop_keeps_to_its_schedule() -> None:
    hook, stats = hooked()
    lags: list[float] = []
    arrivals = uniform_arrivals(200.0, 1.0)
    wall = run_open_loop(lambda seq: None, arrivals, hook, max_in_flight=8, lag_hook=lags.append)
    assert len(stats.events) == 200 and 0.99 < wall < 1.5
    lags.sort()
    assert lags[len(lags) // 2] < 0.005  # median dispatch within 5 ms of its schedule


def test_summary_flags_too_short_or_too_small_runs() -> None:
    hook, stats = hooked()
    run_closed_loop(lambda seq: None, users=1, ops_per_user=5, hook=hook)
    s = stats.summary(0.01, min_duration_s=1.0, min_samples=10)
    assert not s.valid and "at least 1 s" in s.invalid_reason and "at least 10" in s.invalid_reason
    rec = Recorder()
    stats.record_into(rec, "ping", users=1)
    assert len(rec.values("ping_latency_s")) == 5 and rec.values("ping_error") == [0.0] * 5


def test_judge_steps_finds_the_knee() -> None:
    from hybrid_assets.load.stats import LoadSummary

    def summary(p95: float, thr: float, err: float = 0.0) -> LoadSummary:
        return LoadSummary(100, 0, err, 1.0, thr, {"p95": p95})

    r = judge_steps([10, 20, 40, 80], [summary(0.01, 10), summary(0.011, 20), summary(0.012, 39), summary(0.05, 60)])
    assert r.knee_rps == 40 and r.saturated and "p95" in r.steps[-1].reason and "throughput" in r.steps[-1].reason
    r2 = judge_steps([10, 20], [summary(0.01, 10), summary(0.01, 20)])
    assert r2.knee_rps == 20 and not r2.saturated


def test_ramp_finds_the_capacity_of_a_known_server() -> None:
    # A single server with 10 ms service time saturates at 100 requests per second.
    lock = threading.Lock()

    def server(seq: int) -> None:
        with lock:
            time.sleep(0.01)

    result = run_ramp(server, [20, 40, 60, 150, 300], step_duration_s=1.0, seed=1,
                      limits=DegradationLimits(latency_factor=3.0))
    assert result.saturated and result.knee_rps is not None
    assert 40 <= result.knee_rps <= 60  # healthy below capacity, degraded above it
    assert result.steps[-1].offered_rps >= 150
    with pytest.raises(ValueError, match="increasing"):
        run_ramp(server, [10, 5], 1.0)
