"""Spec 3.2 out-of-memory scenarios: gradual exhaustion from 70 % to 99 % (the utilisation at which each stage
is first observed) and sudden spikes of 30 % in 10 s (detection, recovery, continuity), on the engine of
memory_pressure.py. The runtime's pressure policy is its own (WARNING with proactive cleanup at 75 %, DEGRADED at
85 %, EMERGENCY at 95 %, as spec 1.4 asks); the runner records where each stage shows, whatever it is."""

from __future__ import annotations

import math
import time
from typing import Any, Union

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.memory_pressure import SERVED, Episode, MiB, budget_bytes, is_action, names_level

EXHAUSTION_METRICS = frozenset({
    "warning_activation_utilization_ratio", "cleanup_activation_utilization_ratio",
    "degraded_mode_activation_utilization_ratio", "emergency_cleanup_activation_utilization_ratio",
    "peak_utilization_ratio", "lost_requests_count", "worker_lost_count",
})
SPIKE_METRICS = frozenset({
    "spike_detection_s", "emergency_recovery_s", "worker_lost_count", "liveness_probe_ok", "lost_requests_count",
    "peak_utilization_ratio", "rejected_request_count",
})
RECOVERY_BOUND_S = 30.0  # 3.2's emergency recovery bound: an unrecovered spike is watched this long (+1 s)
RECOVERED_AT = 0.85
HOLD_TICKS = 10
# How each trigger adds its bytes: a model load in layer-sized pieces, a leak in small pieces that stay,
# a storm of many small allocations. All are held until the spike's observation ends.
TRIGGERS = {"large_model_loading": ("model_load", 1 / 32), "memory_leak_simulation": ("leak", 1 / 1024),
            "allocation_storm": ("storm", 1 / 4096)}


def _schedule(pattern: str, start: float, end: float, rate_per_s: float, elapsed: float) -> float:
    """Driven utilisation at ``elapsed`` scaled seconds: steady (linear), accelerating (quadratic, the same
    average rate) or stepped (5 points at once every scaled minute)."""
    span = (end - start) / rate_per_s  # seconds the steady pattern takes
    if pattern == "steady_consumption":
        u = start + rate_per_s * elapsed
    elif pattern == "accelerating_consumption":
        u = start + (end - start) * (elapsed / span) ** 2
    elif pattern == "stepped_consumption":
        step_s = 0.05 / rate_per_s  # one 5-point step per (scaled) minute at 5 %/min
        u = start + 0.05 * math.floor(elapsed / step_s + 1e-9)
    else:
        raise ValueError(f"unknown consumption_pattern {pattern!r}")
    return min(end, u)


def gradual_exhaustion(ctx: RunnerContext) -> None:
    p = ctx.params
    ts = float(p["time_scale"])
    start, end = float(p["starting_utilization_pct"]) / 100, float(p["target_exhaustion_pct"]) / 100
    rate_per_s = float(p["memory_consumption_rate_pct_per_min"]) / 100 / 60 / ts
    pattern = str(p["consumption_pattern"])
    ep = Episode(ctx, budget_bytes(ctx)).start()
    rec = ctx.recorder
    try:
        for run in range(int(p.get("runs", 1))):
            ep.setup(start)
            t0, lost0 = time.monotonic(), ep.lost
            while (target := _schedule(pattern, start, end, rate_per_s, time.monotonic() - t0)) < end:
                ep.tick("ramp", target, {"tag": "base", "target_utilisation": target})
            for _ in range(HOLD_TICKS):
                ep.tick("hold", end, {"tag": "base", "target_utilisation": end})
            t_end = time.monotonic()
            _record_stages(ep, t0, t_end, run=run, pattern=pattern)
            peak = max((r.state["utilisation"] for r in ep.replies if r.state and t0 <= r.t <= t_end), default=0.0)
            rec.record("peak_utilization_ratio", peak, "ratio", run=run)
            rec.record("lost_requests_count", float(ep.lost - lost0), "count", run=run)
            rec.record("worker_lost_count", 0.0 if ep.healthy() else 1.0, "count", run=run)
            ep.balloon(math.nan, "release", tag="base", size_bytes=0)
    finally:
        ep.close()
    rec.note("budget_bytes", ep.budget)
    rec.note("requests_sent", ep.sent)


