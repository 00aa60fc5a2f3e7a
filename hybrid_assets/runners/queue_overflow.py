"""Spec 2.4 queue overflow: requests injected open loop at each of ``injection_rates_rps`` for ``step_duration_s``
into the worker's job queue of ``queue_capacity`` (concurrency 1), alternating high (1) and normal (5) priority;
after each step the queue drains before the next.

First each request kind is calibrated alone (``calibration_requests`` sequential requests, after one warm-up):
the longest response time of a kind is its service-time bound. Per request: lost (no answer by the drain
timeout, or the worker lost), rejected (an error answer: proper when it is QUEUE_FULL with a positive
retry_after_s and arrived before any request sent after it completed), completed (response time, and that
over (jobs waiting or in service at admission + later-admitted jobs that overtook it by priority + 1) x the
longest bound of the case's kinds, since a mixed queue's requests wait behind either kind: its position is
every job served before it). Per admitted
high-priority request: normal-priority requests admitted after it that started before it (job seq and start
times the worker reports). Per overflowing step (one with a rejection): normalisation (every admitted request
answered, depth and running back to 0, then a probe admitted and completed, without restart or any action)
and the RSS high-water growth of worker + host within the step (peak of its second half minus the peak of its
first half; host RSS includes this runner's own bookkeeping of the requests it sent).
"""

from __future__ import annotations

import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.queue_support import (
    POLL_S,
    DepthSampler,
    Injector,
    RssSampler,
    Sent,
    complex_note,
    job_info,
    kind_of,
    queue_session,
    request_for,
)
from workers.protocol.messages import ErrorCode

OVERFLOW_METRICS = frozenset({
    "request_lost_error", "rejection_malformed_error", "priority_inversion_count", "queue_normalized_ok",
    "memory_high_water_growth_mb", "response_time_over_queue_bound_ratio", "response_time_s",
    "queue_depth_count", "rejected_count", "service_time_s",
})
HIGH, NORMAL = 1, 5
MiB = 1 << 20


def _calibrate(ctx: RunnerContext, inj: Injector, kinds: list[str], steps: int, n: int) -> dict[str, float]:
    longest: dict[str, float] = {}
    for kind in kinds:
        times = []
        for k in range(n + 1):
            op, params = request_for(inj.client, kind, 900_000 + k, steps)
            sent = inj.send(op, params, kind=kind)
            if not inj.wait([sent], 600):
                raise RuntimeError(f"calibration request ({kind}) unanswered after 600 s")
            result, err = sent.outcome()
            if err is not None:
                raise RuntimeError(f"calibration request ({kind}) failed: {err}")
            if k == 0:
                continue  # warm-up: first use of each step's code path
            assert result is not None
            times.append(sent.latency)
            ctx.recorder.record("service_time_s", sent.latency, "s", kind=kind, phase="calibration",
                                run_s=job_info(result).get("run_s"))
        longest[kind] = max(times)
    return longest


def _late_rejections(sents: list[Sent]) -> dict[int, bool]:
    """Per rejected request (by position): was a request sent after it, and admitted, answered before it?"""
    suffix_min = [float("inf")] * (len(sents) + 1)
    for k in range(len(sents) - 1, -1, -1):
        s = sents[k]
        result, _ = s.outcome() if s.pending.done else (None, None)
        t = s.answered if result is not None and s.answered is not None else float("inf")
        suffix_min[k] = min(suffix_min[k + 1], t)
    late = {}
    for k, s in enumerate(sents):
        if s.pending.done and s.outcome()[1] is not None and s.answered is not None:
            late[k] = suffix_min[k + 1] < s.answered
    return late


def _inversions(done: list[tuple[Sent, dict[str, Any]]]) -> list[tuple[Sent, int]]:
    normals = [(job_info(r)["seq"], job_info(r)["started_s"]) for s, r in done if s.priority == NORMAL]
    out = []
    for s, r in done:
        if s.priority != HIGH:
            continue
        seq, started = job_info(r)["seq"], job_info(r)["started_s"]
        out.append((s, sum(1 for nseq, nstart in normals if nseq > seq and nstart < started)))
    return out


def queue_overflow(ctx: RunnerContext) -> None:
    p, rec = ctx.params, ctx.recorder
    capacity = int(p["queue_capacity"])
    rates = [float(r) for r in p["injection_rates_rps"]]
    complexity = str(p["request_complexity"])
    duration = float(p["step_duration_s"])
    steps = int(p.get("inference_steps", 1))
    kinds = sorted({kind_of(complexity, i) for i in range(4)})
    with queue_session(ctx, capacity=capacity, concurrency=1) as s, Injector(s.client) as inj:
        client = s.client
        if "complex" in kinds:
            rec.note("complex_workflow", complex_note(client))
        longest = _calibrate(ctx, inj, kinds, steps, int(p.get("calibration_requests", 5)))
        rec.note("service_time_bound_s", {k: round(v, 4) for k, v in longest.items()})
        assert client.pid is not None
        rss = RssSampler(client.pid, 0.02)
        depth = DepthSampler(client, 0.05)
        next_index = 0
        try:
            for rate in rates:
                client.request("queue.stats", {"reset_high_water": True})

                def make(i: int) -> tuple[str, dict[str, Any], str, int]:
                    kind = kind_of(complexity, i)
                    op, params = request_for(client, kind, i, steps)
                    return op, params, kind, HIGH if i % 2 == 0 else NORMAL

                t0 = time.monotonic()
                sents = inj.open_loop(rate, duration, make, start_index=next_index)
                t_end = time.monotonic()
                next_index += len(sents)
                bound = max(longest.values())
                drain_timeout = float(p.get("drain_timeout_s", (capacity + len(sents)) * bound * 3 + 60))
                inj.wait(sents, drain_timeout)
                _record_step(ctx, client, inj, sents, rate, longest, rss, depth, t0, t_end, kinds, steps)
        finally:
            rss.close()
            depth.close()
        rec.note("queue_final", client.request("queue.stats"))
    rec.note("answer_time_resolution_s", POLL_S)


