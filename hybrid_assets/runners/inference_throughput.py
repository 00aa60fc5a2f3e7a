"""Inference throughput: batch 4 vs 1 (4.5), sustained closed loops (2.5 and 4.5), the 2.5 throughput ramp
and mixed-type stress, multi-GPU scaling and resource utilisation (4.5, GPU lines).

Devices are the GPUs the host sees, else the CPU; one dedicated worker per device. Output quality under
load is 1 - SSIM against the same request rendered alone on the device's own worker before the load
(0.0 when bitwise equal), see inference_latency.QUALITY_DEFINITION.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import psutil

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.ground_truth import observe
from hybrid_assets.runners.inference_latency import (
    PROMPTS,
    QUALITY_DEFINITION,
    Inputs,
    Job,
    Outcome,
    Session,
    companion,
    compare,
    median,
    open_sessions,
    paired,
    real_devices,
    render_references,
    resolve_pipeline,
    run_job,
    warm_up,
)
from hybrid_assets.runners.model_support import ensure_models
from workers.models.store import ModelStore

BATCH_METRICS = frozenset({"throughput_batch4_over_batch1_ratio"})
SUSTAINED_METRICS = frozenset({"throughput_per_device_per_min", "inference_error", "worker_crash_count",
                               "quality_degradation_ratio", "inference_latency_s", "inferences_per_h",
                               "inference_failed"})
RAMP_METRICS = frozenset({"max_sustainable_throughput_per_min", "achieved_throughput_per_min",
                          "quality_degradation_ratio", "inference_latency_s", "inference_error"})
MIXED_METRICS = frozenset({"quality_degradation_ratio", "inference_error", "worker_crash_count",
                           "inference_latency_s", "throughput_per_min"})
SCALING_METRICS = frozenset({"gpu_scaling_efficiency_ratio", "inferences_per_h"})
UTILIZATION_METRICS = frozenset({"gpu_utilization_ratio", "vram_efficiency_ratio", "cpu_usage_ratio"})
# the case's request type -> (worker mode, companion model kind)
TYPES = {"text_to_image": ("text_to_image", None), "image_to_image": ("image_to_image", None),
         "controlnet": ("controlnet", "controlnet"), "controlnet_inference": ("controlnet", "controlnet"),
         "lora": ("text_to_image", "lora"), "lora_inference": ("text_to_image", "lora")}
NO_GPU = "no CUDA device on this testbed (NVML sees none): the line is about GPUs"


def _job(store: ModelStore, model: str, kind: str, size: int, steps: int, seed: int, batch: int = 1) -> Job:
    if kind not in TYPES:
        raise ValueError(f"inference type {kind!r} is not one of {sorted(TYPES)}")
    mode, extra = TYPES[kind]
    return Job(model, mode, size, size, steps, seed=seed, batch=batch, prompt=PROMPTS[seed % len(PROMPTS)],
               control_model=companion(store, model, "controlnet") if extra == "controlnet" else None,
               lora=companion(store, model, "lora") if extra == "lora" else None)


def _load_for(session: Session, jobs: Sequence[Job]) -> None:
    for name in dict.fromkeys(n for j in jobs for n in (j.model, j.control_model, j.lora) if n):
        session.host.load(name)


def closed_loop(sessions: Sequence[Session], pick: Callable[[int], Job], inputs: Inputs, *, duration_s: float,
                depth: int, timeout: float) -> tuple[float, list[tuple[Session, Outcome]]]:
    """``depth`` requests in flight per worker for ``duration_s`` (each user sends its next request when the
    last one ends); a request started before the end runs to completion. Returns the start and outcomes."""
    results: list[tuple[Session, Outcome]] = []
    lock = threading.Lock()
    counter = itertools.count()
    t0 = time.perf_counter()
    stop = t0 + duration_s

    def user(session: Session) -> None:
        while time.perf_counter() < stop and session.client.alive:
            with lock:
                job = pick(next(counter))
            out = run_job(session.host, job, inputs, timeout=timeout)
            with lock:
                results.append((session, out))
            if out.lost:
                return

    threads = [threading.Thread(target=user, args=(s,), daemon=True) for s in sessions for _ in range(depth)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + timeout + 30)
    with lock:
        return t0, list(results)


def window_counts(ends: Sequence[float], t0: float, window_s: float, windows: int) -> list[int]:
    """Completions per full window of ``window_s`` from ``t0`` (a partial last window is not counted)."""
    counts = [0] * windows
    for end in ends:
        k = int((end - t0) // window_s)
        if 0 <= k < windows:
            counts[k] += 1
    return counts


def _record_outcomes(ctx: RunnerContext, outcomes: Sequence[tuple[Session, Outcome]],
                     refs: dict[str, dict[Job, np.ndarray]], *, failed_metric: Sequence[str] = ("inference_error",),
                     **labels: object) -> None:
    """Per request a 0/1 failure and its latency; per image 1 - SSIM against the device's reference."""
    rec = ctx.recorder
    for session, out in outcomes:
        dev = session.device.name
        extra = {"error": out.error} if out.error else {}
        for metric in failed_metric:
            rec.record(metric, 0.0 if out.ok else 1.0, "count", device=dev, **labels, **extra)
        if not out.ok or out.images is None:
            continue
        rec.record("inference_latency_s", out.latency_s, "s", device=dev, generation_s=out.result["seconds"],
                   queue_s=out.result["queue_s"], **labels)
        for i, cmp in enumerate(compare(refs[dev][out.job], out.images)):
            rec.record("quality_degradation_ratio", cmp.degradation, "ratio", device=dev, seed=out.job.seed + i,
                       identical=cmp.identical, mean_abs_diff=cmp.mean_abs_diff, **labels)


