"""Spec 2.4 burst load: ``baseline_rps`` open loop, then bursts to ``burst_magnitude_x`` times it, one burst of
each of ``burst_durations_s`` starting every ``burst_interval_s`` (a burst longer than the interval pushes the
next one back), the baseline continuing throughout and after the last burst until the queue has recovered
(watched for at most ``max_watch_s``).

The system under test is one worker's job queue (capacity ``queue_capacity``, concurrency 1, autoscaled up to
``max_concurrency`` threads once ``scale_up_depth`` jobs wait, announced as a status event: the automatic
capacity change the host sees). Requests are simple inferences repeating ``pairs`` fixed (prompt, seed) pairs,
each rendered alone before the run for its reference digest. The pre-burst state (max queue depth, p90
response time) is the baseline phase before the first burst. Rejected requests (QUEUE_FULL) are explicit
answers, counted and labelled, not retried.

Per burst: scaling_response_s (onset to the first scaling event; 0 when the queue never passed its pre-burst
maximum; the time watched, until the next onset or the end, when it did without any scaling);
baseline_recovery_s (burst end to the first depth sample at or under the pre-burst maximum at which the
latest answered request took at most the pre-burst p90; the time watched when never). Per request answered
during a burst: output_mismatch_error against the pair's reference.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.queue_support import DepthSampler, Injector, Sent, digest_of, inference_params, queue_session
from workers.protocol.messages import ErrorCode, Event

BURST_METRICS = frozenset({"scaling_response_s", "baseline_recovery_s", "output_mismatch_error", "response_time_s",
                           "request_lost_error", "queue_depth_count"})


@dataclass
class Burst:
    index: int
    onset: float  # seconds from the start of the schedule
    end: float


def schedule(baseline_rps: float, magnitude: float, durations: list[float], interval: float, warm_s: float
             ) -> tuple[list[tuple[float, int]], list[Burst]]:
    """Arrivals (time from start, burst index or -1) up to the last burst's end, and the bursts."""
    bursts, onset = [], warm_s
    for k, d in enumerate(durations):
        bursts.append(Burst(k, onset, onset + d))
        onset += max(interval, d)
    segments, t = [], 0.0  # (start, end, burst index or -1): evenly spaced arrivals within each
    for b in bursts:
        segments += [(t, b.onset, -1), (b.onset, b.end, b.index)]
        t = b.end
    arrivals: list[tuple[float, int]] = []
    for start, end, index in segments:
        rate = baseline_rps * (magnitude if index >= 0 else 1.0)
        count = math.ceil((end - start) * rate - 1e-9)
        arrivals += [(start + k / rate, index) for k in range(count)]
    return arrivals, bursts


def _p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[-1] if len(xs) >= 2 else (xs[0] if xs else 0.0)


def burst_load(ctx: RunnerContext) -> None:
    p, rec = ctx.params, ctx.recorder
    baseline = float(p["baseline_rps"])
    magnitude = float(p["burst_magnitude_x"])
    durations = [float(d) for d in p["burst_durations_s"]]
    interval = float(p["burst_interval_s"])
    steps = int(p.get("inference_steps", 1))
    warm_s = float(p.get("warm_s", max(5.0, interval)))
    max_watch = float(p.get("max_watch_s", 330.0))
    pairs = int(p.get("pairs", 8))
    capacity = int(p.get("queue_capacity", 1000))
    queue_cfg = {"max_concurrency": int(p.get("max_concurrency", 2)),
                 "scale_up_depth": int(p.get("scale_up_depth", 10)),
                 "scale_down_idle_s": float(p.get("scale_down_idle_s", 2.0))}
    arrivals, bursts = schedule(baseline, magnitude, durations, interval, warm_s)
    with queue_session(ctx, capacity=capacity, concurrency=1, **queue_cfg) as s, Injector(s.client) as inj:
        client = s.client
        refs = {}
        for k in range(pairs):  # references: each pair alone, before any load
            sent = inj.send("job.run", {"op": "inference.run", "params": inference_params(k, steps)})
            inj.wait([sent], 600)
            result, err = sent.outcome()
            if err is not None or result is None:
                raise RuntimeError(f"reference render of pair {k} failed: {err}")
            refs[k] = digest_of("job.run", result)
        scaled: list[tuple[float, dict[str, Any]]] = []
        client.on_status(lambda ev: _on_status(ev, scaled))
        depth = DepthSampler(client, 0.1)
        t0 = time.monotonic()
        sents: list[tuple[Sent, int, int]] = []  # (sent, burst index or -1, pair)
        try:
            for i, (at, burst) in enumerate(arrivals):
                delay = t0 + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pair = i % pairs
                sent = inj.send("job.run", {"op": "inference.run", "params": inference_params(pair, steps)},
                                scheduled=t0 + at, kind="simple")
                sents.append((sent, burst, pair))
            # after the last burst: the baseline continues until the queue is back, or max_watch
            pre_max, pre_p90 = _pre_burst(sents, depth, t0, bursts)
            watch_end = time.monotonic() + max_watch
            k, next_at, next_check = len(arrivals), bursts[-1].end, 0.0
            while time.monotonic() < watch_end:
                if time.monotonic() >= next_check:
                    if _recovery(sents, depth, t0 + bursts[-1].end, time.monotonic(), pre_max, pre_p90) is not None:
                        break
                    next_check = time.monotonic() + 0.5
                delay = t0 + next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pair = k % pairs
                sents.append((inj.send("job.run", {"op": "inference.run", "params": inference_params(pair, steps)},
                                       scheduled=t0 + next_at, kind="simple"), -1, pair))
                k, next_at = k + 1, next_at + 1.0 / baseline
            t_stop = time.monotonic()
            inj.wait([x[0] for x in sents], float(p.get("drain_timeout_s", capacity * 2.0 + 120)))
        finally:
            depth.close()
        _record(ctx, sents, refs, scaled, depth, t0, t_stop, bursts, pre_max, pre_p90)
        rec.note("queue_final", client.request("queue.stats"))
    rec.note("schedule", {"bursts": [(b.onset, b.end) for b in bursts], "arrivals": len(arrivals),
                          "queue": {"capacity": capacity, "concurrency": 1, **queue_cfg}})


