"""Handlers of the safety operations (see workers/protocol/ops_safety.py).

``SafetyRuntime`` holds the domain's state: the validator (classifier + policies), the manual-review
queue and the armed faults (both outlive a reconfiguration), and the safety pool. validate, classify and
policy_check are routed to that pool by priority; configure runs on the shared executor; the review
queue, the status and the fault switch are control operations, answered at once even under load.

``direct_handlers`` exposes the same operations as plain in-process calls (no pool, no protocol) for
work composed inside the worker, e.g. a workflow that generates, upscales, then validates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import msgspec

from workers.protocol.messages import ErrorCode, Request
from workers.protocol.ops_safety import (
    MAX_IMAGES,
    ItemVerdict,
    PolicyDecision,
    PolicyInfo,
    ReviewEntryInfo,
    ReviewQueueParams,
    ReviewQueueResult,
    SafetyClassifyParams,
    SafetyClassifyResult,
    SafetyConfigureParams,
    SafetyConfigureResult,
    SafetyFaultParams,
    SafetyFaultResult,
    SafetyPolicyCheckParams,
    SafetyPolicyCheckResult,
    SafetyStatusParams,
    SafetyStatusResult,
    SafetyValidateParams,
    SafetyValidateResult,
)
from workers.runtime.context import OperationError, RequestContext
from workers.runtime.slots import PriorityPool

if TYPE_CHECKING:
    import numpy as np

    from workers.postprocess.safety_validate import SafetyValidator
    from workers.runtime.server import WorkerServer

log = logging.getLogger(__name__)
_NOT_CONFIGURED = "the safety domain is not configured: send safety.configure (with the model root) first"
_MARGIN_S = 0.05  # answer a fail-closed verdict this long before the request's own deadline


class SafetyRuntime:
    def __init__(self, server: WorkerServer) -> None:
        from workers.postprocess.safety_validate import FaultBook, ReviewQueue

        self.server = server
        self.validator: Union[SafetyValidator, None] = None
        self.pool: Union[PriorityPool, None] = None
        self._pool_threads = 0
        self.queue = ReviewQueue()
        self.faults = FaultBook()
        self._lock = threading.Lock()
        server.stop_hooks.append(self._stop)

    def _stop(self, drain: bool) -> None:
        if self.pool is not None:
            self.pool.close(drain)

    def require(self) -> SafetyValidator:
        v = self.validator
        if v is None:
            raise ValueError(_NOT_CONFIGURED)
        return v

    # ---- configuration -------------------------------------------------------------------------------------
    def configure(self, ctx: RequestContext, p: SafetyConfigureParams) -> SafetyConfigureResult:
        from workers.models.integrity import IntegrityError
        from workers.models.store import ModelStore
        from workers.postprocess import policy as pol
        from workers.postprocess.safety import INPUT_PX, load_classifier
        from workers.postprocess.safety_validate import SafetyValidator

        if not 1 <= p.workers <= 16:
            raise ValueError(f"workers must be 1..16, got {p.workers}")
        t0 = time.perf_counter()
        backend = self.validator.backend if self.validator is not None else None
        if p.root is not None:
            try:
                backend = load_classifier(ModelStore(Path(p.root)), p.model)
            except IntegrityError as exc:
                raise OperationError(ErrorCode.MODEL_CORRUPT, f"safety classifier {p.model!r}: {exc}") from exc
        elif backend is None:
            raise ValueError("no safety classifier loaded yet: give root (the model root holding it)")
        elif p.model != backend.name:
            raise ValueError(f"model {p.model!r} asked without a root; the loaded classifier is {backend.name!r}")
        try:
            given = pol.parse_set({f"policies[{i}]": text for i, text in enumerate(p.policies)}, backend.categories)
            installed = given if p.replace_policies else {**pol.load_shipped(backend.categories), **given}
        except pol.PolicyError as exc:
            raise OperationError(ErrorCode.POLICY_INVALID, str(exc)) from exc
        if not installed:
            raise OperationError(ErrorCode.POLICY_INVALID, "replace_policies with no documents leaves no policy")
        validator = SafetyValidator(backend, installed, self.queue, self.faults, p.breaker_failures,
                                    p.breaker_cooldown_s)
        if p.review_log is not None:
            log_path = Path(p.review_log)
            if not log_path.parent.is_dir():
                raise ValueError(f"review_log: directory {log_path.parent} does not exist")
            self.queue.log_path = log_path
        with self._lock:
            old = self.pool
            if old is None or self._pool_threads != p.workers:
                self.pool = PriorityPool(self.server, "safety", p.workers)
                self._pool_threads = p.workers
            self.validator = validator
        if old is not None and old is not self.pool:
            old.close(drain=True)  # what it already accepted still runs, on the previous validator
        return SafetyConfigureResult(
            backend.name, backend.sha256, list(backend.categories), INPUT_PX,
            getattr(backend, "metadata", {}).get("stand_in", ""),
            [PolicyInfo(q.name, q.source, q.description, len(q.rules), q.default_action, q.missing_score_action,
                        q.sha256) for q in sorted(installed.values(), key=lambda q: q.name)],
            p.workers, time.perf_counter() - t0)

    # ---- work ----------------------------------------------------------------------------------------------
    def _route(self, op: str, fn: Callable[[RequestContext, Any, float], Any]) -> Callable[[Request, Any], None]:
        def route(req: Request, params: Any) -> None:
            pool = self.pool
            if pool is None or self.validator is None:
                self.server.fail(req.id, ErrorCode.INVALID_PARAMS, f"{op}: {_NOT_CONFIGURED}")
                return
            pool.submit(req.id, op, req.priority, req.deadline_ms, params, fn)
        return route

    def validate(self, ctx: RequestContext, p: SafetyValidateParams, queue_s: float = 0.0) -> SafetyValidateResult:
        validator = self.require()
        if not 0 < p.timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600], got {p.timeout_s}")
        if p.ids and len(p.ids) != len(p.images):
            raise ValueError(f"ids: {len(p.ids)} given for {len(p.images)} images")
        validator.policy(p.policy)  # an unknown policy is refused before anything is decoded
        t0 = time.perf_counter()
        images = _decode(p.images)
        decode_s = time.perf_counter() - t0
        budget = p.timeout_s
        remaining = ctx.remaining()
        if remaining is not None:  # fail closed before the deadline rather than be cut off by it
            budget = max(0.001, min(budget, remaining - _MARGIN_S))
        ids = list(p.ids) or [f"{ctx.id}:{i}" for i in range(len(images))]
        report = validator.validate(images, ids, p.policy, budget, str(ctx.id))
        items = [ItemVerdict(v.index, v.id, v.decision, v.fail_closed, v.reason, v.rule, v.category, v.scores,
                             v.escalated, v.review_id, v.policy_s) for v in report.items]
        return SafetyValidateResult(report.policy, items, sum(v.fail_closed for v in items),
                                    sum(v.escalated for v in items), decode_s, report.classify_s, report.policy_s,
                                    report.seconds, queue_s, report.isolated, report.breakers)

    def classify(self, ctx: RequestContext, p: SafetyClassifyParams, queue_s: float = 0.0) -> SafetyClassifyResult:
        validator = self.require()
        t0 = time.perf_counter()
        images = _decode(p.images)
        t1 = time.perf_counter()
        try:
            scores = validator.classify(images)
        except Exception as exc:  # the classifier's failure, not the request's: no verdict to fail closed here
            raise OperationError(ErrorCode.INTERNAL_ERROR, f"safety classifier {validator.backend.name!r} failed: "
                                                           f"{type(exc).__name__}: {exc}", retryable=True) from exc
        return SafetyClassifyResult(validator.backend.name, scores, t1 - t0, time.perf_counter() - t1, queue_s)

    def policy_check(self, ctx: RequestContext, p: SafetyPolicyCheckParams,
                     queue_s: float = 0.0) -> SafetyPolicyCheckResult:
        validator = self.require()
        if not p.scores:
            raise ValueError("scores: give at least one item's scores")
        t0 = time.perf_counter()
        out = validator.check(p.policy, p.scores)
        return SafetyPolicyCheckResult(p.policy, [PolicyDecision(d.action, d.rule, d.category, d.score, d.reason, s)
                                                  for d, s in out], time.perf_counter() - t0, queue_s)

    # ---- control -------------------------------------------------------------------------------------------
    def review_queue(self, p: ReviewQueueParams) -> ReviewQueueResult:
        if not 1 <= p.limit <= 100_000:
            raise ValueError(f"limit must be 1..100000, got {p.limit}")
        entries, pending = self.queue.list(p.limit, p.take)
        now = time.monotonic()
        return ReviewQueueResult([ReviewEntryInfo(e.review_id, e.id, e.request, e.index, e.decision, e.fail_closed,
                                                  e.reason, e.policy, e.scores, now - e.escalated_at)
                                  for e in entries], pending, self.queue.escalated_total)

    def status(self, p: SafetyStatusParams) -> SafetyStatusResult:
        v = self.validator
        pool = self.pool
        _, pending = self.queue.list(0, False)
        return SafetyStatusResult(
            v is not None, v.backend.name if v else "", sorted(v.policies) if v else [],
            {k: b.state() for k, b in v.breakers.items()} if v else {},
            {k: b.opened for k, b in v.breakers.items()} if v else {}, dict(v.counts) if v else {},
            self.faults.armed(), pending, len(pool.running) if pool else 0, pool.queued() if pool else 0)

    def fault(self, p: SafetyFaultParams) -> SafetyFaultResult:
        if p.failure == "none":
            return SafetyFaultResult(self.faults.armed(), self.faults.clear())
        self.faults.arm(p.failure, p.scope, p.count, p.item, p.hang_s)
        return SafetyFaultResult(self.faults.armed(), 0)


def _decode(inputs: list[Any]) -> list[np.ndarray]:
    from workers.postprocess.imageio import ImageError, load_input

    if not 1 <= len(inputs) <= MAX_IMAGES:
        raise ValueError(f"images: give 1..{MAX_IMAGES} images, got {len(inputs)}")
    try:
        return [load_input(inp, what=f"images[{i}]") for i, inp in enumerate(inputs)]
    except ImageError as exc:
        raise OperationError(exc.code, exc.message) from None


def runtime(server: WorkerServer) -> SafetyRuntime:
    rt = getattr(server, "_safety_runtime", None)
    if rt is None:
        rt = server._safety_runtime = SafetyRuntime(server)  # type: ignore[attr-defined]
    return rt


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    return {"safety.configure": runtime(server).configure}


def routed_handlers(server: WorkerServer) -> dict[str, Callable[[Request, Any], None]]:
    rt = runtime(server)
    return {"safety.validate": rt._route("safety.validate", rt.validate),
            "safety.classify": rt._route("safety.classify", rt.classify),
            "safety.policy_check": rt._route("safety.policy_check", rt.policy_check)}


def control_handlers(server: WorkerServer) -> dict[str, Callable[[Any], Any]]:
    rt = runtime(server)
    return {"safety.review_queue": rt.review_queue, "safety.status": rt.status, "fault.safety_failure": rt.fault}


_PARAMS = {"safety.configure": SafetyConfigureParams, "safety.validate": SafetyValidateParams,
           "safety.classify": SafetyClassifyParams, "safety.policy_check": SafetyPolicyCheckParams}


def direct_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    """The operations as plain calls in the caller's thread: ``fn(ctx, params)`` with params the op's
    Struct or a dict of its fields (checked like a request's); the result is the op's result Struct.
    Errors are raised as they would be answered (OperationError with its code, ValueError/KeyError for
    INVALID_PARAMS). The deadline is ``ctx``'s."""
    rt = runtime(server)

    def plain(op: str, fn: Callable[..., Any]) -> Callable[[RequestContext, Any], Any]:
        def call(ctx: RequestContext, params: Any) -> Any:
            if not isinstance(params, _PARAMS[op]):
                try:
                    params = msgspec.convert(params, _PARAMS[op])
                except msgspec.ValidationError as exc:
                    raise ValueError(f"invalid params for {op!r}: {exc}") from None
            return fn(ctx, params)
        return call

    return {"safety.configure": plain("safety.configure", rt.configure),
            "safety.validate": plain("safety.validate", rt.validate),
            "safety.classify": plain("safety.classify", rt.classify),
            "safety.policy_check": plain("safety.policy_check", rt.policy_check)}
