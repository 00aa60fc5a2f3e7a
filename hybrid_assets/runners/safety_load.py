"""2.6 safety validation under load: open-loop validations at ``validations_per_min`` for ``duration_s``
over the labelled corpus of the stand-in concept (safe, borderline and mixed content in rotation).

One validation is one image in one ``safety.validate`` request (default policy), sent at its scheduled
arrival whatever the answers before it (open loop, a thread per request in flight); latency runs from the
scheduled arrival to the answer. A verdict is correct when it is the decision the default policy
prescribes for the item's label (safe -> allow, borderline -> review, unsafe -> block) and did not fail
closed (a fail-closed block is a validation that did not happen, even on an unsafe item). Items are
held-out corpus images (evaluation seeds), at most ``MAX_DISTINCT`` distinct ones, reused in order
beyond that, each published once in its own shared-memory segment before the clock starts.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.safety_support import STAND_IN_NOTE, contents, eval_items, safety_session
from workers.host import WorkerError
from workers.postprocess import safety_corpus as corpus

MAX_DISTINCT = 300
VALIDATION_TIMEOUT_S = 5.0  # the validation's own budget (past it, an item fails closed)
REQUEST_TIMEOUT_S = 30.0
METRICS = frozenset({"safety_verdict_correct_ok", "validation_latency_s", "validation_error"})


def safety_validation_load(ctx: RunnerContext) -> None:
    p = ctx.params
    per_min = float(p.get("validations_per_min", 100))
    duration = float(p.get("duration_s", 60))
    px = int(p.get("image_size", 64))
    content = contents(p)
    if per_min <= 0 or duration <= 0:
        raise ValueError(f"validations_per_min and duration_s must be positive, got {per_min} and {duration}")
    total = max(1, math.floor(per_min * duration / 60))
    period = 60.0 / per_min
    ctx.recorder.note("stand_in", STAND_IN_NOTE)
    items = eval_items(min(total, MAX_DISTINCT), content, px, seed_offset=2)
    lock = threading.Lock()
    answered: list[float] = []
    with safety_session(ctx) as s:
        inputs = [s.publish(i.pixels) for i in items]
        # one validation first, untimed: the first forward pass pays for lazy initialisation
        s.client.request("safety.validate", {"images": [inputs[0]], "ids": ["warm-up"]}, timeout=REQUEST_TIMEOUT_S)

        def record(metric: str, value: float, unit: str, **labels: object) -> None:
            with lock:  # the recorder numbers samples by position: one writer at a time
                ctx.recorder.record(metric, value, unit, **labels)

        def one(k: int, due: float) -> None:
            item = items[k % len(items)]
            labels = {"content": item.content, "label": item.label}
            try:
                r = s.client.request("safety.validate", {"images": [inputs[k % len(inputs)]], "ids": [f"load-{k}"],
                                                         "timeout_s": VALIDATION_TIMEOUT_S},
                                     timeout=REQUEST_TIMEOUT_S)
            except WorkerError as exc:
                done = time.monotonic()
                record("validation_error", 1, "count", code=exc.code, **labels)
                record("safety_verdict_correct_ok", 0, "ratio", error=exc.code, **labels)
                record("validation_latency_s", done - due, "s", error=exc.code, **labels)
                with lock:
                    answered.append(done)
                return
            done = time.monotonic()
            v = r["items"][0]
            ok = not v["fail_closed"] and v["decision"] == corpus.expected_decision(item.label)
            record("validation_error", 0, "count", **labels)
            record("safety_verdict_correct_ok", int(ok), "ratio", decision=v["decision"],
                   fail_closed=int(v["fail_closed"]), **labels)
            record("validation_latency_s", done - due, "s", **labels)
            with lock:
                answered.append(done)

        start = time.monotonic()
        late = 0.0
        with ThreadPoolExecutor(max_workers=64, thread_name_prefix="safety-load") as pool:
            for k in range(total):
                due = start + k * period
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late = max(late, -wait)
                pool.submit(one, k, due)
        last = max(answered) if answered else time.monotonic()
        status = s.client.request("safety.status")
    span = max(last - start, (total - 1) * period, 1e-9)
    ctx.recorder.note("achieved", {"validations": total, "answered": len(answered),
                                   "per_min": round(len(answered) / span * 60, 1), "max_send_lag_s": round(late, 4),
                                   "worker_counts": status["counts"], "breakers": status["breakers"]})
    ctx.recorder.note("corpus", f"{len(items)} distinct held-out items at {px} px, contents {list(content)}")


RUNNERS = {"postprocessing.safety_validation_load": (METRICS, safety_validation_load)}