def _record_step(ctx: RunnerContext, client: Any, inj: Injector, sents: list[Sent], rate: float,
                 longest: dict[str, float], rss: RssSampler, depth: DepthSampler, t0: float, t_end: float,
                 kinds: list[str], steps: int) -> None:
    rec = ctx.recorder
    stats = client.request("queue.stats")
    late = _late_rejections(sents)
    done: list[tuple[Sent, dict[str, Any]]] = []
    rejected = lost = 0
    for k, s in enumerate(sents):
        if not s.pending.done or s.answered is None:
            lost += 1
            rec.record("request_lost_error", 1.0, "count", rate_rps=rate, kind=s.kind, outcome="unanswered")
            continue
        result, err = s.outcome()
        if err is not None and err.code in (ErrorCode.WORKER_LOST, ErrorCode.TIMEOUT):
            lost += 1
            rec.record("request_lost_error", 1.0, "count", rate_rps=rate, kind=s.kind, outcome=err.code)
            continue
        rec.record("request_lost_error", 0.0, "count", rate_rps=rate, kind=s.kind,
                   outcome="completed" if err is None else "rejected")
        if err is not None:
            rejected += 1
            proper_code = err.code == ErrorCode.QUEUE_FULL
            has_retry = err.retry_after_s is not None and err.retry_after_s > 0
            malformed = not (proper_code and has_retry) or late.get(k, False)
            rec.record("rejection_malformed_error", 1.0 if malformed else 0.0, "count", rate_rps=rate, code=err.code,
                       retry_after_s=err.retry_after_s, late=late.get(k, False),
                       answered_after_s=round(s.answered - s.sent, 6))
            continue
        assert result is not None
        done.append((s, result))
        rec.record("response_time_s", s.latency, "s", rate_rps=rate, kind=s.kind, priority=s.priority)
    starts = [(job_info(r)["seq"], job_info(r)["started_s"]) for _, r in done]
    for s, result in done:
        info = job_info(result)
        # "the same complexity": the case's; a mixed queue's requests wait behind either kind. Queue depth:
        # the jobs in the system when it arrived, waiting or in service (the one in service is ahead of it too)
        in_system = info["depth_at_admission"] + info["running_at_admission"]
        overtaken = sum(1 for seq, started in starts if seq > info["seq"] and started < info["started_s"])
        # Jobs served before it: those ahead at admission, plus later high-priority ones that overtook it.
        bound = (in_system + overtaken + 1) * max(longest.values())
        rec.record("response_time_over_queue_bound_ratio", s.latency / bound, "ratio", rate_rps=rate, kind=s.kind,
                   priority=s.priority, depth_at_admission=in_system, overtaken_by=overtaken)
    for _s, count in _inversions(done):
        rec.record("priority_inversion_count", float(count), "count", rate_rps=rate)
    rec.record("rejected_count", float(rejected), "count", rate_rps=rate, sent=len(sents), completed=len(done))
    sampled = [d for _, d, _ in depth.between(t0, time.monotonic())]
    rec.record("queue_depth_count", float(max(sampled, default=0)), "count", rate_rps=rate, statistic="max_sampled",
               high_water=stats["high_water"])
    if not rejected:
        return
    # the step overflowed: did the queue come back by itself?
    probe_op, probe_params = request_for(client, kinds[0], 800_000 + int(rate), steps)
    probe = inj.send(probe_op, probe_params, kind=kinds[0])
    probe_ok = inj.wait([probe], 600) and probe.outcome()[1] is None
    after = client.request("queue.stats")
    normalized = lost == 0 and after["depth"] == 0 and after["running"] == 0 and probe_ok
    rec.record("queue_normalized_ok", 1.0 if normalized else 0.0, "ratio", rate_rps=rate, lost=lost,
               depth_after=after["depth"], probe_ok=probe_ok,
               probe_latency_s=round(probe.latency, 4) if probe.answered else None)
    mid = t0 + (t_end - t0) / 2
    first, second = rss.peak(t0, mid), rss.peak(mid, t_end)
    if first is None or second is None:
        rec.note(f"rss_step_{rate:g}", "no RSS sample in one half of the step")
        return
    rec.record("memory_high_water_growth_mb", (second[0] - first[0]) / MiB, "MiB", rate_rps=rate,
               worker_mb=round((second[1] - first[1]) / MiB, 3), host_mb=round((second[2] - first[2]) / MiB, 3))


RUNNERS = {"processing.queue_overflow": (OVERFLOW_METRICS, queue_overflow)}
