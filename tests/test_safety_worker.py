"""The safety domain in a real worker: a failing classifier makes validation fail closed (block and the
manual-review queue) while other items are judged normally; bad input (corrupt image, unknown policy, a
policy file with an unknown rule) gets a clear error with its code and the worker keeps serving; the
direct handlers run the same validation in process."""

from __future__ import annotations

import base64
import logging

import pytest

from hybrid_assets.runners.safety_support import ensure_classifier
from workers.host import WorkerClient, WorkerError
from workers.postprocess import safety_corpus as sc
from workers.postprocess.imageio import encode
from workers.protocol.images import ShmLedger
from workers.protocol.messages import ErrorCode

pytestmark = pytest.mark.subprocess


def inline(pixels) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"encoded_b64": base64.b64encode(encode(pixels, "png")).decode()}


@pytest.fixture(scope="module")
def items() -> list[sc.Item]:
    return sc.corpus(sc.EVAL_SEED_BASE + 11, 6)


def test_a_failing_classifier_fails_closed_into_the_review_queue_and_the_rest_is_judged(
        worker_argv: list[str], items: list[sc.Item]) -> None:
    root = ensure_classifier().root
    ledger = ShmLedger()
    with WorkerClient(worker_argv).start() as c:
        with pytest.raises(WorkerError) as info:
            c.request("safety.validate", {"images": [inline(items[0].pixels)]})
        assert info.value.code == ErrorCode.INVALID_PARAMS and "safety.configure" in str(info.value)
        cfg = c.request("safety.configure", {"root": str(root)}, timeout=120)
        assert cfg["categories"] == list(sc.CATEGORIES) and "not an unsafe-content detector" in cfg["stand_in"]
        refs = []
        for it in items:
            r = ledger.publish(it.pixels[None])
            refs.append({"ref": {"shm": r.shm, "shape": r.shape, "sha256": r.sha256}})
        ids = [f"item-{k}" for k in range(len(items))]
        healthy = c.request("safety.validate", {"images": refs, "ids": ids})
        baseline = [v["decision"] for v in healthy["items"]]
        assert not any(v["fail_closed"] for v in healthy["items"])
        c.request("safety.review_queue", {"take": True})
        c.request("fault.safety_failure", {"failure": "classifier_model_failure", "scope": "single_item",
                                           "item": 2})
        r = c.request("safety.validate", {"images": refs, "ids": ids, "timeout_s": 2.0})
        assert r["isolated"] and r["fail_closed"] == 1
        for k, v in enumerate(r["items"]):
            if k == 2:
                assert v["decision"] == "block" and v["fail_closed"] and v["escalated"] and v["scores"] is None
                assert "classifier model failure" in v["reason"]
            else:
                assert v["decision"] == baseline[k] and not v["fail_closed"]
        c.request("fault.safety_failure", {"failure": "classifier_model_failure", "scope": "batch"})
        r = c.request("safety.validate", {"images": refs[:3], "ids": ids[:3], "timeout_s": 2.0})
        assert [v["decision"] for v in r["items"]] == ["block"] * 3 and r["fail_closed"] == 3
        queue = c.request("safety.review_queue", {"take": True})
        failed = sorted(e["id"] for e in queue["entries"] if e["fail_closed"])
        assert failed == ["item-0", "item-1", "item-2", "item-2"] and queue["pending"] == 0
        status = c.request("safety.status")
        assert status["faults"] == [] and status["counts"]["fail_closed"] == 4
    ledger.unlink_all()


BAD_INPUTS = [
    ({"images": [{"encoded_b64": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()}]},
     (ErrorCode.IMAGE_INVALID, ErrorCode.UNSUPPORTED_FORMAT), "images[0]"),
    ({"images": [{"encoded_b64": "!!not base64!!"}]}, (ErrorCode.IMAGE_INVALID,), "base64"),
    ({"images": "INLINE", "policy": "no-such-policy"}, (ErrorCode.INVALID_PARAMS,), "unknown policy 'no-such-policy'"),
    ({"images": []}, (ErrorCode.INVALID_PARAMS,), "1..256 images"),
    ({"images": "INLINE", "ids": ["a", "b"]}, (ErrorCode.INVALID_PARAMS,), "2 given for 1 images"),
    ({"images": "INLINE", "timeout_s": 0}, (ErrorCode.INVALID_PARAMS,), "timeout_s"),
]


def test_bad_input_and_a_policy_file_with_an_unknown_rule_are_named_and_the_worker_keeps_serving(
        worker_argv: list[str], items: list[sc.Item]) -> None:
    root = ensure_classifier().root
    good = ("policy: kids\nrules:\n  - {category: any, min_score: 0.2, action: block}\n")
    bad = ("policy: other\nrules:\n  - {category: stripes, min_score: 0.5, action: block, threshold: 1}\n")
    with WorkerClient(worker_argv).start() as c:
        c.request("safety.configure", {"root": str(root)}, timeout=120)
        for params, codes, words in BAD_INPUTS:
            if params["images"] == "INLINE":
                params = {**params, "images": [inline(items[0].pixels)]}
            with pytest.raises(WorkerError) as info:
                c.request("safety.validate", params)
            assert info.value.code in codes and words in str(info.value), (params, info.value)
            ok = c.request("safety.validate", {"images": [inline(items[1].pixels)]})
            assert ok["items"][0]["decision"] == sc.expected_decision(items[1].label)
        with pytest.raises(WorkerError) as info:
            c.request("safety.configure", {"policies": [good, bad]})
        assert info.value.code == ErrorCode.POLICY_INVALID
        assert "policies[1]" in str(info.value) and "unknown field 'threshold'" in str(info.value)
        assert c.request("safety.status")["policies"] == ["default", "lenient", "strict"]  # nothing installed
        cfg = c.request("safety.configure", {"policies": [good]})
        assert [p["name"] for p in cfg["policies"]] == ["default", "kids", "lenient", "strict"]
        d = c.request("safety.policy_check", {"policy": "kids", "scores": [{"stripes": 0.3, "checker": 0.0}]})
        assert d["decisions"][0]["decision"] == "block"
        with pytest.raises(WorkerError) as info:
            c.request("safety.policy_check", {"scores": [{"stripes": 7.0, "checker": 0.0}]})
        assert info.value.code == ErrorCode.INVALID_PARAMS and "scores[0]" in str(info.value)
        with pytest.raises(WorkerError) as info:
            c.request("safety.configure", {"root": str(root), "model": "tiny-sd-x"})
        assert info.value.code == ErrorCode.INVALID_PARAMS and "tiny-sd-x" in str(info.value)
        assert c.request("ping", {"payload": "alive"})["payload"] == "alive"


def test_direct_handlers_validate_in_process(items: list[sc.Item]) -> None:
    import io

    from workers.runtime.context import RequestContext
    from workers.runtime.ops_safety import direct_handlers
    from workers.runtime.server import WorkerConfig, WorkerServer

    server = WorkerServer(WorkerConfig(), io.BytesIO(), io.BytesIO())
    h = direct_handlers(server)
    ctx = RequestContext(server, "direct-1", None)
    h["safety.configure"](ctx, {"root": str(ensure_classifier().root)})
    r = h["safety.validate"](ctx, {"images": [inline(i.pixels) for i in items[:3]], "policy": "default"})
    assert [v.decision for v in r.items] == [sc.expected_decision(i.label) for i in items[:3]]
    assert r.items[0].id == "direct-1:0"
    with pytest.raises(ValueError, match="invalid params"):
        h["safety.validate"](ctx, {"images": [], "bogus": 1})
    logging.getLogger(__name__).debug("direct validation took %.3f s", r.seconds)
