"""1.6 concurrency: many users running inference at once through one serving worker.

Each user is a closed-loop thread with its own operations (per operation type and operations per
user); every output is compared bitwise with the same request rendered alone before the run
(model, input, seed, same worker). Conflicts are failures the user sees (out of memory, a lock or
deadline timeout, a refusal); waiting for a shared resource is contention handled, not a conflict.

The serving side is one worker with one inference slot per tiny pipeline (its pipelines are not
thread-safe; different models generate in parallel). On this kind of machine (2 CPU cores) the
worker is compute-bound: throughput cannot grow with users, and the scaling lines measure exactly
that.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.inference_latency import (
    PROMPTS,
    Inputs,
    Job,
    Outcome,
    open_sessions,
    real_devices,
    render_references,
)
from hybrid_assets.runners.inference_workflows import _mismatch, _model_set, drain
from hybrid_assets.runners.model_support import ensure_models
from workers.models.store import ModelStore

USER_METRICS = frozenset({
    "resource_conflict_error", "output_mismatch_detected", "latency_increase_at_50_users_ratio",
    "throughput_scaling_efficiency_ratio", "request_latency_s", "throughput_per_min",
})
# Failures that come from sharing the worker with other users (the line's 'resource conflicts').
CONFLICT_CODES = ("OUT_OF_MEMORY", "DEADLINE_EXCEEDED", "TIMEOUT", "QUEUE_FULL", "DEVICE_UNAVAILABLE", "CACHE_FULL")
SCALING_USERS = (5, 10, 25)  # the line's N for linear scaling
LATENCY_USERS = 50


def _jobs_for(store: ModelStore, models: Sequence[str], kind: str, user: int, count: int) -> list[Job]:
    """``count`` operations of one user. identical: every user sends the same request; mixed: the four
    inference types in rotation over the models; resource_intensive: a larger image and more steps."""
    jobs = []
    for i in range(count):
        if kind == "identical_operations":
            jobs.append(Job(models[0], "text_to_image", 64, 64, 4, seed=1, prompt=PROMPTS[0]))
            continue
        model = models[(user + i) % len(models)]
        seed = 100 + (user * 7 + i) % 8  # a few distinct requests, each sent by several users
        if kind == "resource_intensive_operations":
            jobs.append(Job(model, "text_to_image", 128, 128, 8, seed=seed, batch=2, prompt=PROMPTS[seed % 3]))
            continue
        if kind != "mixed_inference_types":
            raise ValueError(f"unknown operation type {kind!r}: mixed_inference_types, identical_operations "
                             f"or resource_intensive_operations")
        mode = ("text_to_image", "image_to_image", "controlnet", "lora")[(user + i) % 4]
        base = Job(model, "text_to_image", 64, 64, 4, seed=seed, prompt=PROMPTS[seed % 3])
        if mode == "image_to_image":
            jobs.append(dataclasses.replace(base, mode="image_to_image"))
        elif mode in ("controlnet", "lora"):
            extras = [n for n in store.names() if store.entry(n).kind == mode and model in store.entry(n).depends_on]
            if not extras:
                jobs.append(base)  # this model has no ControlNet / LoRA: plain text-to-image
            elif mode == "controlnet":
                jobs.append(dataclasses.replace(base, mode="controlnet", control_model=extras[0]))
            else:
                jobs.append(dataclasses.replace(base, lora=extras[0]))
        else:
            jobs.append(base)
    return jobs


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 90 // 100) - 1)]


class _Run:
    """One (users, operation type, operations per user) run: its outcomes and its makespan."""

    def __init__(self, outcomes: list[Outcome], seconds: float) -> None:
        self.outcomes, self.seconds = outcomes, seconds

    @property
    def throughput_per_min(self) -> float:
        done = sum(1 for o in self.outcomes if o.ok)
        return 60.0 * done / self.seconds if self.seconds > 0 else 0.0

    @property
    def p90_latency(self) -> float:
        return _p90([o.latency_s for o in self.outcomes if o.ok] or [float("inf")])


def multi_user_inference(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    users_param = p["concurrent_users"]
    user_levels = [int(u) for u in (users_param if isinstance(users_param, list) else [users_param])]
    per_user = [int(n) for n in p.get("operations_per_user", [1])]
    kinds = [str(k) for k in p.get("operation_types", ["identical_operations"])]
    timeout = float(p.get("request_timeout_s", 600))
    store = ensure_models(ctx)
    models = _model_set(ctx, store, str(p.get("model", "tiny")))
    scaling = isinstance(users_param, list)
    with Inputs() as inputs, open_sessions(ctx, store, real_devices()[:1], cache_mib=2048,
                                           inference_slots=max(1, len(models))) as (session,):
        needed = {n for m in models for n in [m] + [x for x in store.names()
                                                    if store.entry(x).kind in ("controlnet", "lora")
                                                    and m in store.entry(x).depends_on]}
        for name in sorted(needed, key=lambda n: store.entry(n).kind != "sd_pipeline"):
            session.host.load(name)
        every_job = [j for kind in kinds for n in per_user for u in range(max(user_levels))
                     for j in _jobs_for(store, models, kind, u, n)]
        refs = render_references(session, every_job, inputs, timeout)
        rec.note("references", len(refs))

        def run(users: int, kind: str, n: int) -> _Run:
            per = [_jobs_for(store, models, kind, u, n) for u in range(users)]
            # drain() hands the next job to whichever user is free; interleave so each user's share is n
            order = [per[u][i] for i in range(n) for u in range(users)]
            t0 = time.perf_counter()
            outcomes = [o for _, o in drain([session] * users, order, inputs, timeout)]
            return _Run(outcomes, time.perf_counter() - t0)

        for kind in kinds:
            for n in per_user:
                single = run(1, kind, n) if scaling else None
                for users in user_levels:
                    r = run(users, kind, n)
                    labels = {"users": users, "operation_type": kind, "operations_per_user": n}
                    for o in r.outcomes:
                        conflict = (not o.ok) and any(o.error.startswith(c) for c in CONFLICT_CODES)
                        rec.record("resource_conflict_error", 1.0 if not o.ok else 0.0, "count", **labels,
                                   **({"error": o.error, "conflict": conflict} if o.error else {}))
                        if o.ok:
                            rec.record("request_latency_s", o.latency_s, "s", **labels)
                            bad, mad = _mismatch(refs[o.job], o)
                            rec.record("output_mismatch_detected", bad, "count", **labels, mean_abs_diff=mad)
                    rec.record("throughput_per_min", r.throughput_per_min, "per_min", **labels)
                    if single is not None and single.throughput_per_min > 0:
                        if users in SCALING_USERS:
                            eff = r.throughput_per_min / (users * single.throughput_per_min)
                            rec.record("throughput_scaling_efficiency_ratio", eff, "ratio", **labels)
                        if users == LATENCY_USERS:
                            rec.record("latency_increase_at_50_users_ratio",
                                       r.p90_latency / single.p90_latency - 1.0, "ratio", **labels)
                if single is not None:
                    rec.note(f"single_user_{kind}_{n}", {"throughput_per_min": round(single.throughput_per_min, 1),
                                                         "p90_latency_s": round(single.p90_latency, 4)})
    rec.note("serving", f"one worker, {len(models)} inference slot(s) (one per pipeline), models {models}")
    rec.note("comparison", "output_mismatch: 1 when the output's sha256 differs from the same request rendered "
                           "alone on the same worker before the run")


RUNNERS = {
    "cross_domain.multi_user_inference": (USER_METRICS, multi_user_inference),
}
