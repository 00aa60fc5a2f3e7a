"""Spec 1.4 memory pressure workflows: a gradual build-up (responses at 75/85/95 %) and sudden spikes, with
degradation and recovery measured through probes (engine and conventions in memory_pressure.py)."""

from __future__ import annotations

import math
import time
from typing import Any, Union

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.memory_pressure import (
    LEVELS,
    SERVED,
    Episode,
    ProbeRecord,
    budget_bytes,
    is_action,
    names_level,
    p90,
    record_status_communication,
    record_usage,
    wait_recovered,
)

EPISODE_METRICS = frozenset({
    "worker_crash_or_hang_detected", "critical_request_error", "interactive_request_latency_s", "full_recovery_s",
    "status_communication_missing_detected", "memory_usage_ratio",
})
GRADUAL_METRICS = EPISODE_METRICS | {
    "cache_cleanup_detected", "own_memory_above_pre_cleanup_detected", "performance_impact_ratio",
    "degraded_mode_activated_detected", "degraded_request_unhandled_error", "degradation_notification_ok",
    "emergency_recovery_detected",
}
SPIKE_METRICS = EPISODE_METRICS | {"spike_response_s", "spike_cleanup_and_load_reduction_detected", "spike_oom_error"}
BASELINE_TICKS = 15
WARMUP_TICKS = 5
RECOVERY_BOUND_S = 300.0  # 1.4's full recovery bound: an unrecovered system is watched this long, once


def _record_episode(ep: Episode, t0: float, t_end: float, recovered: bool, recovery_s: float,
                    critical_from: float, **labels: Any) -> None:
    """The metrics both 1.4 runners share, over one episode from ``t0`` (pressure start) to ``t_end``."""
    rec = ep.ctx.recorder
    rec.record("worker_crash_or_hang_detected", 0.0 if ep.healthy() else 1.0, "count", **labels)
    rec.record("full_recovery_s", recovery_s, "s", recovered=recovered, **labels)
    for pr in ep.probes:
        if not t0 <= pr.t < t_end:
            continue
        if pr.kind == "critical" and pr.t >= critical_from:
            rec.record("critical_request_error", 0.0 if pr.status in SERVED else 1.0, "count", phase=pr.phase,
                       status=pr.status, **labels)
        if pr.kind == "interactive" and pr.status in SERVED and pr.level and LEVELS[pr.level] >= LEVELS["DEGRADED"]:
            rec.record("interactive_request_latency_s", pr.latency_s, "s", phase=pr.phase, **labels)
    record_status_communication(ep, t0, t_end)
    record_usage(ep, t0, t_end, **labels)


def _first_crossing(ep: Episode, t0: float, level: float) -> float:
    """Host time of the first reply by which usage reached ``level``: the balloon drove it there, or the worker
    reported it (a status event's utilisation: a probe's working set on top of the balloon counts, it is usage
    too). inf when usage never did."""
    for r in ep.replies:
        if r.t < t0:
            continue
        reported = max((max(e.get("utilisation", 0.0), e.get("utilisation_before", 0.0)) for e in r.events),
                       default=0.0)
        if (r.op == "pressure.balloon" and r.target >= level - 1e-9) or reported >= level:
            return r.t
    return math.inf