def _prepared(ctx: RunnerContext, sessions: Sequence[Session], jobs: Sequence[Job], inputs: Inputs,
              timeout: float) -> dict[str, dict[Job, np.ndarray]]:
    refs = {}
    for s in sessions:
        _load_for(s, jobs)
        # rendering the references, alone and before the load, also warms every shape up
        refs[s.device.name] = render_references(s, jobs, inputs, timeout)
    ctx.recorder.note("quality_definition", QUALITY_DEFINITION)
    ctx.recorder.note("reference_requests", len(jobs))
    return refs


def batch_throughput(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, str(p["model"]))
    width, height, steps = int(p["width_px"]), int(p["height_px"]), int(p["steps"])
    big = int(p.get("batch_size", 4))
    timeout = float(p.get("request_timeout_s", 600))
    device = real_devices()[0]
    t1s, tbs = [], []
    with Inputs() as inputs, open_sessions(ctx, store, [device]) as (session,):
        session.host.load(model)
        one = Job(model, width=width, height=height, steps=steps)
        warm_up(session, [one, Job(model, width=width, height=height, steps=steps, batch=big)], inputs, timeout)
        for k in range(int(p["pairs"])):
            prompt = PROMPTS[k % len(PROMPTS)]
            a, b = paired(session, Job(model, width=width, height=height, steps=steps, seed=k * big, prompt=prompt),
                          Job(model, width=width, height=height, steps=steps, seed=k * big, batch=big,
                              prompt=prompt), inputs, swap=k % 2 == 1, timeout=timeout)
            if a.ok and b.ok:
                # images per second at batch `big` over images per second at batch 1, same prompt and seeds
                rec.record("throughput_batch4_over_batch1_ratio", (big / b.latency_s) / (1 / a.latency_s), "ratio",
                           pair=k, batch1_s=a.latency_s, batch_s=b.latency_s, batch=big)
                t1s.append(a.latency_s)
                tbs.append(b.latency_s)
            else:
                rec.note(f"pair_failed_{k}", a.error or b.error)
    rec.note("device", device.name)
    rec.note("model", model)
    rec.note("median_batch1_s", median(t1s))
    rec.note(f"median_batch{big}_s", median(tbs))


