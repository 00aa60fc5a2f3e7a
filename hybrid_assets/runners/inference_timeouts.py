"""Spec 3.5 timeouts: single inferences that overrun their deadline (3.5 inference_execution_timeout) and batches
whose deadline expires mid-batch (3.5 batch_operation_timeout), against a dedicated worker with a tiny pipeline.

Deadlines are the protocol's own (``deadline_ms``, counted by the worker from receipt); the worker answers
DEADLINE_EXCEEDED within one denoising step. How each timeout cause is produced:
- complex_prompts: a long composite prompt and negative prompt (near the 4,096-character limit) with steps sized
  to take 3x the threshold. The tiny CLIP truncates at 77 tokens, so the prompt itself adds next to nothing: the
  overrun comes from the step count, and the samples say so (label ``overrun_by``).
- resource_contention: two inference slots; a competing generation (another client's, no deadline, on the other
  pipeline: requests on one pipeline wait for its lock instead of sharing the device) starts first and shares the
  CPU with the target, whose steps would take 0.8x the threshold alone.
- model_performance_degradation: the worker process is throttled (SIGSTOP/SIGCONT, stopped 60 % of every 50 ms,
  as a throttled device would be) while the target, sized to 0.8x the threshold at full speed, runs. The worker's
  ``--fault-latency`` delays the receipt of every request instead, which is not a slowed model.
An attempt that finishes before its deadline produced no timeout: it is logged, not sampled, and the next attempt
gets at least twice the work (at most 3x ``timeouts`` attempts).

Orphans: ``status`` only shows the executor queue, not the inference pool; a ``cancel`` of the timed-out request
id answers "unknown" once the worker no longer holds it, anything else means it is still running or queued (asked
twice, 0.1 s apart, so the instant between the answer and the pool's bookkeeping is not counted).
Reduced-complexity retry: the runtime has no automatic retry (no request or host option does one), so
``reduced_retry_ok`` is 0 per timeout; the runner's own retry at lower complexity is labelled ``client_retry_ok``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import signal
import statistics
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import msgspec

from hybrid_assets.faults.resources import ResourceSnapshot, snapshot
from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_support import ModelSession, control_image, ensure_models, model_session
from workers.host.client import PendingRequest
from workers.host.errors import WorkerError
from workers.protocol import images
from workers.protocol.images import ImageRef, ShmLedger

TIMEOUT_METRICS = frozenset({
    "timeout_detection_delay_s", "premature_timeout_error", "leaked_resource_count", "orphan_operation_count",
    "timeout_notification_ok", "reduced_retry_ok",
})
BATCH_METRICS = frozenset({
    "completed_items_lost_count", "restart_from_last_completed_ok", "items_reprocessed_count",
    "leaked_resource_count", "orphan_batch_item_count", "timeout_detection_delay_s",
})
BASE, OTHER, CONTROL = "tiny-sd-a", "tiny-sd-b", "tiny-controlnet-a"
MAX_STEPS = 1000
THROTTLE_STOPPED, THROTTLE_PERIOD_S = 0.6, 0.05
LONG_PROMPT = ", ".join(
    f"{a} {b} with {c} lighting" for a in ("ornate", "weathered", "luminous", "baroque", "intricate")
    for b in ("cathedral", "harbour", "forest", "observatory", "market") for c in ("volumetric", "golden hour",
                                                                                  "rim", "neon", "candle"))[:4000]


# ---- plumbing shared by both runners -------------------------------------------------------------------


def submit(s: ModelSession, params: dict[str, Any], deadline_s: float | None = None,
           priority: int = 5) -> tuple[PendingRequest, float]:
    t = time.monotonic()
    return s.client.submit("inference.run", params, deadline_ms=None if deadline_s is None else deadline_s * 1e3,
                           priority=priority), t


def outcome(pending: PendingRequest) -> tuple[dict[str, Any] | None, WorkerError | None]:
    try:
        return pending.result(), None
    except WorkerError as exc:
        return None, exc


def still_held(s: ModelSession, rids: list[Any]) -> int:
    """Requests the worker still runs or queues (see the module's note on ``cancel`` as the probe)."""
    def held(rid: Any) -> bool:
        return s.client.request("cancel", {"target": rid})["state"] != "unknown"

    left = [rid for rid in rids if held(rid)]
    if left:
        time.sleep(0.1)
        left = [rid for rid in left if held(rid)]
    return len(left)


def held_state(s: ModelSession) -> tuple[ResourceSnapshot, int, list[str]]:
    listed = s.client.request("model.list")
    snap = snapshot(SimpleNamespace(clients=[s.client]))  # type: ignore[arg-type]
    return snap, int(listed["used_bytes"]), sorted(m["name"] for m in listed["resident"])


def leaks(s: ModelSession, base: tuple[ResourceSnapshot, int, list[str]]) -> list[str]:
    """What did not come back: the fault machinery's snapshot, plus device-cache bytes and residents."""
    snap, used, resident = held_state(s)
    problems = snap.compare(base[0])
    if used != base[1]:
        problems.append(f"device cache holds {used} bytes, {base[1]} before")
    if resident != base[2]:
        problems.append(f"resident models {resident}, {base[2]} before")
    return problems


def calibrate(s: ModelSession, params: dict[str, Any], steps: int = 8) -> tuple[float, float]:
    """(fixed overhead, seconds per step) of ``params``: the median interval between the progress events of a
    run (robust to a noisy machine's outliers) and what the run took beyond its steps, the lower of two runs."""
    runs = []
    for _ in range(2):  # the faster of two: a busy machine only ever makes a run slower
        ticks: list[float] = []
        t0 = time.monotonic()
        s.host.generate({**params, "steps": steps, "progress": True}, timeout=600,
                        on_event=lambda ev, ticks=ticks: ticks.append(time.monotonic()) if ev.event == "progress"
                        else None)
        total = time.monotonic() - t0
        if len(ticks) < 3:
            raise RuntimeError(f"calibration: {len(ticks)} progress events for {steps} steps; need at least 3")
        step = statistics.median(b - a for a, b in itertools.pairwise(ticks))
        runs.append((max(total - steps * step, 0.0), step))
    return min(r[0] for r in runs), min(r[1] for r in runs)


def sized(params: dict[str, Any], calib: tuple[float, float], seconds: float) -> dict[str, Any]:
    """``params`` with steps (then batch) chosen to take ``seconds`` at the calibrated speed."""
    overhead, step = calib
    steps = max(1, math.ceil((seconds - overhead) / step))
    batch = min(64, math.ceil(steps / MAX_STEPS))
    return {**params, "steps": min(steps, MAX_STEPS) if batch == 1 else MAX_STEPS, "batch": batch}


class Throttle:
    """Stop and continue a process on a duty cycle (always continued on exit), from when ``begin`` is set."""

    def __init__(self, pid: int, stopped: float = THROTTLE_STOPPED, period_s: float = THROTTLE_PERIOD_S,
                 begin: threading.Event | None = None) -> None:
        self.pid, self.stop_s, self.run_s = pid, period_s * stopped, period_s * (1 - stopped)
        self._done = threading.Event()
        self._begin = begin
        self._thread = threading.Thread(target=self._loop, name="throttle", daemon=True)

    def _loop(self) -> None:
        if self._begin is not None:
            while not (self._begin.wait(0.01) or self._done.is_set()):
                pass
        try:
            while not self._done.is_set():
                os.kill(self.pid, signal.SIGSTOP)
                self._done.wait(self.stop_s)
                os.kill(self.pid, signal.SIGCONT)
                self._done.wait(self.run_s)
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def __enter__(self) -> Throttle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        os.kill(self.pid, signal.SIGCONT)


def _names_threshold(message: str, threshold_s: float) -> bool:
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", message)]
    return any(math.isclose(x, threshold_s * 1e3, rel_tol=0.01) or math.isclose(x, threshold_s, rel_tol=0.01)
               for x in numbers)


# ---- 3.5 inference_execution_timeout --------------------------------------------------------------------


def _workload(complexity: str, profile: str, control: ImageRef) -> dict[str, Any]:
    base = {"model": BASE, "output": "digest", "progress": False, "seed": 7}
    if complexity == "simple_inference":
        return {**base, "width": 64, "height": 64}
    if complexity == "high_resolution_generation":
        side = 256 if profile == "smoke" else 512
        return {**base, "width": side, "height": side}
    if complexity == "complex_controlnet":
        return {**base, "mode": "controlnet", "width": 128, "height": 128, "control_model": CONTROL,
                "control_image": msgspec.structs.asdict(control), "control_scale": 1.0}
    raise ValueError(f"operation_complexity {complexity!r}: expected simple_inference, "
                     "high_resolution_generation or complex_controlnet")


def _one_timeout(ctx: RunnerContext, s: ModelSession, cause: str, work: dict[str, Any],
                 calib: tuple[float, float], thr: float, k: int, scale: float) -> float | None:
    """One attempt: None when it produced a timeout (and its samples), else the seconds it took. ``scale`` grows
    the work after attempts that finished in time (a calibration on a busy machine can overestimate a step)."""
    rec = ctx.recorder
    params = {**work, "seed": 100 + k}
    competitor: PendingRequest | None = None
    if cause == "complex_prompts":
        params = {**sized(params, calib, 3 * thr * scale), "prompt": LONG_PROMPT, "negative_prompt": LONG_PROMPT[::-1]}
    else:
        params = sized(params, calib, 0.8 * thr * scale)
    base = held_state(s)
    assert s.client.pid is not None
    if cause == "resource_contention":  # on the other pipeline: one pipeline serialises its requests (a lock)
        other = {key: v for key, v in work.items() if key not in ("mode", "control_model", "control_image")}
        competitor, _ = submit(s, sized({**other, "model": OTHER, "seed": 900 + k}, calib, 6 * thr))
        time.sleep(min(0.2, thr / 4))  # let it start: the target shares the CPU with it, not the queue
    # The model slows down once it runs (its first progress event), not while the worker reads the request: a
    # stopped reader would start the worker's deadline late, which is no property of a slow model.
    running = threading.Event()
    if cause == "model_performance_degradation":
        params = {**params, "progress": True}
    slowed = (Throttle(s.client.pid, begin=running) if cause == "model_performance_degradation"
              else contextlib.nullcontext())
    with slowed:
        t_sub = time.monotonic()
        pending = s.client.submit("inference.run", params, deadline_ms=thr * 1e3,
                                  on_event=lambda ev: running.set() if ev.event == "progress" else None)
        pending.wait(thr + 120)
        t_recv = time.monotonic()
    _, err = outcome(pending) if pending.done else (None, WorkerError("TIMEOUT", "no answer in 120 s"))
    deadline = t_sub + thr
    labels = {"attempt": k, "cause": cause, "steps": params["steps"], "batch": params["batch"],
              "threshold_s": thr, "overrun_by": "steps" if cause == "complex_prompts" else cause, "scale": scale}
    if t_recv <= deadline and (err is None or err.code not in ("DEADLINE_EXCEEDED", "TIMEOUT")):
        # Finished in time, or failed in another way before the deadline: not a timeout.
        ctx.log.info("attempt %d ended in %.2f s before its %.2f s deadline (%s): no timeout", k, t_recv - t_sub,
                     thr, err.code if err else "a result")
        if err is not None:
            ctx.recorder.note(f"attempt_{k}_error", f"{err.code}: {err.message}")
        if competitor is not None:
            s.client.request("cancel", {"target": competitor.id})
            competitor.wait(120)
        return t_recv - t_sub
    rec.record("timeout_detection_delay_s", max(t_recv - deadline, 0.0), "s", **labels)
    rec.record("premature_timeout_error", 1.0 if t_recv < deadline else 0.0, "count", **labels)
    code, message = (err.code, err.message) if err else ("", "a result after the deadline")
    notified = code == "DEADLINE_EXCEEDED" and _names_threshold(message, thr) and bool(err and err.retryable)
    rec.record("timeout_notification_ok", 1.0 if notified else 0.0, "ratio", **labels, code=code, message=message,
               retryable=bool(err and err.retryable))
    rec.record("orphan_operation_count", float(still_held(s, [pending.id])), "count", **labels)
    if competitor is not None:  # another client's work: stopped now so the baseline can come back
        s.client.request("cancel", {"target": competitor.id})
        competitor.wait(120)
    problems = leaks(s, base)
    rec.record("leaked_resource_count", float(len(problems)), "count", **labels, problems="; ".join(problems))
    retry = sized({**work, "seed": 100 + k}, calib, 0.4 * thr)
    if retry["steps"] >= params["steps"] and retry["batch"] >= params["batch"]:  # fewer steps impossible: smaller
        retry.update(width=max(64, work["width"] // 2), height=max(64, work["height"] // 2))
    try:
        s.host.generate(retry, timeout=thr)
        client_retry_ok = (retry["steps"], retry["batch"], retry["width"]) < (params["steps"], params["batch"],
                                                                              params["width"])
    except WorkerError as exc:
        client_retry_ok = False
        labels["client_retry_error"] = exc.code
    rec.record("reduced_retry_ok", 0.0, "ratio", **labels, system_retry=False, client_retry_ok=client_retry_ok,
               client_retry_steps=retry["steps"])
    return None


def execution_timeout(ctx: RunnerContext) -> None:
    p = ctx.params
    thr = float(p["timeout_threshold_s"]) * float(p["time_scale"])
    cause, complexity, wanted = str(p["timeout_cause"]), str(p["operation_complexity"]), int(p["timeouts"])
    store = ensure_models(ctx)
    ledger = ShmLedger()
    slots = 2 if cause == "resource_contention" else 1
    try:
        with model_session(ctx, store, cache_mib=256, inference_slots=slots) as s:
            s.host.load(CONTROL if complexity == "complex_controlnet" else BASE)
            if cause == "resource_contention":
                s.host.load(OTHER)
            work = _workload(complexity, ctx.profile, ledger.publish(control_image(128)))
            s.host.generate({**work, "steps": 2}, timeout=600)  # warm-up: the first generation pays the set-up
            calib = calibrate(s, work)
            ctx.recorder.note("calibration", {"overhead_s": calib[0], "step_s": calib[1], "threshold_s": thr})
            produced = attempts = 0
            scale = 1.0
            while produced < wanted and attempts < 3 * wanted:
                took = _one_timeout(ctx, s, cause, work, calib, thr, attempts, scale)
                produced += took is None
                if took is not None:  # more work next time, by at least what was missing
                    scale *= max(2.0, 1.5 * thr / max(took, 1e-3))
                attempts += 1
            ctx.recorder.note("attempts", {"attempts": attempts, "timeouts": produced})
    finally:
        ledger.unlink_all()
    ctx.recorder.note("reduced_retry", "the runtime has no automatic reduced-complexity retry; each timeout records 0 "
                                       "with the runner's own retry outcome as client_retry_ok")
    if cause == "complex_prompts":
        ctx.recorder.note("cause", "the long prompt does not lengthen the run (CLIP truncates at 77 tokens): the "
                                   "overrun comes from the step count; the timeout handling is what is measured")
    elif cause == "model_performance_degradation":
        ctx.recorder.note("cause", f"worker throttled by SIGSTOP/SIGCONT ({THROTTLE_STOPPED:.0%} stopped) from the "
                                   "first progress event; --fault-latency delays request receipt, not the model")


# ---- 3.5 batch_operation_timeout ------------------------------------------------------------------------


def _collect(pendings: dict[int, PendingRequest], until: float, hook: Callable[[dict[int, float]], None] | None = None,
             stop: Callable[[dict[int, float]], bool] | None = None) -> dict[int, float]:
    """When each request was seen answered (2 ms resolution), until all are, ``stop`` says so, or ``until``."""
    seen: dict[int, float] = {}
    while len(seen) < len(pendings) and time.monotonic() < until and not (stop and stop(seen)):
        for i, pd in pendings.items():
            if i not in seen and pd.done:
                seen[i] = time.monotonic()
        if hook is not None:
            hook(seen)
        time.sleep(0.002)
    return seen


def _first_timeout(pendings: dict[int, PendingRequest], seen: dict[int, float]) -> float | None:
    times = [t for i, t in seen.items() if (outcome(pendings[i])[1] or WorkerError("", "")).code
             == "DEADLINE_EXCEEDED"]
    return min(times) if times else None


def _one_batch(ctx: RunnerContext, s: ModelSession, point: str, n: int, b: int, item: dict[str, Any],
               t_item: float, calib: tuple[float, float]) -> bool:
    """One batch; True when its deadline expired mid-batch (and its samples were recorded)."""
    rec = ctx.recorder
    params = [{**item, "seed": 100_000 * b + 1_000 * n + i} for i in range(n)]
    base = held_state(s)
    pendings: dict[int, PendingRequest] = {}
    competitor: list[PendingRequest] = []
    if point == "individual_item_timeout":  # items one after another, each with its own timeout
        per_item = max(4 * t_item, 0.5)
        heavy = n // 2
        # One item twice its own timeout (at most 200 steps: the restart runs it to the end).
        params[heavy] = sized(params[heavy], calib, 2 * per_item)
        params[heavy]["steps"] = min(params[heavy]["steps"], 200)
        seen: dict[int, float] = {}
        for i in range(n):
            pendings[i], t_sub = submit(s, params[i], per_item)
            pendings[i].wait(per_item + 120)
            seen[i] = time.monotonic()
            if outcome(pendings[i])[1] is not None:
                deadline_at = t_sub + per_item
                break
        else:
            deadline_at = math.inf
    else:  # the whole batch submitted at once under one deadline
        if point == "batch_completion_timeout":
            budget = 0.5 * n * t_item  # about half the items fit
        elif point == "resource_allocation_timeout":
            budget = 1.25 * n * t_item + 0.5  # all would fit, had the batch kept its inference slot
        else:
            raise ValueError(f"timeout_point {point!r}: expected individual_item_timeout, "
                             "batch_completion_timeout or resource_allocation_timeout")
        t0 = time.monotonic()
        for i in range(n):
            pendings[i], _ = submit(s, params[i], budget)
        deadline_at = t0 + budget

        def lose_slot(done: dict[int, float]) -> None:
            # A priority-0 request takes the slot after a quarter of the items and holds it past the deadline.
            if point == "resource_allocation_timeout" and not competitor and len(done) >= max(1, n // 4):
                hold = deadline_at - time.monotonic() + max(1.0, 0.2 * budget)
                hog = sized({**item, "seed": 7, "output": "digest"}, calib, hold)
                competitor.append(submit(s, hog, priority=0)[0])

        seen = _collect(pendings, deadline_at + 300, lose_slot,
                        stop=lambda done: (t := _first_timeout(pendings, done)) is not None
                        and time.monotonic() > t + 0.1)
    t_report = _first_timeout(pendings, seen)
    labels = {"batch_size": n, "batch": b, "timeout_point": point}
    if t_report is None:
        ctx.log.warning("batch %s: no item timed out (%d answered); no sample", labels, len(seen))
        _settle(s, pendings, competitor)
        for pd in pendings.values():  # its images are nobody's: take them off /dev/shm
            if outcome(pd)[0] is not None:
                _take(outcome(pd)[0] or {})
        return False
    labels["completed_before_timeout"] = sum(1 for i in seen if outcome(pendings[i])[0] is not None)
    rec.record("timeout_detection_delay_s", max(t_report - deadline_at, 0.0), "s", **labels)
    unanswered = [pd.id for pd in pendings.values() if not pd.done]
    rec.record("orphan_batch_item_count", float(still_held(s, unanswered)), "count", **labels)
    _settle(s, pendings, competitor)
    problems = leaks(s, base)
    rec.record("leaked_resource_count", float(len(problems)), "count", **labels, problems="; ".join(problems))
    completed = [i for i, pd in pendings.items() if pd.done and outcome(pd)[0] is not None]
    survived = set()
    for i in completed:
        result = outcome(pendings[i])[0] or {}
        try:
            images.take(ImageRef(**result["image"]))  # verifies the digests the result reported
            survived.add(i)
        except (ValueError, TypeError) as exc:
            ctx.log.warning("item %d's output is gone: %s", i, exc)
    rec.record("completed_items_lost_count", float(len(completed) - len(survived)), "count", **labels)
    # The restart: every item without a surviving output, in order, each once.
    remaining = [i for i in range(n) if i not in survived]
    results = {i: outcome(pd) for i, pd in ((i, _run(s, params[i])) for i in remaining)}
    first_missing = min((i for i in range(n) if i not in completed), default=n)
    once = all(r is not None and e is None and _take(r) for r, e in results.values())
    reprocessed = len(set(remaining) & set(completed))
    ok = once and reprocessed == 0 and (not remaining or remaining[0] == first_missing)
    rec.record("items_reprocessed_count", float(reprocessed), "count", **labels)
    rec.record("restart_from_last_completed_ok", 1.0 if ok else 0.0, "ratio", **labels, restarted=len(remaining),
               first_restarted=remaining[0] if remaining else None)
    return True


def _run(s: ModelSession, params: dict[str, Any]) -> PendingRequest:
    pending, _ = submit(s, params)
    pending.wait(600)
    return pending


def _take(result: dict[str, Any]) -> bool:
    try:
        images.take(ImageRef(**result["image"]))
        return True
    except (ValueError, TypeError):
        return False


def _settle(s: ModelSession, pendings: dict[int, PendingRequest], competitor: list[PendingRequest]) -> None:
    """Cancel what is left of the batch and the competitor; wait for every answer."""
    for pd in [*pendings.values(), *competitor]:
        if not pd.done:
            s.client.request("cancel", {"target": pd.id})
    for pd in [*pendings.values(), *competitor]:
        pd.wait(120)


def batch_timeout_recovery(ctx: RunnerContext) -> None:
    p = ctx.params
    point = str(p["timeout_point"])
    store = ensure_models(ctx)
    item = {"model": BASE, "width": 64, "height": 64, "steps": 2, "output": "shm", "progress": False}
    with model_session(ctx, store, cache_mib=256) as s:
        s.host.load(BASE)
        for _ in range(2):
            s.host.generate({**item, "output": "digest"}, timeout=600)  # warm-up
        calib = calibrate(s, {**item, "output": "digest"})
        # Budgets from the faster calibrated item time: a busy machine then only completes fewer items in time.
        t_item = calib[0] + item["steps"] * calib[1]
        ctx.recorder.note("calibration", {"item_s": t_item, "overhead_s": calib[0], "step_s": calib[1]})
        for n in (int(x) for x in p["batch_sizes"]):
            for b in range(int(p["batches_per_size"])):
                for tries in range(3):  # a batch that beat its deadline is retried with half the time per item
                    if _one_batch(ctx, s, point, n, b, item, t_item / 2**tries, calib):
                        break


RUNNERS = {
    "inference.execution_timeout": (TIMEOUT_METRICS, execution_timeout),
    "inference.batch_timeout_recovery": (BATCH_METRICS, batch_timeout_recovery),
}
