"""The fail-closed validator with test-double classifiers (backend_debug-style): a failing, crashing,
hanging or lying classifier and a crashing policy engine give the affected items ``block`` with
``fail_closed`` and a review-queue entry, items outside the failure's scope are judged normally, and a
component failing every validation is taken out of the path until a probe succeeds."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from workers.postprocess import policy as pol
from workers.postprocess.safety_corpus import CATEGORIES
from workers.postprocess.safety_validate import FaultBook, ReviewQueue, SafetyValidator

CATS = tuple(CATEGORIES)


class TableBackend:
    """Scores read from the image itself (pixel [0, 0, 0] / 255 as the stripes score): a test double."""

    name, sha256, categories = "table", "0" * 64, CATS

    def __init__(self) -> None:
        self.calls = 0
        self.fail: BaseException | None = None
        self.hang = threading.Event()  # set: every call blocks until ``release`` is set
        self.release = threading.Event()
        self.nan_on_value: int | None = None

    def classify(self, images: Sequence[np.ndarray]) -> list[dict[str, float]]:
        self.calls += 1
        if self.hang.is_set():
            self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        out = []
        for im in images:
            v = int(im[0, 0, 0])
            out.append({"stripes": float("nan") if v == self.nan_on_value else v / 255, "checker": 0.0})
        return out


def image(score: float) -> np.ndarray:
    im = np.zeros((8, 8, 3), np.uint8)
    im[0, 0, 0] = round(score * 255)
    return im


def make(backend: TableBackend, **kw: float) -> tuple[SafetyValidator, ReviewQueue, FaultBook]:
    q, f = ReviewQueue(), FaultBook()
    return SafetyValidator(backend, pol.load_shipped(CATS), q, f, **kw), q, f  # type: ignore[arg-type]


BATCH = [image(0.0), image(0.5), image(1.0), image(0.1)]
EXPECTED = ["allow", "review", "block", "allow"]
IDS = [f"i{k}" for k in range(len(BATCH))]


def test_a_healthy_batch_is_decided_by_policy_and_review_decisions_are_escalated() -> None:
    v, q, _ = make(TableBackend())
    r = v.validate(BATCH, IDS, "default", 2.0, "r1")
    assert [x.decision for x in r.items] == EXPECTED
    assert not any(x.fail_closed for x in r.items) and not r.isolated
    entries, pending = q.list(10, take=False)
    assert [e.id for e in entries] == ["i1"] and pending == 1 and not entries[0].fail_closed


@pytest.mark.parametrize("exc", [RuntimeError("CUDA error: an illegal memory access"), MemoryError(), KeyError("x")])
def test_a_failing_classifier_fails_every_item_closed_and_escalates_it(exc: BaseException) -> None:
    backend = TableBackend()
    backend.fail = exc
    v, q, _ = make(backend)
    r = v.validate(BATCH, IDS, "default", 2.0, "r1")
    assert all(x.decision == "block" and x.fail_closed and x.escalated for x in r.items)
    assert all(type(exc).__name__ in x.reason for x in r.items)
    entries, _ = q.list(10, take=True)
    assert sorted(e.id for e in entries) == IDS and all(e.fail_closed for e in entries)
    assert q.list(10, take=False) == ([], 0)  # taken


def test_a_classifier_returning_nan_fails_that_item_closed_and_isolation_keeps_the_others() -> None:
    backend = TableBackend()
    backend.nan_on_value = round(1.0 * 255)
    v, _, _ = make(backend)
    r = v.validate(BATCH, IDS, "default", 2.0, "r1")
    assert r.isolated
    assert [x.fail_closed for x in r.items] == [False, False, True, False]
    assert "no valid score" in r.items[2].reason
    assert [x.decision for x in r.items] == ["allow", "review", "block", "allow"]


def test_escalations_are_also_appended_to_the_review_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    backend = TableBackend()
    backend.fail = RuntimeError("down")
    v, q, _ = make(backend)
    q.log_path = tmp_path / "review.jsonl"
    v.validate(BATCH[:2], IDS[:2], "default", 1.0, "r9")
    lines = [json.loads(x) for x in q.log_path.read_text().splitlines()]
    assert [(e["id"], e["request"], e["fail_closed"], e["decision"]) for e in lines] == [
        ("i0", "r9", True, "block"), ("i1", "r9", True, "block")]


def test_a_hanging_classifier_times_out_within_the_budget_and_fails_closed() -> None:
    backend = TableBackend()
    backend.hang.set()
    v, _, _ = make(backend)
    t = time.monotonic()
    r = v.validate(BATCH, IDS, "default", 0.4, "r1")
    assert time.monotonic() - t < 1.5
    assert all(x.fail_closed and x.decision == "block" and "timed out" in x.reason for x in r.items)
    backend.release.set()


@pytest.mark.parametrize(("failure", "scope", "hit"), [
    ("classifier_model_failure", "single_item", [1]),
    ("classifier_model_failure", "batch", [0, 1, 2, 3]),
    ("policy_engine_crash", "single_item", [1]),
    ("policy_engine_crash", "batch", [0, 1, 2, 3]),
    ("validation_timeout", "single_item", [1]),
])
def test_injected_faults_hit_their_scope_only_and_for_count_validations(failure: str, scope: str,
                                                                        hit: list[int]) -> None:
    v, q, f = make(TableBackend())
    f.arm(failure, scope, count=1, item=1, hang_s=30)
    r = v.validate(BATCH, IDS, "default", 0.6, "r1")
    assert [k for k, x in enumerate(r.items) if x.fail_closed] == hit
    for k, x in enumerate(r.items):
        assert x.decision == ("block" if k in hit else EXPECTED[k])
    escalated = {e.id for e in q.list(100, take=False)[0] if e.fail_closed}
    assert escalated == {IDS[k] for k in hit}
    again = v.validate(BATCH, IDS, "default", 0.6, "r2")  # count 1: the next validation is clean
    assert not any(x.fail_closed for x in again.items) and f.armed() == []


def test_system_wide_fault_opens_the_breaker_then_a_probe_closes_it_once_cleared() -> None:
    backend = TableBackend()
    v, _, f = make(backend, breaker_failures=2, breaker_cooldown_s=0.2)
    f.arm("classifier_model_failure", "system_wide", count=0)
    for _ in range(2):
        v.validate(BATCH[:1], IDS[:1], "default", 1.0, "r")
    calls = backend.calls
    r = v.validate(BATCH[:1], IDS[:1], "default", 1.0, "r")
    assert r.breakers["classifier"] == "open" and "isolated" in r.items[0].reason and r.items[0].fail_closed
    assert backend.calls == calls  # taken out of the path: not even called
    assert f.clear() == 1
    time.sleep(0.25)
    r = v.validate(BATCH[:1], IDS[:1], "default", 1.0, "r")  # the probe
    assert not r.items[0].fail_closed and r.breakers["classifier"] == "closed"


def test_a_crashing_policy_engine_fails_closed_without_an_injected_fault() -> None:
    v, _, _ = make(TableBackend())

    class Broken(pol.Policy):
        def decide(self, scores):  # type: ignore[no-untyped-def]
            raise ZeroDivisionError("bug in a rule")

    base = v.policies["default"]
    v.policies["default"] = Broken(*[getattr(base, f) for f in base.__dataclass_fields__])
    r = v.validate(BATCH, IDS, "default", 1.0, "r1")
    assert all(x.fail_closed and "ZeroDivisionError" in x.reason for x in r.items)


def test_bad_requests_are_errors_not_verdicts() -> None:
    v, _, f = make(TableBackend())
    with pytest.raises(KeyError, match="unknown policy 'nope'"):
        v.validate(BATCH, IDS, "nope", 1.0, "r")
    with pytest.raises(ValueError, match="timeout_s"):
        v.validate(BATCH, IDS, "default", 0.0, "r")
    with pytest.raises(ValueError, match="scores\\[0\\]"):
        v.check("default", [{"stripes": 2.0, "checker": 0.0}])
    for bad in [("oops", "batch", 1), ("policy_engine_crash", "everywhere", 1), ("validation_timeout", "batch", 0)]:
        with pytest.raises(ValueError):
            f.arm(*bad)
