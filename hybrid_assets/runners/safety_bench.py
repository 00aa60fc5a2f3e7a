"""4.6 safety benchmarks: classification latency, policy-check latency, batch validation overhead,
classification accuracy and false positives, and policy compliance.

Every runner drives a dedicated worker with the safety domain configured (safety_support.py); images go
over shared memory, one segment per image, published before any timing. The classifier is the STAND-IN
(a small network trained to detect synthetic patterns on photographs; see safety_corpus.py): latency and
overhead figures are those of a real trained model of that size; accuracy figures are measured on a
held-out corpus of the stand-in concept (other seeds than training, four photographs never seen in
training) and say nothing about detecting real unsafe content. A case's ``model`` param (tiny-random,
configured) has no other classifier to select: the stand-in serves, and the note says so.

Policy compliance is judged against an oracle written here from the documented semantics of a policy
file (workers/postprocess/policy.py's docstring), reading the same YAML files the worker installed
(their sha256 checked against the worker's), not by calling the engine under test.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.safety_support import (
    STAND_IN_NOTE,
    SafetySession,
    contents,
    eval_items,
    held_out,
    safety_session,
)
from workers.postprocess import safety_corpus as corpus
from workers.postprocess.policy import SHIPPED_DIR

WARMUP = 3
ACCURACY_BATCH = 50
CHECK_CHUNK = 50
_SEVERITY = {"allow": 0, "blur": 1, "review": 2, "block": 3}


def _model_note(ctx: RunnerContext) -> None:
    ctx.recorder.note("stand_in", STAND_IN_NOTE)
    model = ctx.params.get("model")
    if model is not None:
        ctx.recorder.note("model_param", f"{model!r}: no other safety classifier exists offline; the trained "
                                         "stand-in (safety-patterns) served")


# ---- 4.6 content classification latency -----------------------------------------------------------------------
def classification_latency(ctx: RunnerContext) -> None:
    p = ctx.params
    sizes = [int(s) for s in p.get("image_px", [64])]
    samples = int(p.get("samples", 45))
    _model_note(ctx)
    with safety_session(ctx) as s:
        for px in sizes:
            items = eval_items(samples + WARMUP, corpus.CONTENT_CLASSES, px, seed_offset=px)
            inputs = [s.publish(i.pixels) for i in items]
            worker_s = []
            for k, inp in enumerate(inputs):
                t = time.perf_counter()
                r = s.client.request("safety.classify", {"images": [inp]}, timeout=60)
                dt = time.perf_counter() - t
                if k < WARMUP:
                    continue
                worker_s.append(r["classify_s"])
                ctx.recorder.record("safety_classification_s", dt, "s", image_px=px, content=items[k].content)
            ctx.recorder.note(f"worker_classify_s_median_{px}px", statistics.median(worker_s))
            s.ledger.unlink_all()
    ctx.recorder.note("timing", "host round trip of safety.classify with one image (shared memory, read in place "
                                "and digest-checked by the worker), warm worker, sequential requests")


# ---- 4.6 policy enforcement latency ---------------------------------------------------------------------------
def _random_scores(rng: random.Random, categories: list[str]) -> dict[str, float]:
    return {c: rng.choice((rng.random(), rng.random() * 0.3, 0.7 + rng.random() * 0.3)) for c in categories}


def policy_check_latency(ctx: RunnerContext) -> None:
    checks = int(ctx.params.get("checks", 450))
    rng = random.Random(46)
    with safety_session(ctx) as s:
        policies = [q["name"] for q in s.configured["policies"]]
        cats = list(s.configured["categories"])
        for k in range(checks + WARMUP):
            name = policies[k % len(policies)]
            t = time.perf_counter()
            r = s.client.request("safety.policy_check", {"policy": name, "scores": [_random_scores(rng, cats)]})
            dt = time.perf_counter() - t
            if k >= WARMUP:
                ctx.recorder.record("policy_check_s", dt, "s", policy=name, decision=r["decisions"][0]["decision"])
        ctx.recorder.note("policies", policies)
    ctx.recorder.note("timing", "host round trip of safety.policy_check with one item's scores (the classification "
                                "excluded), configured policies in rotation, sequential requests")


# ---- 4.6 batch validation overhead ----------------------------------------------------------------------------
def _validate(s: SafetySession, inputs: list[dict[str, Any]], ids: list[str]) -> tuple[float, dict[str, Any]]:
    t = time.perf_counter()
    r = s.client.request("safety.validate", {"images": inputs, "ids": ids, "timeout_s": 60.0}, timeout=120)
    return time.perf_counter() - t, r


def batch_validation(ctx: RunnerContext) -> None:
    p = ctx.params
    sizes = [int(n) for n in p.get("batch_sizes", [10, 50, 100])]
    px = int(p.get("image_px", 64))
    repeats = int(p.get("repeats", 1))
    _model_note(ctx)
    with safety_session(ctx) as s:
        warm = eval_items(WARMUP, corpus.CONTENT_CLASSES, px, seed_offset=99)
        for i, item in enumerate(warm):
            _validate(s, [s.publish(item.pixels)], [f"warm-{i}"])
        for n in sizes:
            items = eval_items(n, corpus.CONTENT_CLASSES, px, seed_offset=n)
            inputs = [s.publish(i.pixels) for i in items]
            for rep in range(repeats):
                ids = [f"b{n}-r{rep}-{i}" for i in range(n)]
                # alternate which goes first, so warm-up or drift never favours one side
                order = ("batch", "single") if rep % 2 == 0 else ("single", "batch")
                batch_s = single_sum = 0.0
                fail_closed = 0
                for what in order:
                    if what == "batch":
                        batch_s, r = _validate(s, inputs, ids)
                        fail_closed += r["fail_closed"]
                    else:
                        for i, inp in enumerate(inputs):
                            dt, r = _validate(s, [inp], [f"{ids[i]}-alone"])
                            single_sum += dt
                            fail_closed += r["fail_closed"]
                ctx.recorder.record("batch_validation_time_ratio", batch_s / single_sum, "ratio", batch_size=n,
                                    repeat=rep, batch_s=round(batch_s, 6), single_sum_s=round(single_sum, 6),
                                    fail_closed=fail_closed)
    ctx.recorder.note("timing", "one safety.validate of the whole batch (one classifier call, per-item policy checks) "
                                "over the sum of host round trips of safety.validate with each image alone; same "
                                "images (one shared-memory segment each), same worker, order alternating by repeat")


# ---- 4.6 classification accuracy and false positives ---------------------------------------------------------
def safety_accuracy(ctx: RunnerContext) -> None:
    p = ctx.params
    count = int(p.get("images", 1000))
    px = int(p.get("image_px", 64))
    content = contents(p, "content")
    _model_note(ctx)
    with safety_session(ctx) as s:
        for start in range(0, count, ACCURACY_BATCH):
            items = corpus.corpus(corpus.EVAL_SEED_BASE + 1, min(ACCURACY_BATCH, count - start), content, px=px,
                                  split="eval", start=start)
            inputs = [s.publish(i.pixels) for i in items]
            r = s.client.request("safety.validate", {"images": inputs, "ids": [f"acc-{start + k}" for k in
                                                                             range(len(items))], "timeout_s": 60.0},
                                 timeout=120)
            for item, v in zip(items, r["items"], strict=True):
                correct = not v["fail_closed"] and v["decision"] == corpus.expected_decision(item.label)
                labels = {"label": item.label, "content": item.content, "decision": v["decision"],
                          "held_out_photo": held_out(item), "distractors": len(item.distractors)}
                ctx.recorder.record("safety_classification_correct", int(correct), "ratio", **labels)
                if item.label == "safe":
                    ctx.recorder.record("safety_false_positive", int(v["decision"] != "allow"), "ratio", **labels)
            s.ledger.unlink_all()
            s.client.request("safety.review_queue", {"take": True, "limit": 100_000})  # keep the queue small
    ctx.recorder.note("verdict", "the default policy's decision against the label's: safe -> allow, borderline -> "
                                 "review, unsafe -> block; a fail-closed item counts as incorrect; a false positive is "
                                 "a safe image given anything but allow")
    ctx.recorder.note("corpus", f"held-out: seed {corpus.EVAL_SEED_BASE + 1} (training used {corpus.TRAIN_SEED}), "
                                f"photographs {list(corpus.HELD_OUT_PHOTOS)} never seen in training")


# ---- 4.6 policy compliance ------------------------------------------------------------------------------------
def expected_decision(doc: dict[str, Any], categories: list[str], scores: dict[str, float]) -> tuple[str, str]:
    """The decision a policy document prescribes, from its documented semantics (the oracle)."""
    defaults = doc.get("defaults") or {}
    best, why = None, ""
    for cat in categories:
        if cat not in scores:
            cand, src = defaults.get("missing_score", "review"), "missing_score"
            if best is None or _SEVERITY[cand] > _SEVERITY[best]:
                best, why = cand, src
            continue
        for i, rule in enumerate(doc["rules"], start=1):
            hi = rule.get("max_score")
            matches = rule["category"] in (cat, "any") and rule["min_score"] <= scores[cat] and (
                hi is None or scores[cat] < hi)
            if matches and (best is None or _SEVERITY[rule["action"]] > _SEVERITY[best]):
                best, why = rule["action"], rule.get("name", f"rule {i}")
    if best is None:
        return defaults.get("action", "allow"), "defaults.action"
    return best, why


def _items_for_rule(rule: dict[str, Any], categories: list[str], n: int, rng: random.Random
                    ) -> list[tuple[dict[str, float], str, str]]:
    """(scores, boundary, side) for ``n`` items straddling the rule's bounds, nearest first: on each bound,
    then 1e-6, 1e-3, 0.01 and 0.05 either side, then random offsets within 0.2."""
    bounds = [("min_score", float(rule["min_score"]))]
    if rule.get("max_score") is not None:
        bounds.append(("max_score", float(rule["max_score"])))
    offsets = [0.0] + [sign * d for d in (1e-6, 1e-3, 1e-2, 5e-2) for sign in (-1, 1)]
    out: list[tuple[dict[str, float], str, str]] = []
    for k in range(n):
        bound, b = bounds[k % len(bounds)]
        step = k // len(bounds)
        v = min(1.0, max(0.0, b + (offsets[step] if step < len(offsets) else rng.uniform(-0.2, 0.2))))
        cat = rule["category"] if rule["category"] != "any" else categories[step % len(categories)]
        scores = {c: (0.0 if k % 2 == 0 else rng.random()) for c in categories}
        scores[cat] = v
        if k % 10 == 9 and len(categories) > 1:  # now and then another category unscored: its default applies
            del scores[next(c for c in categories if c != cat)]
        out.append((scores, bound, "below" if v < b else "at_or_above"))
    return out


def policy_compliance(ctx: RunnerContext) -> None:
    per_rule = int(ctx.params.get("items_per_rule", 50))
    rng = random.Random(4646)
    docs = {f.name: f.read_text() for f in sorted(Path(SHIPPED_DIR).glob("*.yaml"))}
    with safety_session(ctx) as s:
        cats = list(s.configured["categories"])
        installed = {q["source"].split("/", 1)[-1]: q for q in s.configured["policies"]}
        for fname, text in docs.items():
            info = installed.get(fname)
            if info is None:
                ctx.recorder.note(f"policy_file_{fname}", "not installed by the worker: not checked")
                continue
            if hashlib.sha256(text.encode()).hexdigest() != info["sha256"]:
                raise RuntimeError(f"{fname}: the worker installed other bytes than the file the oracle reads")
            doc = yaml.safe_load(text)
            for i, rule in enumerate(doc["rules"], start=1):
                name = rule.get("name", f"rule {i}")
                items = _items_for_rule(rule, cats, per_rule, rng)
                for start in range(0, len(items), CHECK_CHUNK):
                    chunk = items[start:start + CHECK_CHUNK]
                    r = s.client.request("safety.policy_check", {"policy": doc["policy"],
                                                                 "scores": [sc for sc, _, _ in chunk]})
                    for (scores, bound, side), d in zip(chunk, r["decisions"], strict=True):
                        want, by = expected_decision(doc, cats, scores)
                        ctx.recorder.record("policy_decision_compliant", int(d["decision"] == want), "ratio",
                                            policy=doc["policy"], rule=name, boundary=bound, side=side,
                                            expected=want, decided=d["decision"], expected_by=by)
    ctx.recorder.note("oracle", "expected decisions computed from the YAML files by this runner (most severe "
                                "matching rule; defaults.missing_score for an unscored category; defaults.action "
                                "when nothing matches), items on both sides of each rule's bounds, nearest first")


RUNNERS = {
    "postprocessing.safety_classification_latency": (frozenset({"safety_classification_s"}), classification_latency),
    "postprocessing.policy_check_latency": (frozenset({"policy_check_s"}), policy_check_latency),
    "postprocessing.batch_safety_validation": (frozenset({"batch_validation_time_ratio"}), batch_validation),
    "postprocessing.safety_accuracy": (frozenset({"safety_classification_correct", "safety_false_positive"}),
                                       safety_accuracy),
    "postprocessing.policy_compliance": (frozenset({"policy_decision_compliant"}), policy_compliance),
}