def _record_stages(ep: Episode, t0: float, t1: float, **labels: Any) -> None:
    """The utilisation at which each stage's status event first came (1.0: never): the one the worker reports in
    it (the usage that triggered it, a probe's working set on top of the balloon included), which the driven
    target of that tick (a label) can understate by a probe's size."""
    stages = {
        "warning_activation_utilization_ratio": lambda e: e.get("kind") == "level" and e.get("level") != "NORMAL",
        "cleanup_activation_utilization_ratio":
            lambda e: e.get("response") == "proactive_cleanup" and e.get("freed_bytes", 0) > 0,
        "degraded_mode_activation_utilization_ratio": lambda e: names_level(e, "DEGRADED"),
        "emergency_cleanup_activation_utilization_ratio": lambda e: e.get("response") == "emergency_cleanup",
    }
    for metric, match in stages.items():
        hit = next(((r.target, e) for r in ep.replies if t0 <= r.t <= t1 for e in r.events if match(e)), None)
        if hit is None:
            ep.ctx.recorder.record(metric, 1.0, "ratio", observed=False, **labels)
        else:
            reported = float(hit[1].get("utilisation_before", hit[1].get("utilisation", math.nan)))
            ep.ctx.recorder.record(metric, reported, "ratio", observed=True, driven_target=round(hit[0], 4), **labels)


def sudden_spike(ctx: RunnerContext) -> None:
    p = ctx.params
    ts = float(p["time_scale"])
    baseline, magnitude = float(p["baseline_utilization_pct"]) / 100, float(p["spike_magnitude_pct"]) / 100
    rise_s = float(p["spike_rise_s"]) * ts
    trigger = str(p["spike_trigger"])
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown spike_trigger {trigger!r}; known: {sorted(TRIGGERS)}")
    tag, chunk_share = TRIGGERS[trigger]
    ep = Episode(ctx, budget_bytes(ctx)).start()
    rec = ctx.recorder
    spike_bytes = int(magnitude * ep.budget)
    chunk = max(64 * 1024, int(ep.budget * chunk_share))
    try:
        for s in range(int(p["spikes"])):
            ep.setup(baseline)
            for _ in range(3):
                ep.tick("baseline", baseline, None)
            t0, lost0 = time.monotonic(), ep.lost
            while (frac := (time.monotonic() - t0) / rise_s if rise_s > 0 else 1.0) < 1.0:
                ep.tick("rise", baseline + magnitude * frac,
                        {"tag": tag, "size_bytes": int(spike_bytes * frac), "chunk_bytes": chunk})
            ep.tick("rise", baseline + magnitude, {"tag": tag, "size_bytes": spike_bytes, "chunk_bytes": chunk})
            t_peak = time.monotonic()
            recovered_at: Union[float, None] = None
            while time.monotonic() - t0 < RECOVERY_BOUND_S + 1.0:
                probes = ep.tick("hold", baseline + magnitude, None)
                state = ep.replies[-len(probes)].state  # the interactive probe's reply
                if state is not None and state["utilisation"] <= RECOVERED_AT and probes[0].status in SERVED:
                    recovered_at = time.monotonic()
                    break
                if ep.client is None or not ep.client.alive:
                    break
            t_end = time.monotonic()
            _record_spike(ep, t0, t_end, recovered_at, lost0, spike=s, trigger=trigger)
            rec.note(f"spike_{s}_rise_s", t_peak - t0)
            ep.balloon(math.nan, "release", tag=tag, size_bytes=0)  # the leak fixed, the model unloaded
    finally:
        ep.close()
    rec.note("budget_bytes", ep.budget)
    rec.note("spike_chunk_mib", chunk / MiB)
    rec.note("requests_sent", ep.sent)


def _record_spike(ep: Episode, t0: float, t_end: float, recovered_at: Union[float, None], lost0: int,
                  **labels: Any) -> None:
    rec = ep.ctx.recorder
    alert = next((t for t, e in ep.events_between(t0, t_end + 1e-9) if is_action(e) or e.get("kind") == "level"),
                 None)
    if alert is not None:
        rec.record("spike_detection_s", alert - t0, "s", **labels)
    else:
        rec.note(f"spike_{labels.get('spike')}_no_alert", "no memory status event during the spike")
    rec.record("emergency_recovery_s", (recovered_at if recovered_at is not None else t_end) - t0, "s",
               recovered=recovered_at is not None, **labels)
    rec.record("worker_lost_count", 0.0 if ep.healthy() else 1.0, "count", **labels)
    rec.record("lost_requests_count", float(ep.lost - lost0), "count", **labels)
    peak = max((r.state["utilisation"] for r in ep.replies if r.state and t0 <= r.t <= t_end), default=0.0)
    rec.record("peak_utilization_ratio", peak, "ratio", **labels)
    window = [pr for pr in ep.probes if t0 <= pr.t <= t_end]
    for pr in window:
        if pr.kind == "interactive":  # the basic liveness probe: served (possibly downgraded) every time
            rec.record("liveness_probe_ok", 1.0 if pr.status in SERVED else 0.0, "ratio", status=pr.status, **labels)
    rec.record("rejected_request_count", float(sum(pr.status == "refused" for pr in window)), "count", **labels)


RUNNERS = {
    "memory.gradual_exhaustion": (EXHAUSTION_METRICS, gradual_exhaustion),
    "memory.sudden_spike": (SPIKE_METRICS, sudden_spike),
}
