"""Safety validation that fails closed: classify, apply a policy, escalate what is uncertain.

For each validation (a batch of images and a policy name):

1. classification, within 80 % of the validation's time budget: the whole batch in one call, given half of
   that; when the call fails or times out, every item is retried alone, concurrently, within the rest, so
   a failure that belongs to one item (a crash on its input, a hang) stays with that item: isolation;
2. policy: each classified item's scores go through the policy engine, one item at a time, within the
   whole budget (the last 20 % are kept for it: a hung item's wait never leaves the others unchecked);
3. an item whose classification or policy check failed, crashed or ran past the budget is given the
   conservative classification: decision ``block`` with ``fail_closed`` and the reason, and it is
   escalated to the manual-review queue. Items a policy sends to ``review`` are escalated as well.

A component (classifier, policy engine) whose every item failed in ``breaker_failures`` consecutive
validations is taken out of the path (a circuit breaker): later validations fail closed at once, without
waiting for a timeout, until one probe validation after ``breaker_cooldown_s`` succeeds.

Faults (``FaultBook``) are injected here, for tests and the failure runners: a classifier model failure
(raises on an item), a policy engine crash (raises on an item) or a validation timeout (the classifier
hangs on an item until released), each with a scope: one item of a validation, every item of a
validation (a batch), or every item of every validation (system-wide), for the next ``count``
validations (system-wide: 0 means until cleared).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.postprocess.policy import Policy
from workers.postprocess.safety import ClassifierBackend, Scores

log = logging.getLogger(__name__)

FAILURES = ("classifier_model_failure", "policy_engine_crash", "validation_timeout")
SCOPES = ("single_item", "batch", "system_wide")
CONSERVATIVE = "block"
CLASSIFY_SHARE = 0.8  # of the budget; the rest is kept for the policy checks


class InjectedFault(RuntimeError):
    pass


# ---- faults ----------------------------------------------------------------------------------------------------
@dataclass
class ArmedFault:
    failure: str
    scope: str
    remaining: int | None  # validations still to hit; None: until cleared
    item: int  # single_item: which item (the last one when a batch is shorter)
    hang_s: float  # validation_timeout: how long the classifier hangs unless released


class FaultBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[ArmedFault] = []

    def arm(self, failure: str, scope: str, count: int, item: int = 0, hang_s: float = 30.0) -> None:
        if failure not in FAILURES:
            raise ValueError(f"failure must be one of {list(FAILURES)} (or 'none' to clear), got {failure!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
        if count < 0 or (count == 0 and scope != "system_wide"):
            raise ValueError(f"count must be >= 1 (0, until cleared, only for system_wide), got {count}")
        if item < 0 or not 0 < hang_s <= 600:
            raise ValueError(f"item must be >= 0 and hang_s in (0, 600], got {item} and {hang_s}")
        with self._lock:
            self._armed.append(ArmedFault(failure, scope, count or None, item, hang_s))

    def clear(self) -> int:
        with self._lock:
            n, self._armed = len(self._armed), []
        return n

    def armed(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._armed]

    def take(self, n_items: int) -> tuple[dict[str, frozenset[int]], float]:
        """The faults one validation of ``n_items`` gets (item indices per failure), counted as used."""
        hit: dict[str, set[int]] = {f: set() for f in FAILURES}
        hang = 0.0
        with self._lock:
            for f in self._armed:
                idx = {min(f.item, n_items - 1)} if f.scope == "single_item" else set(range(n_items))
                hit[f.failure] |= idx
                if f.failure == "validation_timeout":
                    hang = max(hang, f.hang_s)
                if f.remaining is not None:
                    f.remaining -= 1
            self._armed = [f for f in self._armed if f.remaining is None or f.remaining > 0]
        return {k: frozenset(v) for k, v in hit.items()}, hang


# ---- circuit breaker -------------------------------------------------------------------------------------------
class Breaker:
    def __init__(self, name: str, failures: int, cooldown_s: float) -> None:
        self.name, self.threshold, self.cooldown_s = name, failures, cooldown_s
        self._lock = threading.Lock()
        self._consecutive = 0
        self._open_until: float | None = None
        self._probing = False
        self.opened = 0

    def admit(self) -> str:
        """``pass``, ``probe`` (the one validation let through once the cooldown is over) or ``reject``."""
        with self._lock:
            if self._open_until is None:
                return "pass"
            if time.monotonic() < self._open_until or self._probing:
                return "reject"
            self._probing = True
            return "probe"

    def record(self, ok: bool, admitted: str) -> None:
        with self._lock:
            if admitted == "probe":
                self._probing = False
            if ok:
                self._consecutive, self._open_until = 0, None
                return
            self._consecutive += 1
            if admitted == "probe" or self._consecutive >= self.threshold:
                if self._open_until is None:
                    self.opened += 1
                self._open_until = time.monotonic() + self.cooldown_s

    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half_open" if time.monotonic() >= self._open_until else "open"

    def retry_in(self) -> float:
        with self._lock:
            return 0.0 if self._open_until is None else max(0.0, self._open_until - time.monotonic())


# ---- the manual-review queue -----------------------------------------------------------------------------------
@dataclass
class ReviewEntry:
    review_id: int
    id: str  # the item's id (the caller's, or "<request>:<index>")
    request: str
    index: int
    decision: str
    fail_closed: bool
    reason: str
    policy: str
    scores: dict[str, float] | None
    escalated_at: float = field(default_factory=time.monotonic)


class ReviewQueue:
    """Items waiting for a person. Never drops an entry; ``take`` hands entries over and removes them.
    With a log path every escalation is also appended (one JSON line) so it outlives the worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[ReviewEntry] = []
        self._next = 1
        self.escalated_total = 0
        self.log_path: Path | None = None

    def escalate(self, *, id: str, request: str, index: int, decision: str, fail_closed: bool, reason: str,
                 policy: str, scores: Scores | None) -> int:
        with self._lock:
            entry = ReviewEntry(self._next, id, request, index, decision, fail_closed, reason, policy,
                                dict(scores) if scores is not None else None)
            self._next += 1
            self._entries.append(entry)
            self.escalated_total += 1
            path = self.log_path
        if path is not None:
            try:
                with open(path, "a") as fh:
                    fh.write(json.dumps({k: v for k, v in asdict(entry).items() if k != "escalated_at"}) + "\n")
            except OSError as exc:  # the entry is queued in memory either way; say the log missed it
                log.error("review log %s: could not append entry %d: %s", path, entry.review_id, exc)
        return entry.review_id

    def list(self, limit: int, take: bool) -> tuple[list[ReviewEntry], int]:
        """(up to ``limit`` oldest entries, entries left pending); ``take`` removes the returned ones."""
        with self._lock:
            out = self._entries[:limit]
            if take:
                self._entries = self._entries[limit:]
            return list(out), len(self._entries)


