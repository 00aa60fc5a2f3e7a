"""1.6 mixed operation concurrency: users running the spec's mix (inference 40 %, model loading 30 %,
postprocessing 20 %, system maintenance 10 %) at once through the worker's job queue, with priorities
(inference most urgent, maintenance least).

Every operation goes through ``job.run`` so the worker's own dispatcher decides the order, and its
dispatch trace (``queue.trace``) is what the priority-inversion and idle-device lines judge: per
dispatch decision, an inversion when a more urgent job was waiting, idle when the slot sat free past
a small tolerance while a job waited (``batch_scheduling.analyse_dispatch``).

Interference: each operation's result against the same operation run alone before the run (image
digests for inference and postprocessing; the loaded model's files for a load; maintenance has no
output and counts only by failing), and any failure is charged as interference or as a conflict
(out of memory, a timeout, a refusal).

Model loading loads one of two extra pipelines and maintenance unloads them (never the pipeline
inference uses, as a real maintenance task would not pull a model out from under its users), so a
load is real work and not a cache hit every time.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.batch_scheduling import analyse_dispatch
from hybrid_assets.runners.model_support import ensure_models, pipelines
from hybrid_assets.runners.postprocess_support import shm_input
from hybrid_assets.runners.queue_support import queue_session, read_trace
from workers.host.errors import WorkerError
from workers.postprocess import samples
from workers.protocol.images import ShmLedger

MIXED_METRICS = frozenset({
    "cross_operation_interference_detected", "resource_conflict_error", "idle_device_while_queued_detected",
    "priority_inversion_detected", "operation_latency_s",
})
PRIORITY = {"inference_operations": 2, "postprocessing_operations": 4, "model_loading_operations": 5,
            "system_maintenance_operations": 8}
CONFLICT_CODES = ("OUT_OF_MEMORY", "DEADLINE_EXCEEDED", "TIMEOUT", "QUEUE_FULL", "CACHE_FULL", "DEVICE_UNAVAILABLE")
IDLE_TOLERANCE_S = 0.05
OP_TIMEOUT_S = 300.0
SEEDS = 6  # distinct inference / postprocessing requests: each is rendered alone first


class _Ops:
    """The operation of each kind, as (op, params, key for the alone-reference)."""

    def __init__(self, base: str, extras: list[str], images: list[dict[str, Any]]) -> None:
        self.base, self.extras, self.images = base, extras, images

    def make(self, kind: str, rng: random.Random) -> tuple[str, dict[str, Any], str]:
        if kind == "inference_operations":
            seed = rng.randrange(SEEDS)
            return ("inference.run", {"model": self.base, "width": 64, "height": 64, "steps": 4, "seed": seed,
                                      "output": "digest", "progress": False}, f"infer:{seed}")
        if kind == "postprocessing_operations":
            j = rng.randrange(len(self.images))
            return "postprocess.enhance", {"image": self.images[j], "level": "standard", "output": "digest"}, f"pp:{j}"
        if kind == "model_loading_operations":
            name = rng.choice(self.extras)
            return "model.load", {"name": name}, f"load:{name}"
        if kind == "system_maintenance_operations":
            task = rng.choice(("unload", "memory", "devices"))
            if task == "unload":
                name = rng.choice(self.extras)
                return "model.unload", {"name": name}, f"unload:{name}"
            if task == "memory":
                return "memory.stats", {"device": "cpu"}, "memory"
            return "discover_devices", {"probe_dtypes": False, "use_cache": True}, "devices"
        raise ValueError(f"unknown operation kind {kind!r}; known: {list(PRIORITY)}")


def _output(op: str, result: dict[str, Any]) -> str:
    """What must be the same as when the operation ran alone ('' for operations without an output)."""
    if op == "inference.run":
        return str(result["sha256"][0])
    if op == "postprocess.enhance":
        return str(result["sha256"])
    if op == "model.load":
        return str(result["name"])  # resident afterwards (a failure to load is an error, counted as such)
    return ""


def mixed_operation_concurrency(ctx: RunnerContext) -> None:
    p = ctx.params
    rec = ctx.recorder
    mix = {str(k): float(v) for k, v in p["operation_mix"].items()}
    unknown = set(mix) - set(PRIORITY)
    if unknown:
        raise ValueError(f"operation_mix: unknown kinds {sorted(unknown)}; known: {list(PRIORITY)}")
    levels = [int(u) for u in p.get("concurrent_users", [5])]
    total = int(p.get("operations", 200))
    store = ensure_models(ctx)
    names = pipelines(store)
    if len(names) < 3:
        raise RuntimeError(f"the mix needs a pipeline for inference and two to load; the store has {names}")
    base, extras = names[0], names[1:3]
    ledger = ShmLedger()
    try:
        images = [shm_input(ledger, samples.image(64, j)) for j in range(3)]
        ops = _Ops(base, extras, images)
        with queue_session(ctx, capacity=2000, concurrency=1, models=(base,)) as s:
            client = s.client
            client.request("memory.configure", {"device": "cpu", "budget_bytes": 64 << 20})
            alone: dict[str, str] = {}
            for key_kind in PRIORITY:  # every distinct operation alone, before the run
                for r in range(64):
                    op, params, key = ops.make(key_kind, random.Random(r))
                    if key not in alone:
                        alone[key] = _output(op, client.request("job.run", {"op": op, "params": params},
                                                                timeout=OP_TIMEOUT_S)["result"])
            for users in levels:
                _level(ctx, client, ops, mix, users, total, alone)
    finally:
        ledger.unlink_all()
    rec.note("mix", {"priorities": PRIORITY, "base_model": base, "loaded_and_unloaded": extras,
                     "idle_tolerance_s": IDLE_TOLERANCE_S})


def _level(ctx: RunnerContext, client: Any, ops: _Ops, mix: dict[str, float], users: int, total: int,
           alone: dict[str, str]) -> None:
    rec = ctx.recorder
    kinds, weights = list(mix), [mix[k] for k in mix]
    _, last = read_trace(client)
    lock = threading.Lock()
    left = [total]
    outcomes: list[tuple[str, str, str, float, Any]] = []

    def user(u: int) -> None:
        rng = random.Random(1000 * users + u)
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            kind = rng.choices(kinds, weights)[0]
            op, params, key = ops.make(kind, rng)
            t0 = time.perf_counter()
            try:
                out: Any = client.request("job.run", {"op": op, "params": params}, timeout=OP_TIMEOUT_S,
                                          priority=PRIORITY[kind])["result"]
            except WorkerError as exc:
                out = exc
            with lock:
                outcomes.append((kind, op, key, time.perf_counter() - t0, out))

    threads = [threading.Thread(target=user, args=(u,), daemon=True) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kind, op, key, latency, out in outcomes:
        labels = {"users": users, "kind": kind, "op": op}
        if isinstance(out, WorkerError):
            conflict = out.code in CONFLICT_CODES
            rec.record("resource_conflict_error", float(conflict), "count", **labels, error=out.code)
            rec.record("cross_operation_interference_detected", float(not conflict), "count", **labels,
                       error=f"{out.code}: {out.message[:120]}")
            continue
        rec.record("resource_conflict_error", 0.0, "count", **labels)
        rec.record("operation_latency_s", latency, "s", **labels)
        differs = key in alone and _output(op, out) != alone[key]
        rec.record("cross_operation_interference_detected", float(differs), "count", **labels)
    entries, _ = read_trace(client, last)
    for d in analyse_dispatch(entries, {}, IDLE_TOLERANCE_S):
        labels = {"users": users, "priority": d["priority"]}
        rec.record("priority_inversion_detected", float(d["inversion"]), "count", **labels)
        rec.record("idle_device_while_queued_detected", float(d["idle"]), "count", **labels,
                   idle_gap_s=round(d["idle_gap_s"], 4))


RUNNERS = {
    "cross_domain.mixed_operation_concurrency": (MIXED_METRICS, mixed_operation_concurrency),
}