def sustained_throughput(ctx: RunnerContext) -> None:
    """Part 2 (resolution, inference_type; every device) and part 4 (width_px/height_px; one GPU) params."""
    p = ctx.params
    rec = ctx.recorder
    part2 = "resolution" in p
    size = int(p["resolution"]) if part2 else int(p["width_px"])
    if not part2 and int(p["height_px"]) != size:
        raise ValueError(f"sustained_throughput: square points only, got {p['width_px']}x{p['height_px']}")
    steps, duration_s, window_s = int(p["steps"]), float(p["duration_s"]), float(p["window_s"])
    timeout = float(p.get("request_timeout_s", 600))
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, str(p["model"]))
    kind = str(p.get("inference_type", "text_to_image"))
    jobs = [_job(store, model, kind, size, steps, seed) for seed in range(int(p.get("reference_inputs", 6)))]
    devices = real_devices() if part2 else real_devices()[:1]
    with Inputs() as inputs, open_sessions(ctx, store, devices) as sessions:
        refs = _prepared(ctx, sessions, jobs, inputs, timeout)
        # two in flight per worker: the next request waits in the worker's queue, the device never idles
        t0, outcomes = closed_loop(sessions, lambda i: jobs[i % len(jobs)], inputs, duration_s=duration_s,
                                   depth=int(p.get("in_flight_per_device", 2)), timeout=timeout)
        crashed = [s.device.name for s in sessions if not s.client.alive]
    _record_outcomes(ctx, outcomes, refs, failed_metric=("inference_error", "inference_failed"))
    windows = int(duration_s // window_s)
    per_h: dict[str, list[float]] = {}
    for s in sessions:
        ends = [o.ended for ss, o in outcomes if ss is s and o.ok]
        for k, n in enumerate(window_counts(ends, t0, window_s, windows)):
            rec.record("throughput_per_device_per_min", n * 60.0 / window_s, "per_min", device=s.device.name,
                       window=k)
            per_h.setdefault(s.device.name, []).append(n * 3600.0 / window_s)
            if s.device.kind == "cuda":
                rec.record("inferences_per_h", n * 3600.0 / window_s, "per_h", device=s.device.name, window=k)
    if all(s.device.kind != "cuda" for s in sessions):
        rec.skip("inferences_per_h", NO_GPU)
        rec.note("cpu_inferences_per_h_by_window", per_h)  # context, not a GPU verdict
    rec.record("worker_crash_count", float(len(crashed)), "count", crashed=",".join(crashed))
    rec.note("devices", [d.name for d in devices])
    rec.note("point", {"model": model, "type": kind, "size": size, "steps": steps, "window_s": window_s,
                       "windows": windows, "requests": len(outcomes)})


def arrivals(rate_per_min: float, step_s: float) -> int:
    """Evenly spaced arrival instants in [0, step_s) at ``rate_per_min`` (at least one)."""
    return max(1, math.ceil(step_s * rate_per_min / 60.0 - 1e-9))


def _ramp_step(session: Session, rate_per_min: float, step_s: float, jobs: Sequence[Job], inputs: Inputs,
               timeout: float, first_seq: int) -> tuple[float, list[Outcome]]:
    """Open loop: evenly spaced requests at ``rate_per_min`` for ``step_s``; waits for every one to end."""
    n = arrivals(rate_per_min, step_s)
    interval = 60.0 / rate_per_min
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def one(job: Job) -> None:
        out = run_job(session.host, job, inputs, timeout=timeout)
        with lock:
            outcomes.append(out)

    threads = []
    start = time.perf_counter()
    for k in range(n):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, args=(jobs[(first_seq + k) % len(jobs)],), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout + 30)
    return start, outcomes


def _ramp_devices(active: Sequence[Session], rate: float, step_s: float, jobs: Sequence[Job], inputs: Inputs,
                  timeout: float, first_seq: int) -> dict[str, tuple[float, list[Outcome]]]:
    """One step on every device still ramping, at once (one worker per device)."""
    out: dict[str, tuple[float, list[Outcome]]] = {}

    def run(s: Session) -> None:
        out[s.device.name] = _ramp_step(s, rate, step_s, jobs, inputs, timeout, first_seq)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in active]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def throughput_ramp(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    rates = [float(r) for r in p["scaling_steps_per_min"]]
    step_s, size, steps = float(p["step_duration_s"]), int(p["resolution"]), int(p["steps"])
    timeout = float(p.get("request_timeout_s", 600))
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, str(p.get("model", "configured")))
    kind = str(p.get("inference_type", "text_to_image"))
    jobs = [_job(store, model, kind, size, steps, seed) for seed in range(int(p.get("reference_inputs", 6)))]
    devices = real_devices()
    best: dict[str, float | None] = {d.name: None for d in devices}
    ceiling: dict[str, bool] = {d.name: False for d in devices}
    seq = 0
    with Inputs() as inputs, open_sessions(ctx, store, devices) as sessions:
        refs = _prepared(ctx, sessions, jobs, inputs, timeout)
        active = list(sessions)
        for rate in rates:
            if not active:
                break
            steps_out = _ramp_devices(active, rate, step_s, jobs, inputs, timeout, seq)
            seq += arrivals(rate, step_s)
            for s in list(active):
                start, outs = steps_out[s.device.name]
                end = start + step_s
                _record_outcomes(ctx, [(s, o) for o in outs], refs, rate_per_min=rate)
                # sustained: every request completed, and the waiting queue did not grow over the step: at the
                # step's end at most one request (the one being served) is still unanswered
                backlog = sum(1 for o in outs if o.ended > end)
                sustained = all(o.ok for o in outs) and backlog <= 1
                # the completion rate: the step's answered requests over the time they took: the arrivals' own
                # period (n x interval, so that a step offers exactly its rate), or more when the last answer
                # comes after it
                period = len(outs) * 60.0 / rate
                ends = [o.ended for o in outs if o.ok]
                span = max(period, max(ends) - start) if ends else period
                achieved = len(ends) * 60.0 / span
                rec.record("achieved_throughput_per_min", achieved, "per_min", device=s.device.name,
                           rate_per_min=rate, sustained=sustained, backlog_at_end=backlog, requests=len(outs),
                           span_s=round(span, 3))
                if sustained:
                    best[s.device.name] = achieved
                    ceiling[s.device.name] = rate == rates[-1]
                else:
                    active.remove(s)
    for name, value in best.items():
        # none sustained: 0 per minute; every step sustained: the last step's rate is a floor, not a maximum
        rec.record("max_sustainable_throughput_per_min", value or 0.0, "per_min", device=name,
                   none_sustained=value is None, ceiling_not_reached=ceiling[name])
    rec.note("point", {"model": model, "type": kind, "size": size, "steps": steps, "step_duration_s": step_s})
    rec.note("sustained_definition", "every request of the step completed without error and at most one (the "
                                     "one in service) was unanswered at the step's end; achieved = answered "
                                     "requests x 60 / max(requests x arrival interval, time from the step's "
                                     "start to its last answer)")