# ---- the validator ---------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    index: int
    id: str
    decision: str  # allow | blur | review | block
    fail_closed: bool
    reason: str
    rule: str = ""
    category: str = ""
    scores: dict[str, float] | None = None
    escalated: bool = False
    review_id: int | None = None
    policy_s: float | None = None


@dataclass
class Report:
    policy: str
    items: list[Verdict]
    classify_s: float
    policy_s: float
    seconds: float
    isolated: bool  # the batch call failed and items were classified one by one
    breakers: dict[str, str]


def _call(fn: Callable[[threading.Event], Any], timeout: float) -> tuple[Any, str | None]:
    """Run ``fn(release)`` on its own thread for at most ``timeout`` s: (result, None) or (None, why).
    On timeout ``release`` is set (an injected hang returns); a real hang keeps its thread, which is logged."""
    box: dict[str, Any] = {}
    done, release = threading.Event(), threading.Event()

    def run() -> None:
        try:
            box["result"] = fn(release)
        except Exception as exc:  # the caller turns it into a fail-closed reason
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="safety-classify", daemon=True).start()
    if not done.wait(max(0.0, timeout)):
        release.set()
        return None, f"timed out after {max(0.0, timeout):.3f} s"
    if "error" in box:
        exc = box["error"]
        return None, f"{type(exc).__name__}: {exc}"
    return box["result"], None


