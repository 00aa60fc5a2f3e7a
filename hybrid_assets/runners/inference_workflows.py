"""Part-1 inference workflows: inference distributed across devices (1.1), from a finished load straight to
inference (1.2), concurrent requests over every model of one inference type (1.3).

Every output is compared bitwise (sha256 of the raw uint8 bytes) with a reference: the same request (model,
input, seed) rendered alone on an idle worker of the same device kind; a mismatch is labelled with the mean
absolute difference / 255. The model runtime serves real devices only (cpu, cuda:N), so a simulated device
here is one more worker process backed by the testbed's device: the host distributes work across workers
exactly as across devices, and the outputs of two such workers must agree bit for bit like two GPUs of a kind.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.inference_latency import (
    CLASS_POINTS,
    GPU_MODEL,
    PROMPTS,
    Device,
    Inputs,
    Job,
    Outcome,
    Session,
    compare,
    median,
    open_sessions,
    real_devices,
    render_references,
    resolve_pipeline,
    run_job,
    warm_up,
)
from hybrid_assets.runners.model_support import ensure_models, pipelines
from workers.host import WorkerError
from workers.models import generate
from workers.models.store import ModelStore

COORDINATION_METRICS = frozenset({"distributed_request_error", "device_participation_ok",
                                  "cross_device_output_mismatch_detected", "distributed_request_latency_s"})
TRANSITION_METRICS = frozenset({"first_inference_not_ready_detected", "output_mismatch_detected",
                                "first_inference_latency_s"})
CONCURRENT_METRICS = frozenset({"concurrent_request_error", "idle_device_while_queued_detected",
                                "output_mismatch_detected", "request_latency_s"})
BITWISE_NOTE = ("output_mismatch: 1 when the output's sha256 (raw uint8 bytes) differs from the same request "
                "rendered alone on an idle worker of the same device kind; mean_abs_diff (/255) labels a mismatch")


def _point(ctx: RunnerContext, model_class: str) -> tuple[int, int]:
    size, steps = CLASS_POINTS.get(model_class, CLASS_POINTS["full"])
    return int(ctx.params.get("resolution", size)), int(ctx.params.get("steps", steps))


def drain(bound: Sequence[Session], jobs: Sequence[Job], inputs: Inputs,
          timeout: float) -> list[tuple[Session, Outcome]]:
    """One user thread per entry of ``bound`` (a session may appear several times: that many requests in
    flight on it); each takes the next job when its last one ends, until none is left."""
    it: Iterator[Job] = iter(list(jobs))
    lock = threading.Lock()
    results: list[tuple[Session, Outcome]] = []

    def user(session: Session) -> None:
        while True:
            with lock:
                job = next(it, None)
            if job is None:
                return
            out = run_job(session.host, job, inputs, timeout=timeout)
            with lock:
                results.append((session, out))
            if out.lost:
                return

    threads = [threading.Thread(target=user, args=(s,), daemon=True) for s in bound]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _on_each(sessions: Sequence[Session], job: Job, inputs: Inputs, timeout: float) -> list[tuple[Session, Outcome]]:
    """The same request on every session at once."""
    results: list[tuple[Session, Outcome]] = []
    lock = threading.Lock()

    def one(session: Session) -> None:
        out = run_job(session.host, job, inputs, timeout=timeout)
        with lock:
            results.append((session, out))

    threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _mismatch(ref: np.ndarray, out: Outcome) -> tuple[float, float]:
    """(1.0 if any image differs bitwise else 0.0, the largest mean absolute difference / 255)."""
    assert out.images is not None
    cmps = compare(ref, out.images)
    return (0.0 if all(c.identical for c in cmps) else 1.0), max(c.mean_abs_diff for c in cmps)


# ---- 1.1 multi-device coordination ------------------------------------------------------------------------


def _coordination_devices(simulated: int) -> list[Device]:
    real = real_devices()
    if len(real) >= 2 or simulated <= 0:
        return real
    back = real[0]
    return [Device(f"sim:{back.kind}{k}", back.backing, back.kind) for k in range(max(2, simulated))]


def multi_device_coordination(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    model_class = str(p.get("model", "tiny"))
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, model_class)
    size, steps = _point(ctx, model_class)
    timeout = float(p.get("request_timeout_s", 600))
    devices = _coordination_devices(int(p.get("simulated_devices", 0)))
    per_run = int(p["requests_per_run"])
    cross_kind: list[dict[str, object]] = []
    with Inputs() as inputs, open_sessions(ctx, store, devices) as sessions:
        for s in sessions:
            s.host.load(model)
            warm_up(s, [Job(model, width=size, height=size, steps=steps)], inputs, timeout)
        for run in range(int(p["runs"])):
            jobs = [Job(model, width=size, height=size, steps=steps, seed=run * 1000 + i,
                        prompt=PROMPTS[(run + i) % len(PROMPTS)]) for i in range(per_run)]
            # the host's distribution: each device pulls the next request when it finishes one
            results = drain(sessions, jobs, inputs, timeout)
            served = {s.device.name for s, o in results if o.ok}
            for s, o in results:
                rec.record("distributed_request_error", 0.0 if o.ok else 1.0, "count", run=run, device=s.device.name,
                           **({"error": o.error} if o.error else {}))
                if o.ok:
                    rec.record("distributed_request_latency_s", o.latency_s, "s", run=run, device=s.device.name)
            rec.record("device_participation_ok", 1.0 if served >= {d.name for d in devices} else 0.0, "count",
                       run=run, served=",".join(sorted(served)))
            # the same input and seed on every device at once
            check = _on_each(sessions, jobs[0], inputs, timeout) if len(sessions) > 1 else []
            by_kind: dict[str, list[tuple[str, Outcome]]] = {}
            for s, o in check:
                by_kind.setdefault(s.device.kind, []).append((s.device.name, o))
            for kind, outs in by_kind.items():
                digests = {name: tuple(o.result.get("sha256", ())) if o.ok else None for name, o in outs}
                failed = [name for name, d in digests.items() if d is None]
                if failed or len(outs) < 2:
                    rec.note(f"cross_device_check_incomplete_run{run}_{kind}", failed or "one device of the kind")
                    continue
                first = outs[0][1]
                assert first.images is not None
                worst = max(_mismatch(first.images, o) for _, o in outs[1:])
                rec.record("cross_device_output_mismatch_detected", worst[0], "count", run=run, kind=kind,
                           devices=",".join(digests), mean_abs_diff=worst[1])
            if len(by_kind) > 1:  # CPU vs CUDA: recorded, not judged (the spec gives no tolerance)
                firsts = {k: v[0][1].result.get("sha256") for k, v in by_kind.items() if v[0][1].ok}
                cross_kind.append({"run": run, "identical": len({tuple(d or ()) for d in firsts.values()}) == 1})
    rec.note("devices", [f"{d.name} (backed by {d.backing})" for d in devices])
    rec.note("point", {"model": model, "size": size, "steps": steps})
    if cross_kind:
        rec.note("cross_kind_comparisons", cross_kind)


# ---- 1.2 load to inference --------------------------------------------------------------------------------


def _state(session: Session) -> dict[str, object]:
    listed = session.client.request("model.list")
    return {"resident": sorted((m["name"], m["bytes"]) for m in listed["resident"]),
            "used_bytes": listed["used_bytes"], "evictions": listed["evictions"], "loading": listed["loading"]}


def load_to_inference_transition(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    model_class = str(p.get("model", "tiny"))
    store = ensure_models(ctx)
    model = resolve_pipeline(ctx, store, model_class)
    size, steps = _point(ctx, model_class)
    timeout = float(p.get("request_timeout_s", 600))
    loads, per_load = int(p["loads"]), int(p["requests_per_load"])
    jobs = [[Job(model, width=size, height=size, steps=steps, seed=n * per_load + i,
                 prompt=PROMPTS[(n + i) % len(PROMPTS)]) for i in range(per_load)] for n in range(loads)]
    dev = real_devices()[0]
    clean = Device(f"{dev.name}-reference", dev.backing, dev.kind)
    warm_model = next((m for m in pipelines(store) if m != model and m != GPU_MODEL), model)
    load_s, first_s = [], []
    with Inputs() as inputs, open_sessions(ctx, store, [dev, clean]) as (session, reference):
        # references first, in a separate clean worker, while the measured worker is idle
        reference.host.load(model)
        refs = render_references(reference, [j for js in jobs for j in js], inputs, timeout)
        reference.client.shutdown()
        # the process is warm (torch's first-call costs paid on another model), the measured model is not
        session.host.load(warm_model)
        warm_up(session, [Job(warm_model, width=size, height=size, steps=steps)], inputs, timeout)
        for n in range(loads):
            if any(m["name"] == model for m in session.client.request("model.list")["resident"]):
                session.host.unload(model)
            load_s.append(session.host.load(model).seconds)
            before = _state(session)  # a control op, answered at once: the request follows within a millisecond
            for i, job in enumerate(jobs[n]):
                out = run_job(session.host, job, inputs, timeout=timeout)
                if i == 0:
                    after = _state(session)
                    moved = [k for k in before if before[k] != after[k]]
                    not_ready = (not out.ok) or bool(moved)
                    rec.record("first_inference_not_ready_detected", 1.0 if not_ready else 0.0, "count", load=n,
                               **({"error": out.error} if out.error else {}),
                               **({"moved": ",".join(moved)} if moved else {}))
                    if out.ok:
                        rec.record("first_inference_latency_s", out.latency_s, "s", load=n,
                                   generation_s=out.result["seconds"])
                        first_s.append(out.latency_s)
                if out.ok:
                    bad, mad = _mismatch(refs[job], out)
                    rec.record("output_mismatch_detected", bad, "count", load=n, request=i, mean_abs_diff=mad)
                else:
                    rec.note(f"request_failed_load{n}_{i}", out.error)
    rec.note("point", {"model": model, "size": size, "steps": steps, "process_warmed_on": warm_model})
    rec.note("median_load_s", median(load_s))
    rec.note("median_first_inference_s", median(first_s))
    rec.note("comparison", BITWISE_NOTE)


# ---- 1.3 multi-model concurrency --------------------------------------------------------------------------


def _model_set(ctx: RunnerContext, store: ModelStore, name: str) -> list[str]:
    if name == "tiny":
        smoke = {s.name for s in generate.PROFILES["smoke"]}
        return [m for m in pipelines(store) if m in smoke]
    if name == "small":
        return [m for m in pipelines(store) if m != GPU_MODEL]
    return [resolve_pipeline(ctx, store, "configured" if name == "full" else name)]


def _variants(store: ModelStore, models: Sequence[str], kind: str, size: int, steps: int) -> list[Job]:
    """Every model of the inference type: the pipelines, or every ControlNet / LoRA built on one."""
    out = []
    for m in models:
        if kind in ("text_to_image", "image_to_image"):
            out.append(Job(m, kind, size, size, steps))
        elif kind in ("controlnet", "lora"):
            extras = [n for n in store.names() if store.entry(n).kind == kind and m in store.entry(n).depends_on]
            for x in extras:
                out.append(Job(m, "controlnet" if kind == "controlnet" else "text_to_image", size, size, steps,
                               control_model=x if kind == "controlnet" else None, lora=x if kind == "lora" else None))
        else:
            raise ValueError(f"inference_type {kind!r} is not one of text_to_image, image_to_image, controlnet, lora")
    if not out:
        raise ValueError(f"the store at {store.root} has no {kind} model over {list(models)}")
    return out


def _idle_while_waiting(o: Outcome, others: Sequence[Outcome]) -> float:
    """Seconds within ``o``'s wait (sent -> its generation starts) when no other request was generating.
    A generation spans [end - worker-reported seconds, end] on the host clock."""
    start = o.ended - float(o.result["seconds"])
    if start <= o.started:
        return 0.0
    spans = ((max(o.started, x.ended - float(x.result["seconds"])), min(start, x.ended))
             for x in others if x is not o and x.ok)
    busy = sorted((a, b) for a, b in spans if a < b)  # only what overlaps the wait
    idle, cursor = 0.0, o.started
    for a, b in busy:
        if b <= cursor:
            continue
        if a > cursor:
            idle += a - cursor
        cursor = max(cursor, b)
    return idle + max(0.0, start - cursor)


def multi_model_concurrent(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    set_name = str(p.get("model_set", "tiny"))
    store = ensure_models(ctx)
    size, steps = _point(ctx, set_name)
    kind = str(p["inference_type"])
    timeout = float(p.get("request_timeout_s", 600))
    tolerance = float(p.get("idle_tolerance_s", 0.05))
    levels = [int(c) for c in p["concurrency_levels"]]
    per_level = int(p["requests_per_level"])
    variants = _variants(store, _model_set(ctx, store, set_name), kind, size, steps)
    seeds = max(4, 12 // len(variants))
    dev = real_devices()[0]

    def job(r: int) -> Job:
        v = variants[r % len(variants)]
        s = (r // len(variants)) % seeds
        return dataclasses.replace(v, seed=s, prompt=PROMPTS[s % len(PROMPTS)])

    # several generations at once on one device: different models run in parallel, one model's requests
    # take turns (its pipeline is not thread-safe)
    slots = max(1, min(max(levels), len({(v.model, v.control_model, v.lora) for v in variants})))
    with Inputs() as inputs, open_sessions(ctx, store, [dev], inference_slots=slots) as (session,):
        for v in variants:
            for name in (v.model, v.control_model, v.lora):
                if name:
                    session.host.load(name)
        # the references, rendered alone before any concurrency, also warm every variant up
        refs = render_references(session, [job(r) for r in range(len(variants) * seeds)], inputs, timeout)
        for level in levels:
            results = [o for _, o in drain([session] * level, [job(r) for r in range(per_level)], inputs, timeout)]
            for o in results:
                labels = {"level": level, "model": o.job.lora or o.job.control_model or o.job.model}
                rec.record("concurrent_request_error", 0.0 if o.ok else 1.0, "count", **labels,
                           **({"error": o.error} if o.error else {}))
                if not o.ok:
                    continue
                rec.record("request_latency_s", o.latency_s, "s", **labels)
                bad, mad = _mismatch(refs[o.job], o)
                rec.record("output_mismatch_detected", bad, "count", **labels, mean_abs_diff=mad)
                idle = _idle_while_waiting(o, results)
                rec.record("idle_device_while_queued_detected", 1.0 if idle > tolerance else 0.0, "count",
                           **labels, idle_s=round(idle, 4))
        try:
            rec.note("worker_state_after", session.client.request("model.list")["resident"])
        except WorkerError as exc:
            rec.note("worker_state_after", f"model.list failed: {exc}")
    rec.note("models", sorted({v.lora or v.control_model or v.model for v in variants}))
    rec.note("point", {"size": size, "steps": steps, "inference_slots": slots, "references": len(refs)})
    rec.note("idle_definition", f"per request (one dispatch decision): 1 when, while it waited, no request was "
                                f"generating on the device for more than {tolerance} s in all")
    rec.note("comparison", BITWISE_NOTE)


RUNNERS = {
    "inference.multi_device_coordination": (COORDINATION_METRICS, multi_device_coordination),
    "inference.load_to_inference_transition": (TRANSITION_METRICS, load_to_inference_transition),
    "inference.multi_model_concurrent": (CONCURRENT_METRICS, multi_model_concurrent),
}