def _on_status(ev: Event, scaled: list[tuple[float, dict[str, Any]]]) -> None:
    if ev.data.get("domain") == "queue" and ev.data.get("kind") == "scaled":
        scaled.append((time.monotonic(), dict(ev.data)))


def _pre_burst(sents: list[tuple[Sent, int, int]], depth: DepthSampler, t0: float, bursts: list[Burst]
               ) -> tuple[int, float]:
    """Max sampled depth and p90 response time of the baseline phase before the first burst."""
    first = t0 + bursts[0].onset
    lat = [s.latency for s, b, _ in sents if s.scheduled < first and s.answered is not None
           and s.answered <= first and s.outcome()[1] is None]
    return max((d for _, d, _ in depth.between(t0, first)), default=0), _p90(lat)


def _recovery(sents: list[tuple[Sent, int, int]], depth: DepthSampler, start: float, end: float, pre_max: int,
              pre_p90: float) -> float | None:
    """The first depth sample in [start, end] at or under ``pre_max`` where the latest answered request took at
    most ``pre_p90``: its time, else None."""
    answered = sorted((s.answered, s.latency) for s, _, _ in sents
                      if s.answered is not None and s.answered >= start and s.outcome()[1] is None)
    for t, d, _ in depth.between(start, end):
        if d > pre_max:
            continue
        latest = [lat for at, lat in answered if at <= t]
        if latest and latest[-1] <= pre_p90:
            return t
    return None


def _record(ctx: RunnerContext, sents: list[tuple[Sent, int, int]], refs: dict[int, str],
            scaled: list[tuple[float, dict[str, Any]]], depth: DepthSampler, t0: float, t_stop: float,
            bursts: list[Burst], pre_max: int, pre_p90: float) -> None:
    rec = ctx.recorder
    rec.note("pre_burst", {"max_depth": pre_max, "p90_s": round(pre_p90, 4)})
    rejected = {b.index: 0 for b in bursts}
    for s, burst, pair in sents:
        if s.answered is None:
            rec.record("request_lost_error", 1.0, "count", burst=burst, outcome="unanswered")
            continue
        result, err = s.outcome()
        lost = err is not None and err.code in (ErrorCode.WORKER_LOST, ErrorCode.TIMEOUT)
        rec.record("request_lost_error", 1.0 if lost else 0.0, "count", burst=burst,
                   outcome=err.code if err is not None else "completed")
        if err is not None:
            if burst >= 0 and err.code == ErrorCode.QUEUE_FULL:
                rejected[burst] += 1
            continue
        assert result is not None
        rec.record("response_time_s", s.latency, "s", burst=burst)
        if burst >= 0:
            rec.record("output_mismatch_error", 0.0 if digest_of("job.run", result) == refs[pair] else 1.0, "count",
                       burst=burst, pair=pair)
    for k, b in enumerate(bursts):
        onset, end = t0 + b.onset, t0 + b.end
        next_onset = t0 + bursts[k + 1].onset if k + 1 < len(bursts) else t_stop
        window = depth.between(onset, next_onset)
        peak = max((d for _, d, _ in window), default=0)
        rec.record("queue_depth_count", float(peak), "count", burst=k, statistic="max_sampled",
                   rejected=rejected[k])
        at_onset = [c for t, _, c in depth.samples if t <= onset]
        already = bool(at_onset) and at_onset[-1] > 1
        event = next((t for t, d in scaled if onset <= t < next_onset and d.get("reason") == "backlog"), None)
        if peak <= pre_max:
            rec.record("scaling_response_s", 0.0, "s", burst=k, reason="queue never passed its pre-burst maximum")
        elif event is not None:
            rec.record("scaling_response_s", event - onset, "s", burst=k, reason="scaled", depth_peak=peak)
        else:
            rec.record("scaling_response_s", next_onset - onset, "s", burst=k, depth_peak=peak,
                       reason="concurrency already raised at onset" if already else "no scaling while watched")
        recovered = _recovery(sents, depth, end, next_onset, pre_max, pre_p90)
        if recovered is not None:
            rec.record("baseline_recovery_s", recovered - end, "s", burst=k, recovered=True)
        else:
            rec.record("baseline_recovery_s", next_onset - end, "s", burst=k, recovered=False)


RUNNERS = {"processing.burst_load": (BURST_METRICS, burst_load)}