class SafetyValidator:
    def __init__(self, backend: ClassifierBackend, policies: Mapping[str, Policy], queue: ReviewQueue,
                 faults: FaultBook, breaker_failures: int = 3, breaker_cooldown_s: float = 1.0) -> None:
        if breaker_failures < 1 or not 0 < breaker_cooldown_s <= 3600:
            raise ValueError(f"breaker_failures must be >= 1 and breaker_cooldown_s in (0, 3600], got "
                             f"{breaker_failures} and {breaker_cooldown_s}")
        self.backend, self.policies, self.queue, self.faults = backend, dict(policies), queue, faults
        self.breakers = {"classifier": Breaker("classifier", breaker_failures, breaker_cooldown_s),
                         "policy": Breaker("policy", breaker_failures, breaker_cooldown_s)}
        self._lock = threading.Lock()
        self.counts = {"validations": 0, "items": 0, "fail_closed": 0, "escalated": 0, "isolations": 0}

    def policy(self, name: str) -> Policy:
        if name not in self.policies:
            raise KeyError(f"unknown policy {name!r}; configured: {sorted(self.policies)}")
        return self.policies[name]

    # ---- classification --------------------------------------------------------------------------------------
    def _checked(self, out: Any, n: int) -> list[Scores]:
        cats = self.backend.categories
        if not isinstance(out, list) or len(out) != n:
            got = len(out) if isinstance(out, list) else type(out).__name__
            raise ValueError(f"classifier returned {got} results for {n} images")
        for scores in out:
            bad = [c for c in cats if not isinstance(scores.get(c), float) or not math.isfinite(scores[c])
                   or not 0 <= scores[c] <= 1]
            if bad:
                raise ValueError(f"classifier returned no valid score for {bad[0]!r}: {scores.get(bad[0])!r}")
        return out

    def _classify(self, idx: list[int], images: Sequence[np.ndarray], faults: Mapping[str, frozenset[int]],
                  hang_s: float, release: threading.Event) -> list[Scores]:
        hung = [i for i in idx if i in faults["validation_timeout"]]
        if hung:
            release.wait(hang_s)
            raise InjectedFault(f"classifier hung on item {hung[0]} (injected validation timeout)")
        broken = [i for i in idx if i in faults["classifier_model_failure"]]
        if broken:
            raise InjectedFault(f"classifier model failure on item {broken[0]} (injected)")
        return self._checked(self.backend.classify([images[i] for i in idx]), len(idx))

    def _classify_all(self, images: Sequence[np.ndarray], faults: Mapping[str, frozenset[int]], hang_s: float,
                      deadline: float) -> tuple[list[Scores | None], dict[int, str], bool]:
        n = len(images)
        every = list(range(n))
        result, why = _call(lambda rel: self._classify(every, images, faults, hang_s, rel),
                            (deadline - time.monotonic()) / 2)
        if why is None:
            return list(result), {}, False
        # Isolation: each item alone, concurrently, in the rest of the budget.
        scores: list[Scores | None] = [None] * n
        failed: dict[int, str] = {}
        lock = threading.Lock()

        def one(i: int) -> None:
            r, w = _call(lambda rel: self._classify([i], images, faults, hang_s, rel), deadline - time.monotonic())
            with lock:
                if w is None:
                    scores[i] = r[0]
                else:
                    failed[i] = f"classifier failed on the batch ({why}) and on this item alone ({w})"

        threads = [threading.Thread(target=one, args=(i,), name="safety-isolate", daemon=True) for i in every]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return scores, failed, True

    # ---- validation ------------------------------------------------------------------------------------------
    def validate(self, images: Sequence[np.ndarray], ids: Sequence[str], policy_name: str, timeout_s: float,
                 request: str) -> Report:
        """Every item gets a verdict; none is ever allowed without a successful classification and check."""
        policy = self.policy(policy_name)  # an unknown policy is the caller's error, raised before any work
        if not 0 < timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600], got {timeout_s}")
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        n = len(images)
        verdicts: list[Verdict | None] = [None] * n
        faults, hang_s = self.faults.take(n)
        classify_s = policy_s = 0.0
        isolated = False
        try:
            scores, failed, isolated = self._classification(images, faults, hang_s,
                                                            t0 + CLASSIFY_SHARE * timeout_s)
            classify_s = time.monotonic() - t0
            for i, why in failed.items():
                verdicts[i] = Verdict(i, ids[i], CONSERVATIVE, True, why)
            t1 = time.monotonic()
            self._policy_stage(policy, scores, verdicts, ids, faults, deadline, timeout_s)
            policy_s = time.monotonic() - t1
        except Exception as exc:  # anything unforeseen: every undecided item fails closed, with the reason
            log.exception("safety validation %s failed", request)
            for i in range(n):
                if verdicts[i] is None:
                    verdicts[i] = Verdict(i, ids[i], CONSERVATIVE, True,
                                          f"validation failed: {type(exc).__name__}: {exc}")
        items = [v for v in verdicts if v is not None]
        for v in items:
            if v.fail_closed or v.decision == "review":
                v.escalated = True
                v.review_id = self.queue.escalate(id=v.id, request=request, index=v.index, decision=v.decision,
                                                  fail_closed=v.fail_closed, reason=v.reason, policy=policy.name,
                                                  scores=v.scores)
        with self._lock:
            self.counts["validations"] += 1
            self.counts["items"] += n
            self.counts["fail_closed"] += sum(v.fail_closed for v in items)
            self.counts["escalated"] += sum(v.escalated for v in items)
            self.counts["isolations"] += isolated
        return Report(policy.name, items, classify_s, policy_s, time.monotonic() - t0, isolated,
                      {k: b.state() for k, b in self.breakers.items()})

    def _classification(self, images: Sequence[np.ndarray], faults: Mapping[str, frozenset[int]], hang_s: float,
                        deadline: float) -> tuple[list[Scores | None], dict[int, str], bool]:
        breaker = self.breakers["classifier"]
        admitted = breaker.admit()
        if admitted == "reject":
            why = (f"classifier isolated: its circuit opened after {breaker.threshold} consecutive failed "
                   f"validations; next probe in {breaker.retry_in():.2f} s")
            return [None] * len(images), dict.fromkeys(range(len(images)), why), False
        ok = False
        try:
            scores, failed, isolated = self._classify_all(images, faults, hang_s, deadline)
            ok = len(failed) < len(images)
        finally:  # recorded even when something unforeseen raised: a probe never stays in flight
            breaker.record(ok, admitted)
        return scores, failed, isolated

    def _policy_stage(self, policy: Policy, scores: list[Scores | None], verdicts: list[Verdict | None],
                      ids: Sequence[str], faults: Mapping[str, frozenset[int]], deadline: float,
                      timeout_s: float) -> None:
        todo = [i for i, s in enumerate(scores) if s is not None and verdicts[i] is None]
        if not todo:
            return
        breaker = self.breakers["policy"]
        admitted = breaker.admit()
        try:
            ok = self._decide_each(policy, todo, scores, verdicts, ids, faults, deadline, timeout_s, admitted)
        except BaseException:
            if admitted != "reject":
                breaker.record(False, admitted)
            raise
        if admitted != "reject":
            breaker.record(ok > 0, admitted)

    def _decide_each(self, policy: Policy, todo: list[int], scores: list[Scores | None],
                     verdicts: list[Verdict | None], ids: Sequence[str], faults: Mapping[str, frozenset[int]],
                     deadline: float, timeout_s: float, admitted: str) -> int:
        breaker = self.breakers["policy"]
        ok = 0
        for i in todo:
            s = scores[i]
            assert s is not None
            if admitted == "reject":
                verdicts[i] = Verdict(i, ids[i], CONSERVATIVE, True,
                                      f"policy engine isolated: its circuit opened after {breaker.threshold} "
                                      f"consecutive failed validations; next probe in {breaker.retry_in():.2f} s",
                                      scores=s)
                continue
            if time.monotonic() > deadline:
                verdicts[i] = Verdict(i, ids[i], CONSERVATIVE, True,
                                      f"validation timed out: {timeout_s:g} s budget spent before the policy check",
                                      scores=s)
                continue
            t = time.perf_counter()
            try:
                if i in faults["policy_engine_crash"]:
                    raise InjectedFault(f"policy engine crashed on item {i} (injected)")
                d = policy.decide(s)
            except Exception as exc:  # a crashing policy engine fails the item closed, never open
                verdicts[i] = Verdict(i, ids[i], CONSERVATIVE, True,
                                      f"policy engine failed: {type(exc).__name__}: {exc}", scores=s,
                                      policy_s=time.perf_counter() - t)
                continue
            ok += 1
            verdicts[i] = Verdict(i, ids[i], d.action, False, d.reason, d.rule, d.category, s,
                                  policy_s=time.perf_counter() - t)
        return ok

    # ---- components alone --------------------------------------------------------------------------------
    def classify(self, images: Sequence[np.ndarray]) -> list[Scores]:
        """The classifier alone (no faults, no policy): scores per image, or the backend's exception."""
        return self._checked(self.backend.classify(images), len(images))

    def check(self, policy_name: str, scores: Sequence[Scores]) -> list[tuple[Any, float]]:
        """The policy engine alone: (Decision, seconds) per item; a bad score is the caller's error."""
        policy = self.policy(policy_name)
        out = []
        for i, s in enumerate(scores):
            t = time.perf_counter()
            try:
                d = policy.decide(s)
            except ValueError as exc:
                raise ValueError(f"scores[{i}]: {exc}") from None
            out.append((d, time.perf_counter() - t))
        return out