def mixed_types(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    timeout = float(p.get("request_timeout_s", 600))
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, str(p.get("model", "configured")))
    mix = {str(k): float(v) for k, v in p["inference_mix"].items()}
    rng = random.Random(int(p.get("seed", 7)))
    # a finite pool per type (resolution, steps and batch drawn uniformly), each rendered alone first: the
    # loop draws from it, so every output has a reference
    per_type = int(p.get("reference_pool_per_type", 2))
    pool = {kind: [_job(store, model, kind, int(rng.choice(p["resolutions"])), int(rng.choice(p["step_counts"])),
                        seed=100 * i + j, batch=int(rng.choice(p["batch_sizes"])))
                   for j in range(per_type)] for i, kind in enumerate(mix)}
    kind_of = {job: kind for kind, jobs in pool.items() for job in jobs}
    draw = random.Random(int(p.get("seed", 7)) + 1)
    kinds, weights = list(mix), list(mix.values())

    def pick(_i: int) -> Job:
        return draw.choice(pool[draw.choices(kinds, weights)[0]])

    duration_s = float(p["duration_s"])
    device = real_devices()[0]
    all_jobs = [j for jobs in pool.values() for j in jobs]
    with Inputs() as inputs, open_sessions(ctx, store, [device]) as sessions:
        refs = _prepared(ctx, sessions, all_jobs, inputs, timeout)
        t0, outcomes = closed_loop(sessions, pick, inputs, duration_s=duration_s, depth=int(p["concurrency"]),
                                   timeout=timeout)
        crashed = [s.device.name for s in sessions if not s.client.alive]
    for kind in mix:
        part = [(s, o) for s, o in outcomes if kind_of[o.job] == kind]
        _record_outcomes(ctx, part, refs, type=kind)
        done = [o for _, o in part if o.ok and o.ended <= t0 + duration_s]
        rec.record("throughput_per_min", len(done) * 60.0 / duration_s, "per_min", type=kind,
                   images=sum(o.job.batch for o in done))
    done_all = [o for _, o in outcomes if o.ok and o.ended <= t0 + duration_s]
    rec.record("throughput_per_min", len(done_all) * 60.0 / duration_s, "per_min", type="all",
               images=sum(o.job.batch for o in done_all))
    rec.record("worker_crash_count", float(len(crashed)), "count")
    rec.note("pool", {k: [f"{j.mode}{'+lora' if j.lora else ''} {j.width}px {j.steps} steps batch {j.batch}"
                          for j in jobs] for k, jobs in pool.items()})
    rec.note("requests_by_type", {k: sum(1 for _, o in outcomes if kind_of[o.job] == k) for k in mix})


