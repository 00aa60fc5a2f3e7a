"""3.6 safety validation failure: break the classifier (a model failure), the policy engine (a crash) or the
whole validation (a hang past its budget) with the case's impact, and check that every affected item is
held as unsafe (``block``, ``fail_closed``) and escalated to the manual-review queue, while everything
outside the failure's scope goes on as usual.

The items are ``items`` held-out corpus images (the stand-in concept, mixed content) in batches of
``batch_size``, one ``safety.validate`` per batch (default policy, a 1 s validation budget). First every
batch is validated with no fault: each item's baseline decision. Then, by impact:

- single_item / batch: ``injections`` batches, evenly spread, get the fault (``fault.safety_failure`` with
  count 1, armed just before the batch is sent; batches are sent one after another): one item of the batch
  (a different index each time) or all of them. In scope: those items. Outside: every other item, in its
  batch and in the other batches, which must get its baseline decision without failing closed.
- system_wide: the batches are split into ``injections`` windows; for each, the fault is armed for every
  validation (count 0) and cleared after the window. The window's batches are sent together with a
  postprocessing operation per image (``postprocess.enhance`` level basic and ``postprocess.convert`` to
  WebP, alternating; outputs compared by digest with the same operation run before the fault). In scope:
  every validated item. Outside: those other operations. After each window, the time until a validation
  is served normally again is noted (the circuit breaker's recovery).

``failure_detection_s`` is, per affected validation, the time from sending it to its fail-closed answer.
The review queue is read once, after the last batch: an affected item is escalated when an entry with its
id and ``fail_closed`` is there.
"""

from __future__ import annotations

import math
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.safety_support import STAND_IN_NOTE, SafetySession, eval_items, safety_session
from workers.host import WorkerError
from workers.postprocess import safety_corpus as corpus

METRICS = frozenset({"conservative_fallback_ok", "escalated_to_manual_review_ok", "outside_failure_scope_error",
                     "failure_detection_s"})
SCOPES = {"single_item_failure": "single_item", "batch_validation_failure": "batch",
          "system_wide_validation_failure": "system_wide"}
FAILURES = ("classifier_model_failure", "policy_engine_crash", "validation_timeout")
BUDGET_S = 1.0  # each validation's own budget: a hung classifier is given up on after this
REQUEST_TIMEOUT_S = 30.0
RECOVERY_LIMIT_S = 15.0
OTHER_OPS = ("postprocess.enhance", "postprocess.convert")


def _validate(s: SafetySession, inputs: list[dict[str, Any]], ids: list[str]) -> tuple[dict[str, Any], float]:
    t = time.monotonic()
    r = s.client.request("safety.validate", {"images": inputs, "ids": ids, "timeout_s": BUDGET_S},
                         timeout=REQUEST_TIMEOUT_S)
    return r, time.monotonic() - t


