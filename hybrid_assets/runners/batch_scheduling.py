"""Spec 1.3 batches through the worker's job queue: preparation, scheduling of concurrent batches, aggregation.

Every batch is one ``batch.run`` (items of one inference type, 64 px, ``inference_steps`` steps, seeds assigned
by the worker from ``seed_base``) on a dedicated worker with the tiny pipeline, its LoRA and ControlNet loaded;
the job queue runs one item at a time (concurrency 1: one CPU device).

- processing.batch_preparation: per batch, from its first item being built on the host (prompts, seeds,
  input images written to shared memory) to the worker's "admitted" event (every item checked, its input
  images read and verified, seeds assigned, its window queued). The text prompts are encoded by the
  pipeline when an item runs, not before: no step of this system encodes them ahead. Batches of one level
  are built and sent at once; each is cancelled once admitted (the case measures preparation; running
  76 batches of up to 1,000 items is another case's work), which answers it with every item listed.
- processing.concurrent_batch_scheduling: batches with distinct priorities (1..N, or 0..9 for 10) sent at once,
  plus high-priority probes (priority 0, one in flight at a time, ``probe_interval_s`` after the last answer)
  while they run. From the worker's
  dispatch trace (each job's enqueue, start and end on the queue's clock; a batch's items wait from the batch's
  admission): per dispatch decision, an inversion when a more urgent job was waiting, and an idle device when
  the slot stayed free longer than ``idle_tolerance_s`` while a job waited; per batch, starvation when a
  batch of the same or lower priority admitted after it completed an item before its first dispatch.
- processing.batch_aggregation: batches over the size and concurrency grid run to the end; per batch the
  results lost or duplicated (the answer and the per-item progress events) and every field of the aggregate
  that disagrees with the per-item results or with the request (count, order, key, seed, model, params
  digest, output digest, status counts, pending list, aggregate digest).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import msgspec

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.batch_support import BatchCall, input_images, item_params, published, run_together
from hybrid_assets.runners.queue_support import CONTROL, LORA, MODEL, queue_session, read_trace, request_for
from workers.host.client import WorkerClient
from workers.protocol.images import ImageRef

PREPARATION_METRICS = frozenset({"batch_preparation_s"})
SCHEDULING_METRICS = frozenset({"priority_inversion_detected", "idle_device_while_queued_detected",
                                "batch_starved_detected", "batch_completion_s"})
AGGREGATION_METRICS = frozenset({"batch_results_lost_count", "aggregation_error_count"})
ALL_MODELS = (MODEL, LORA, CONTROL)


# ---- 1.3 preparation -------------------------------------------------------------------------------------


def batch_preparation(ctx: RunnerContext) -> None:
    p, rec = ctx.params, ctx.recorder
    size = int(p["batch_size"])
    levels = [int(x) for x in p["concurrent_batches"]]
    kinds = [str(k) for k in p["inference_types"]]
    steps = int(p.get("inference_steps", 1))
    timeout = float(p.get("batch_timeout_s", 600))
    with queue_session(ctx, capacity=1000, concurrency=1, models=ALL_MODELS, max_batches=max(16, max(levels))) as s, \
            published() as ledger:
        n = 0
        for sweep in range(int(p.get("sweeps", 1))):
            for kind in kinds:
                for level in levels:
                    calls = [BatchCall(5, size) for _ in range(level)]

                    def go(call: BatchCall, b: int, kind: str = kind) -> None:
                        call.built = time.perf_counter()
                        images = input_images(ledger, kind, b)
                        items = [{"op": "inference.run", "params": item_params(kind, steps, k, images),
                                  "key": f"{b}-{k}"} for k in range(size)]
                        call.run(s.client, items, seed_base=b * 100_000, timeout=timeout, cancel_when_admitted=True)

                    run_together([(c, lambda c=c, b=n + i: go(c, b)) for i, c in enumerate(calls)])
                    n += level
                    for c in calls:
                        if c.admitted is None:
                            rec.note(f"not_admitted_{kind}_{level}_{n}", str(c.error))
                            continue
                        rec.record("batch_preparation_s", c.admitted - c.built, "s", inference_type=kind,
                                   concurrent_batches=level, batch_size=size, sweep=sweep, rejections=c.rejections,
                                   worker_prepare_s=_worker_prepare(c))
                    ledger.unlink_all()
        rec.note("queue_final", s.client.request("queue.stats"))
    rec.note("preparation_ends_at", "the worker's admitted event; each batch is then cancelled, not run")


def _worker_prepare(c: BatchCall) -> float | None:
    return c.result.get("prepare_s") if c.result else None


# ---- 1.3 concurrent batch scheduling -----------------------------------------------------------------------


def batch_priorities(n: int) -> list[int]:
    """Distinct priorities, probes (priority 0) more urgent than every batch while there is room."""
    if n <= 9:
        return list(range(1, n + 1))
    if n == 10:
        return list(range(10))
    raise ValueError(f"at most 10 concurrent batches have distinct priorities (0..9), got {n}")


def analyse_dispatch(entries: list[dict[str, Any]], avail: dict[str, float], tolerance: float
                     ) -> list[dict[str, Any]]:
    """Per dispatch decision (a trace entry that ran): inversion (a more urgent job waited) and the idle gap
    of its slot while a job waited. ``avail``: key -> when the job could first run (queue clock)."""
    jobs = [dict(e, avail=avail.get(e["key"], e["enqueued_s"])) for e in entries]
    ran = sorted((j for j in jobs if j["started_s"] is not None), key=lambda j: j["started_s"])
    slot_free: dict[int, float] = {}
    out = []
    for d in ran:
        t = d["started_s"]

        def waiting(at: float, d: dict[str, Any] = d) -> list[dict[str, Any]]:
            return [k for k in jobs if k is not d and k["avail"] < at
                    and ((k["started_s"] is not None and k["started_s"] > at) or
                         (k["started_s"] is None and k["ended_s"] > at))]

        inversion = any(k["priority"] < d["priority"] for k in waiting(t))
        free = slot_free.get(d["slot"], min(j["avail"] for j in jobs))
        gap = t - (free if waiting(free) else max(free, d["avail"]))
        out.append({"key": d["key"], "priority": d["priority"], "inversion": inversion, "idle_gap_s": gap,
                    "idle": gap > tolerance})
        slot_free[d["slot"]] = d["ended_s"]
    return out


def starved_batches(entries: list[dict[str, Any]], batches: dict[str, tuple[int, float]]) -> dict[str, bool]:
    """Per batch (request id -> (priority, admitted)): starved when a batch of the same or lower priority admitted
    after it completed an item before its own first dispatch."""
    first: dict[str, float] = {}
    first_end: dict[str, float] = {}
    for e in entries:
        rid = e["key"].split("/")[0]
        if rid not in batches or e["started_s"] is None:
            continue
        first[rid] = min(first.get(rid, e["started_s"]), e["started_s"])
        if e["outcome"] == "ok":
            first_end[rid] = min(first_end.get(rid, e["ended_s"]), e["ended_s"])
    out = {}
    for rid, (prio, admitted) in batches.items():
        start = first.get(rid, float("inf"))
        # <=: with one slot, a later batch's item ending is the moment this batch's first one could start
        out[rid] = any(other != rid and oprio >= prio and oadm > admitted
                       and first_end.get(other, float("inf")) <= start for other, (oprio, oadm) in batches.items())
    return out


def concurrent_batch_scheduling(ctx: RunnerContext) -> None:
    p, rec = ctx.params, ctx.recorder
    n = int(p["concurrent_batches"])
    sizes = [int(x) for x in p["batch_sizes"]]
    kinds = [str(k) for k in p["inference_types"]]
    steps = int(p.get("inference_steps", 1))
    tolerance = float(p.get("idle_tolerance_s", 0.02))
    probe_every = float(p.get("probe_interval_s", 0.5))
    timeout = float(p.get("batch_timeout_s", 1200))
    prios = batch_priorities(n)
    models = ALL_MODELS if set(kinds) - {"text_to_image"} else (MODEL,)
    with queue_session(ctx, capacity=1000, concurrency=1, models=models, max_batches=max(16, n)) as s, \
            published() as ledger:
        client, after, seed = s.client, -1, 0
        for rnd in range(int(p.get("rounds", 1))):
            for size in sizes:
                for kind in kinds:
                    images = input_images(ledger, kind, rnd)
                    calls, probes = _run_round(client, prios, size, kind, images, steps, probe_every, timeout, seed)
                    seed += n
                    entries, after = read_trace(client, after)
                    _score_round(ctx, calls, entries, tolerance, rnd, size, kind, probes)
        rec.note("queue_final", client.request("queue.stats"))
    rec.note("batch_priorities", prios)
    rec.note("idle_tolerance_s", tolerance)


def _run_round(client: WorkerClient, prios: list[int], size: int, kind: str, images: dict[str, ImageRef],
               steps: int, probe_every: float, timeout: float, seed: int) -> tuple[list[BatchCall], int]:
    """The batches sent at once, a probe ``probe_every`` s after the last one's answer until they are answered;
    (calls, probes sent)."""
    calls = [BatchCall(prio, size) for prio in prios]
    done = threading.Event()
    probes: list[Any] = []

    def probe_loop() -> None:
        # one probe in flight at a time, the next ``probe_every`` after the last answer: probes arrive during
        # processing without ever outnumbering the batches' own dispatches
        while not done.wait(probe_every):
            op, params = request_for(client, "simple", 700_000 + len(probes), steps)
            probes.append(client.submit(op, params, priority=0))
            probes[-1].wait(600)

    def go(call: BatchCall, b: int) -> None:
        items = [{"op": "inference.run", "params": item_params(kind, steps, k, images)} for k in range(size)]
        call.run(client, items, seed_base=b * 100_000, timeout=timeout)

    prober = threading.Thread(target=probe_loop, daemon=True)
    prober.start()
    run_together([(c, lambda c=c, b=seed + i: go(c, b)) for i, c in enumerate(calls)])
    done.set()
    prober.join()
    for pr in probes:
        pr.wait(600)
    return calls, len(probes)


def _score_round(ctx: RunnerContext, calls: list[BatchCall], entries: list[dict[str, Any]], tolerance: float,
                 rnd: int, size: int, kind: str, probes: int) -> None:
    rec = ctx.recorder
    batches = {str(c.rid): (c.priority, c.admitted_t_s) for c in calls if c.admitted_t_s is not None}
    avail = {e["key"]: batches[e["key"].split("/")[0]][1] for e in entries if e["key"].split("/")[0] in batches}
    for d in analyse_dispatch(entries, avail, tolerance):
        labels = {"round": rnd, "batch_size": size, "inference_type": kind, "priority": d["priority"]}
        rec.record("priority_inversion_detected", 1.0 if d["inversion"] else 0.0, "count", **labels)
        rec.record("idle_device_while_queued_detected", 1.0 if d["idle"] else 0.0, "count",
                   idle_gap_s=round(d["idle_gap_s"], 6), **labels)
    for rid, starved in starved_batches(entries, batches).items():
        rec.record("batch_starved_detected", 1.0 if starved else 0.0, "count", round=rnd, batch_size=size,
                   priority=batches[rid][0])
    for c in calls:
        if c.answered is not None and c.result is not None:
            rec.record("batch_completion_s", c.answered - c.submitted, "s", round=rnd, batch_size=size,
                       priority=c.priority, ok=c.result["ok"], probes=probes)
        else:
            rec.note(f"batch_failed_{rnd}_{size}_{c.priority}", str(c.error))


# ---- 1.3 aggregation ---------------------------------------------------------------------------------------


def expected_digest(params: dict[str, Any], seed: int) -> str:
    return hashlib.sha256(msgspec.json.encode({**params, "seed": seed}, order="sorted")).hexdigest()


def aggregation_errors(call: BatchCall) -> tuple[int, int, list[str]]:
    """(results lost or duplicated, aggregate fields disagreeing, what disagreed) of one finished batch."""
    res, sent = call.result or {}, call.sent_items
    items = res.get("items", [])
    ran = [it for it in items if it["status"] in ("ok", "error")]
    reported = [ev["index"] for ev in call.events if ev["status"] in ("ok", "error")]
    duplicates = (len(ran) - len({it["index"] for it in ran})) + (len(reported) - len(set(reported)))
    lost = len(sent) - len({it["index"] for it in ran}) + duplicates
    wrong: list[str] = []
    by_event = {ev["index"]: ev for ev in call.events}
    if res.get("total") != len(sent) or len(items) != len(sent):
        wrong.append("count")
    if [it["index"] for it in items] != list(range(len(items))):
        wrong.append("order")
    for k, it in enumerate(items[:len(sent)]):
        want = sent[k]
        checks = {
            "key": it["key"] == want.get("key", ""),
            "seed": it["seed"] == call.seed_base + k,
            "model": it["model"] == want["params"].get("model"),
            "params": it["params_sha256"] == expected_digest(want["params"], call.seed_base + k),
            "output": k in by_event and it["sha256"] == by_event[k]["sha256"] and it["status"] == by_event[k]["status"],
        }
        wrong += [f"{name}[{k}]" for name, ok in checks.items() if not ok]
    counts = {st: sum(1 for it in items if it["status"] == st) for st in ("ok", "error", "cancelled", "not_run")}
    if (res.get("ok"), res.get("failed"), res.get("cancelled"), res.get("not_run")) != (
            counts["ok"], counts["error"], counts["cancelled"], counts["not_run"]):
        wrong.append("status_counts")
    pending = [it["index"] for it in items if it["status"] in ("cancelled", "not_run")]
    if res.get("pending") != pending or res.get("complete") != (not pending):
        wrong.append("pending")
    agg = hashlib.sha256(msgspec.json.encode([[it["index"], it["status"], it["sha256"]] for it in items])).hexdigest()
    if res.get("aggregate_sha256") != agg:
        wrong.append("aggregate_sha256")
    return lost, len(wrong), wrong


def batch_aggregation(ctx: RunnerContext) -> None:
    p, rec = ctx.params, ctx.recorder
    sizes = [int(x) for x in p["batch_sizes"]]
    levels = [int(x) for x in p["concurrent_batches"]]
    kinds = [str(k) for k in p["inference_types"]]
    steps = int(p.get("inference_steps", 1))
    timeout = float(p.get("batch_timeout_s", 1200))
    models = ALL_MODELS if set(kinds) - {"text_to_image"} else (MODEL,)
    with queue_session(ctx, capacity=1000, concurrency=1, models=models, max_batches=max(16, max(levels))) as s, \
            published() as ledger:
        b = 0
        for size in sizes:
            for level in levels:
                for kind in kinds:
                    calls = [BatchCall(5, size) for _ in range(level)]
                    images = input_images(ledger, kind, b)

                    def go(call: BatchCall, bi: int, kind: str = kind, size: int = size,
                           images: dict[str, ImageRef] = images) -> None:
                        items = [{"op": "inference.run", "params": {**item_params(kind, steps, k, images)},
                                  "key": f"b{bi}-i{k}"} for k in range(size)]
                        call.run(s.client, items, seed_base=bi * 100_000, timeout=timeout)

                    run_together([(c, lambda c=c, bi=b + i: go(c, bi)) for i, c in enumerate(calls)])
                    b += level
                    for c in calls:
                        if c.result is None:
                            rec.note(f"batch_failed_{size}_{level}_{kind}_{c.rid}", str(c.error))
                            continue
                        lost, wrong, what = aggregation_errors(c)
                        labels = {"batch_size": size, "concurrent_batches": level, "inference_type": kind}
                        rec.record("batch_results_lost_count", float(lost), "count", ok=c.result["ok"], **labels)
                        rec.record("aggregation_error_count", float(wrong), "count", **labels,
                                   **({"disagreeing": ",".join(what[:10])} if what else {}))
        rec.note("queue_final", s.client.request("queue.stats"))


RUNNERS = {
    "processing.batch_preparation": (PREPARATION_METRICS, batch_preparation),
    "processing.concurrent_batch_scheduling": (SCHEDULING_METRICS, concurrent_batch_scheduling),
    "processing.batch_aggregation": (AGGREGATION_METRICS, batch_aggregation),
}