def multi_gpu_scaling(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    devices = [d for d in real_devices() if d.kind == "cuda"]
    if not devices:
        rec.skip("gpu_scaling_efficiency_ratio", NO_GPU)
        rec.skip("inferences_per_h", NO_GPU)
        return
    if len(devices) < 2:
        rec.skip("gpu_scaling_efficiency_ratio", f"needs at least 2 GPUs, this testbed has {len(devices)}")
    size, steps = int(p["width_px"]), int(p["steps"])
    seconds = float(p["seconds_per_point"])
    timeout = float(p.get("request_timeout_s", 600))
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, str(p["model"]))
    jobs = [_job(store, model, "text_to_image", size, steps, seed) for seed in range(6)]
    counts = [int(n) for n in p["gpu_counts"] if int(n) <= len(devices)]
    rec.note("gpu_counts_beyond_testbed", [int(n) for n in p["gpu_counts"] if int(n) > len(devices)])
    rate: dict[int, float] = {}
    with Inputs() as inputs, open_sessions(ctx, store, devices[:max(counts)]) as sessions:
        for s in sessions:
            _load_for(s, jobs)
            warm_up(s, jobs[:1], inputs, timeout)
        for n in counts:
            t0, outcomes = closed_loop(sessions[:n], lambda i: jobs[i % len(jobs)], inputs, duration_s=seconds,
                                       depth=2, timeout=timeout)
            done = sum(1 for _, o in outcomes if o.ok and o.ended <= t0 + seconds)
            rate[n] = done / seconds
            rec.record("inferences_per_h", rate[n] * 3600.0, "per_h", gpus=n,
                       failed=sum(1 for _, o in outcomes if not o.ok))
            if n >= 2 and rate.get(1):
                rec.record("gpu_scaling_efficiency_ratio", rate[n] / (n * rate[1]), "ratio", gpus=n)


class _NvmlSampler:
    """NVML GPU utilisation of one device every ``interval_s``, from the host process."""

    def __init__(self, index: int, interval_s: float) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self.samples.append((time.perf_counter(), util / 100.0))

    def mean_between(self, start: float, end: float) -> float | None:
        got = [u for t, u in list(self.samples) if start <= t <= end]
        return float(np.mean(got)) if got else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._nvml.nvmlShutdown()


def resource_utilization(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    device = real_devices()[0]
    gpu = device.kind == "cuda"
    if not gpu:
        # the CPU line is 'CPU usage during GPU inference': a CPU inference's CPU share is another quantity
        # (it is the inference itself), so it is noted below, not recorded against the line
        for metric in UTILIZATION_METRICS:
            rec.skip(metric, NO_GPU)
    else:
        rec.skip("vram_efficiency_ratio", "the worker reports no torch allocator peak (max_memory_allocated) per "
                                          "inference, only process RSS: the numerator is not observable here")
    size, steps = int(p["width_px"]), int(p["steps"])
    timeout = float(p.get("request_timeout_s", 600))
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, str(p["model"]))
    cores = psutil.cpu_count(logical=True) or 1
    me = psutil.Process()
    sampler = _NvmlSampler(observe().gpus[0].index, float(p.get("sample_ms", 100)) / 1000.0) if gpu else None
    ratios: list[float] = []
    try:
        with Inputs() as inputs, open_sessions(ctx, store, [device]) as (session,):
            session.host.load(model)
            warm_up(session, [Job(model, width=size, height=size, steps=steps)], inputs, timeout)
            worker = psutil.Process(session.client.pid)
            for i in range(int(p["inferences"])):
                before = sum(worker.cpu_times()[:2]) + sum(me.cpu_times()[:2])
                out = run_job(session.host, Job(model, width=size, height=size, steps=steps, seed=i,
                                                prompt=PROMPTS[i % len(PROMPTS)]), inputs, timeout=timeout)
                used = sum(worker.cpu_times()[:2]) + sum(me.cpu_times()[:2]) - before
                if not out.ok:
                    rec.note(f"inference_failed_{i}", out.error)
                    continue
                # CPU time of the worker and host processes over the inference's wall time x logical cores
                ratio = used / (out.latency_s * cores)
                ratios.append(ratio)
                if sampler is not None:
                    time.sleep(sampler.interval_s)  # the sample covering the inference's end
                    util = sampler.mean_between(out.started, out.ended + sampler.interval_s)
                    rec.record("cpu_usage_ratio", ratio, "ratio", inference=i, latency_s=out.latency_s)
                    if util is not None:
                        rec.record("gpu_utilization_ratio", util, "ratio", inference=i)
    finally:
        if sampler is not None:
            sampler.close()
    rec.note("device", device.name)
    rec.note("logical_cores", cores)
    if not gpu:
        rec.note("cpu_inference_cpu_usage_ratios", [round(r, 3) for r in ratios])


RUNNERS = {
    "inference.batch_throughput": (BATCH_METRICS, batch_throughput),
    "inference.sustained_throughput": (SUSTAINED_METRICS, sustained_throughput),
    "inference.throughput_ramp": (RAMP_METRICS, throughput_ramp),
    "inference.mixed_types": (MIXED_METRICS, mixed_types),
    "inference.multi_gpu_scaling": (SCALING_METRICS, multi_gpu_scaling),
    "inference.resource_utilization": (UTILIZATION_METRICS, resource_utilization),
}