def _other_op(k: int, inp: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if k % 2 == 0:
        return "postprocess.enhance", {"image": inp, "level": "basic", "output": "digest"}
    return "postprocess.convert", {"image": inp, "format": "webp", "output": "digest"}


def _digest(r: dict[str, Any]) -> tuple[str, str]:
    return str(r.get("sha256", "")), str((r.get("file") or {}).get("sha256", ""))


def spread(n: int, k: int) -> list[int]:
    """``k`` indices evenly spread over ``range(n)`` (distinct; at most n)."""
    k = min(k, n)
    return sorted({min(n - 1, math.floor(j * n / k)) for j in range(k)})


def safety_validation_failure(ctx: RunnerContext) -> None:
    p = ctx.params
    failure = str(p.get("validation_failure", "classifier_model_failure"))
    impact = str(p.get("failure_impact", "single_item_failure"))
    if failure not in FAILURES:
        raise ValueError(f"validation_failure must be one of {list(FAILURES)}, got {failure!r}")
    if impact not in SCOPES:
        raise ValueError(f"failure_impact must be one of {list(SCOPES)}, got {impact!r}")
    scope = SCOPES[impact]
    batch_size, count, injections = int(p.get("batch_size", 10)), int(p.get("items", 40)), int(p.get("injections", 2))
    if batch_size < 1 or count < 1 or injections < 1:
        raise ValueError(f"batch_size, items and injections must be >= 1, got {batch_size}, {count}, {injections}")
    ctx.recorder.note("stand_in", STAND_IN_NOTE)
    items = eval_items(count, ("mixed_content",), 64, seed_offset=3)
    batches = [list(range(b, min(b + batch_size, count))) for b in range(0, count, batch_size)]
    if injections > len(batches):
        ctx.recorder.note("injections", f"{injections} asked, {len(batches)} batches: one injection per batch")
    with safety_session(ctx) as s:
        inputs = [s.publish(i.pixels) for i in items]
        baseline: dict[int, str] = {}
        for b, idx in enumerate(batches):
            r, _ = _validate(s, [inputs[i] for i in idx], [f"base-{b}-{i}" for i in idx])
            for i, v in zip(idx, r["items"], strict=True):
                if v["fail_closed"]:
                    raise RuntimeError(f"baseline validation of item {i} failed closed with no fault: {v['reason']}")
                baseline[i] = v["decision"]
        ctx.recorder.note("baseline_matches_labels", sum(baseline[i] == corpus.expected_decision(items[i].label)
                                                         for i in baseline) / len(baseline))
        s.client.request("safety.review_queue", {"take": True, "limit": 100_000})  # only the faulted run's entries
        if scope == "system_wide":
            affected = _system_wide(ctx, s, failure, batches, inputs, injections, baseline)
        else:
            affected = _scoped(ctx, s, failure, scope, batches, inputs, injections, baseline)
        review = s.client.request("safety.review_queue", {"take": True, "limit": 100_000})
        escalated = {e["id"] for e in review["entries"] if e["fail_closed"]}
        for item_id in affected:
            ctx.recorder.record("escalated_to_manual_review_ok", int(item_id in escalated), "ratio",
                                failure=failure, scope=scope)
        status = s.client.request("safety.status")
        ctx.recorder.note("worker", {"counts": status["counts"], "breaker_opened": status["breaker_opened"],
                                     "faults_left": status["faults"], "review_entries": len(review["entries"])})


def _record_affected(ctx: RunnerContext, v: dict[str, Any], failure: str, scope: str) -> None:
    ok = v["decision"] == "block" and v["fail_closed"]
    ctx.recorder.record("conservative_fallback_ok", int(ok), "ratio", failure=failure, scope=scope,
                        reason=v["reason"][:160])


def _scoped(ctx: RunnerContext, s: SafetySession, failure: str, scope: str, batches: list[list[int]],
            inputs: list[dict[str, Any]], injections: int, baseline: dict[int, str]) -> list[str]:
    injected = spread(len(batches), injections)
    affected: list[str] = []
    for b, idx in enumerate(batches):
        target = None
        if b in injected:
            target = (injected.index(b) * 3 + 1) % len(idx)  # a different position each time
            s.client.request("fault.safety_failure", {"failure": failure, "scope": scope, "count": 1,
                                                      "item": target})
        ids = [f"run-{b}-{i}" for i in idx]
        r, dt = _validate(s, [inputs[i] for i in idx], ids)
        if b in injected:
            ctx.recorder.record("failure_detection_s", dt, "s", failure=failure, scope=scope, batch=b)
        for pos, (i, v) in enumerate(zip(idx, r["items"], strict=True)):
            if b in injected and (scope == "batch" or pos == target):
                _record_affected(ctx, v, failure, scope)
                affected.append(ids[pos])
            else:
                bad = v["fail_closed"] or v["decision"] != baseline[i]
                ctx.recorder.record("outside_failure_scope_error", int(bad), "count", failure=failure, scope=scope,
                                    where="same_batch" if b in injected else "other_batch",
                                    decision=v["decision"], baseline=baseline[i])
    return affected


def _system_wide(ctx: RunnerContext, s: SafetySession, failure: str, batches: list[list[int]],
                 inputs: list[dict[str, Any]], injections: int, baseline: dict[int, str]) -> list[str]:
    served = {o.name for o in s.client.hello.capabilities.operations} if s.client.hello else set()
    others = [op for op in OTHER_OPS if op in served]
    if not others:
        ctx.recorder.note("outside_scope", f"the worker serves none of {list(OTHER_OPS)}: no other postprocessing "
                                           "operation to check alongside the failure")
    ops = [_other_op(k, inputs[k % len(inputs)]) for k in range(len(inputs))]
    ops = [(op, params) for op, params in ops if op in others]
    reference = {k: _digest(s.client.request(op, params, timeout=REQUEST_TIMEOUT_S)) for k, (op, params)
                 in enumerate(ops)}
    n_windows = min(injections, len(batches))
    windows = [batches[w * len(batches) // n_windows:(w + 1) * len(batches) // n_windows] for w in range(n_windows)]
    affected: list[str] = []
    recovery: list[float] = []
    for w, window in enumerate(windows):
        s.client.request("fault.safety_failure", {"failure": failure, "scope": "system_wide", "count": 0})
        window_items = [i for idx in window for i in idx]
        sent = []
        for idx in window:
            ids = [f"run-{w}-{i}" for i in idx]
            sent.append((ids, time.monotonic(), s.client.submit(
                "safety.validate", {"images": [inputs[i] for i in idx], "ids": ids, "timeout_s": BUDGET_S},
                deadline_ms=REQUEST_TIMEOUT_S * 1e3)))
        side = [(k, ops[k][0], s.client.submit(ops[k][0], ops[k][1], deadline_ms=REQUEST_TIMEOUT_S * 1e3))
                for k in range(len(ops)) if k % len(inputs) in window_items]
        for ids, t0, pending in sent:
            if not pending.wait(REQUEST_TIMEOUT_S + 5):
                raise RuntimeError(f"safety.validate of window {w} not answered in {REQUEST_TIMEOUT_S + 5} s")
            r = pending.result()
            ctx.recorder.record("failure_detection_s", time.monotonic() - t0, "s", failure=failure,
                                scope="system_wide", window=w)
            for item_id, v in zip(ids, r["items"], strict=True):
                _record_affected(ctx, v, failure, "system_wide")
                affected.append(item_id)
        for k, op, pending in side:
            pending.wait(REQUEST_TIMEOUT_S + 5)
            try:
                bad = _digest(pending.result()) != reference[k]
                code = "output_differs" if bad else ""
            except (WorkerError, RuntimeError) as exc:
                bad, code = True, getattr(exc, "code", type(exc).__name__)
            ctx.recorder.record("outside_failure_scope_error", int(bad), "count", failure=failure,
                                scope="system_wide", op=op, code=code)
        cleared = time.monotonic()
        s.client.request("fault.safety_failure", {"failure": "none"})
        recovery.append(_until_served(s, inputs[window_items[0]], baseline[window_items[0]], cleared))
    ctx.recorder.note("recovery_after_clear_s", [round(x, 3) for x in recovery])
    return affected


def _until_served(s: SafetySession, inp: dict[str, Any], want: str, since: float) -> float:
    """Seconds from ``since`` until a validation is served normally again (the breaker closed)."""
    while time.monotonic() - since < RECOVERY_LIMIT_S:
        r, _ = _validate(s, [inp], ["recovery-probe"])
        v = r["items"][0]
        if not v["fail_closed"] and v["decision"] == want:
            return time.monotonic() - since
        time.sleep(0.1)
    return math.inf


RUNNERS = {"postprocessing.safety_validation_failure": (METRICS, safety_validation_failure)}