def gradual_pressure(ctx: RunnerContext) -> None:
    p = ctx.params
    ts = float(p["time_scale"])
    initial, peak = float(p["initial_usage"]), float(p["maximum_pressure"])
    rate_per_s = float(p["increase_rate_per_min"]) / 60.0 / ts  # utilisation per second of scaled time
    hold_s = float(p["pressure_duration_s"]) * ts
    threshold = p.get("pressure_threshold")
    ep = Episode(ctx, budget_bytes(ctx)).start()
    rec = ctx.recorder
    try:
        for b in range(int(p.get("buildups", 1))):
            ep.setup(initial)
            for _ in range(WARMUP_TICKS):  # first requests pay one-off costs (allocator, code paths): not a baseline
                ep.tick("warmup", initial, {"tag": "base", "target_utilisation": initial})
            base = [pr for _ in range(BASELINE_TICKS)
                    for pr in ep.tick("baseline", initial, {"tag": "base", "target_utilisation": initial})]
            t0 = time.monotonic()
            while (target := min(peak, initial + rate_per_s * (time.monotonic() - t0))) < peak:
                ep.tick("ramp", target, {"tag": "base", "target_utilisation": target})
            t_peak = time.monotonic()
            while time.monotonic() - t_peak < hold_s:
                ep.tick("hold", peak, {"tag": "base", "target_utilisation": peak})
            t_release = time.monotonic()
            ep.balloon(math.nan, "release", tag="base", size_bytes=0)
            recovered, recovery_s = wait_recovered(ep, RECOVERY_BOUND_S, 300.0 * ts)
            t_end = time.monotonic()
            t75, t85, t95 = (_first_crossing(ep, t0, u) for u in (0.75, 0.85, 0.95))
            critical_from = t95 if threshold is not None and float(threshold) >= 0.95 else t0
            _record_episode(ep, t0, t_end, recovered, recovery_s, critical_from, buildup=b)
            _record_gradual_responses(ep, base, t0, t75, t85, t95, t_release, buildup=b)
            rec.note(f"buildup_{b}_crossings_s", [round(t - t0, 3) for t in (t75, t85, t95)])
            rec.note(f"buildup_{b}_ramp_s", t_peak - t0)
            rec.note(f"buildup_{b}_hold_s", t_release - t_peak)
    finally:
        ep.close()
    rec.note("budget_bytes", ep.budget)
    rec.note("requests_sent", ep.sent)


def _record_gradual_responses(ep: Episode, base: list[ProbeRecord], t0: float, t75: float, t85: float, t95: float,
                              t_release: float, **labels: Any) -> None:
    rec = ep.ctx.recorder
    # 75 %: cache freed (evictions rose) after the 75 % crossing and before the 85 % one
    before75 = [r for r in ep.replies if t0 <= r.t < t75 and r.state is not None]
    band = [r for r in ep.replies if t75 <= r.t < t85 and r.state is not None]
    ev0 = before75[-1].evictions if before75 else 0
    rec.record("cache_cleanup_detected", 1.0 if any(r.evictions > ev0 for r in band) else 0.0, "ratio", **labels)
    own75 = ep.own_bytes_before(t75)
    for r in band:
        above = own75 is not None and r.state["own_bytes"] > own75  # type: ignore[index]
        rec.record("own_memory_above_pre_cleanup_detected", 1.0 if above else 0.0, "count", **labels)
    base_lat = [pr.latency_s for pr in base if pr.kind == "interactive" and pr.status == "ok"]
    # full-quality probes only: a downgraded one does less work and would hide the impact
    band_lat = [pr.latency_s for pr in ep.probes
                if pr.kind == "interactive" and pr.status == "ok" and t75 <= pr.t < t85]
    if base_lat and band_lat:
        rec.record("performance_impact_ratio", p90(band_lat) / p90(base_lat) - 1.0, "ratio",
                   baseline_samples=len(base_lat), band_samples=len(band_lat), **labels)
    else:
        rec.skip("performance_impact_ratio", "no interactive probe served at baseline or between 75 % and 85 %")
    # 85 %: degraded mode reported after the 85 % crossing, before 95 %
    seen = [t for t, e in ep.events_between(t0, t95) if names_level(e, "DEGRADED")]
    rec.record("degraded_mode_activated_detected", 1.0 if any(t >= t85 for t in seen) else 0.0, "ratio", **labels)
    rec.record("degradation_notification_ok", 1.0 if seen else 0.0, "ratio", **labels)
    for pr in ep.probes:
        if t0 <= pr.t < t_release and pr.level and LEVELS[pr.level] >= LEVELS["DEGRADED"]:
            handled = pr.status in SERVED or (pr.status == "refused" and bool(pr.reason))
            rec.record("degraded_request_unhandled_error", 0.0 if handled else 1.0, "count", kind=pr.kind,
                       status=pr.status, **labels)
    # 95 %: an emergency action, and own memory below its level at the 95 % crossing while the pressure held
    own95 = ep.own_bytes_before(t95)
    acted = any(e.get("response") == "emergency_cleanup" for _, e in ep.events_between(t95, t_release))
    fell = own95 is not None and any(r.state["own_bytes"] < own95 for r in ep.replies  # type: ignore[index]
                                     if t95 <= r.t < t_release and r.state is not None)
    rec.record("emergency_recovery_detected", 1.0 if acted and fell else 0.0, "ratio", emergency_event=acted,
               own_memory_fell=fell, **labels)


def pressure_spike(ctx: RunnerContext) -> None:
    p = ctx.params
    ts = float(p["time_scale"])
    baseline, increase = float(p["baseline_usage"]), float(p["spike_increase"])
    rise_s, hold_s = float(p["spike_rise_s"]) * ts, float(p["spike_duration_s"]) * ts
    ep = Episode(ctx, budget_bytes(ctx)).start()
    rec = ctx.recorder
    spike_bytes = int(increase * ep.budget)
    try:
        for s in range(int(p["spikes"])):
            ep.setup(baseline)
            for _ in range(BASELINE_TICKS // 3):
                ep.tick("baseline", baseline, None)
            t0 = time.monotonic()
            while (frac := (time.monotonic() - t0) / rise_s if rise_s > 0 else 1.0) < 1.0:
                ep.tick("rise", baseline + increase * frac, {"tag": "spike", "size_bytes": int(spike_bytes * frac)})
            ep.tick("rise", baseline + increase, {"tag": "spike", "size_bytes": spike_bytes})
            while time.monotonic() - t0 < rise_s + hold_s:
                ep.tick("hold", baseline + increase, None)
            t_release = time.monotonic()
            ep.balloon(math.nan, "release", tag="spike", size_bytes=0)
            recovered, recovery_s = wait_recovered(ep, RECOVERY_BOUND_S, float(p["recovery_time_s"]) * ts)
            t_end = time.monotonic()
            _record_episode(ep, t0, t_end, recovered, recovery_s, t0, spike=s)
            _record_spike(ep, t0, t_release, spike=s)
    finally:
        ep.close()
    rec.note("budget_bytes", ep.budget)
    rec.note("requests_sent", ep.sent)


def _record_spike(ep: Episode, t0: float, t_release: float, **labels: Any) -> None:
    rec = ep.ctx.recorder
    during = ep.events_between(t0, t_release)
    first: Union[float, None] = next((t for t, e in during if is_action(e)), None)
    if first is not None:
        rec.record("spike_response_s", first - t0, "s", **labels)
    else:
        # measured, not unmeasurable: no action at all; the detected line below records the 0
        rec.note(f"spike_{labels.get('spike')}_no_action", "no cleanup or load-reduction action before the spike ended")
    freed = any(e.get("kind") == "response" and e.get("freed_bytes", 0) > 0 for _, e in during)
    reduced = any(names_level(e, "DEGRADED") for _, e in during) or any(
        pr.status == "refused" for pr in ep.probes if t0 <= pr.t < t_release)
    rec.record("spike_cleanup_and_load_reduction_detected", 1.0 if freed and reduced else 0.0, "ratio",
               freed=freed, load_reduced=reduced, **labels)
    for pr in ep.probes:
        if t0 <= pr.t < t_release:
            oom = pr.status in ("failed", "error") and "out_of_memory" in f"{pr.reason} {pr.error}".lower().replace(
                "outofmemory", "out_of_memory")
            rec.record("spike_oom_error", 1.0 if oom else 0.0, "count", kind=pr.kind, status=pr.status, **labels)


RUNNERS = {
    "memory.gradual_pressure": (GRADUAL_METRICS, gradual_pressure),
    "memory.pressure_spike": (SPIKE_METRICS, pressure_spike),
}
