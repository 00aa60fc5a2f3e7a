"""Safety validation: a classifier and a policy engine that fail closed (issue 6).

``safety.validate`` classifies images and applies a configured policy; an item whose classification or
policy check fails, crashes or runs past ``timeout_s`` is answered ``block`` with ``fail_closed`` and the
reason, and escalated to the manual-review queue (``safety.review_queue``) with the items a policy sends
to review. Such an answer is a success of the request: failing closed is the outcome, not an error.
Errors are for bad requests: an image that cannot be decoded (IMAGE_INVALID, IMAGE_TOO_LARGE,
UNSUPPORTED_FORMAT), an unknown policy (INVALID_PARAMS), a policy document with an unknown rule or a bad
value (POLICY_INVALID, the whole configuration refused).

The classifier is a STAND-IN: a small network trained at ``make models`` time to detect synthetic
patterns composited onto photographs (workers/postprocess/safety_corpus.py), not unsafe content.
validate, classify and policy_check run on the safety domain's own priority pool.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from workers.protocol.images import ImageInput
from workers.protocol.opspec import OperationSpec

Failure = Literal["classifier_model_failure", "policy_engine_crash", "validation_timeout", "none"]
Scope = Literal["single_item", "batch", "system_wide"]
MAX_IMAGES = 256


class SafetyConfigureParams(msgspec.Struct, forbid_unknown_fields=True):
    root: Union[str, None] = None  # model root holding the classifier; None keeps the loaded one
    model: str = "safety-patterns"
    policies: list[str] = []  # YAML documents added to the shipped set (a document's name replaces its namesake)
    replace_policies: bool = False  # True: the given documents are the whole set, the shipped ones dropped
    workers: int = 2  # threads of the safety pool
    breaker_failures: int = 3  # consecutive all-failed validations that take a component out of the path
    breaker_cooldown_s: float = 1.0  # until a probe validation is let through again
    review_log: Union[str, None] = None  # also append every escalation to this JSON-lines file


class PolicyInfo(msgspec.Struct):
    name: str
    source: str  # policies/<file>.yaml (shipped) or policies[<i>] (given to configure)
    description: str
    rules: int
    default_action: str
    missing_score_action: str
    sha256: str


class SafetyConfigureResult(msgspec.Struct):
    model: str
    sha256: str  # of the classifier's weights, verified against the store's manifest
    categories: list[str]
    input_px: int
    stand_in: str  # what the classifier really detects
    policies: list[PolicyInfo]
    workers: int
    load_s: float


class SafetyValidateParams(msgspec.Struct, forbid_unknown_fields=True):
    images: list[ImageInput]
    ids: list[str] = []  # the caller's item ids (kept in the review queue); default "<request id>:<index>"
    policy: str = "default"
    timeout_s: float = 5.0  # the validation's budget; past it, undecided items fail closed


class ItemVerdict(msgspec.Struct):
    index: int
    id: str
    decision: str  # allow | blur | review | block
    fail_closed: bool  # the conservative classification: the classifier or the policy engine failed
    reason: str
    rule: str  # the deciding rule ("" when failed closed)
    category: str
    scores: Union[dict[str, float], None]  # per category severity in [0, 1]; None when never classified
    escalated: bool  # in the manual-review queue
    review_id: Union[int, None]
    policy_s: Union[float, None]


class SafetyValidateResult(msgspec.Struct):
    policy: str
    items: list[ItemVerdict]
    fail_closed: int
    escalated: int
    decode_s: float
    classify_s: float
    policy_s: float
    seconds: float  # decode excluded
    queue_s: float  # waiting for a safety pool thread
    isolated: bool  # the batch classification failed and items were retried one by one
    breakers: dict[str, str]  # component -> closed | open | half_open, after this validation


class SafetyClassifyParams(msgspec.Struct, forbid_unknown_fields=True):
    images: list[ImageInput]


class SafetyClassifyResult(msgspec.Struct):
    model: str
    scores: list[dict[str, float]]
    decode_s: float
    classify_s: float
    queue_s: float


class SafetyPolicyCheckParams(msgspec.Struct, forbid_unknown_fields=True):
    scores: list[dict[str, float]]  # one item's category scores each
    policy: str = "default"


class PolicyDecision(msgspec.Struct):
    decision: str
    rule: str
    category: str
    score: Union[float, None]
    reason: str
    check_s: float


class SafetyPolicyCheckResult(msgspec.Struct):
    policy: str
    decisions: list[PolicyDecision]
    seconds: float
    queue_s: float


class ReviewQueueParams(msgspec.Struct, forbid_unknown_fields=True):
    take: bool = False  # hand the entries over (removed from the queue)
    limit: int = 1000


class ReviewEntryInfo(msgspec.Struct):
    review_id: int
    id: str
    request: str
    index: int
    decision: str
    fail_closed: bool
    reason: str
    policy: str
    scores: Union[dict[str, float], None]
    age_s: float


class ReviewQueueResult(msgspec.Struct):
    entries: list[ReviewEntryInfo]  # oldest first
    pending: int  # left in the queue after this call
    escalated_total: int


class SafetyStatusParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class SafetyStatusResult(msgspec.Struct):
    configured: bool
    model: str
    policies: list[str]
    breakers: dict[str, str]
    breaker_opened: dict[str, int]
    counts: dict[str, int]  # validations, items, fail_closed, escalated, isolations
    faults: list[dict[str, Union[str, int, float, None]]]
    review_pending: int
    running: int
    queued: int


class SafetyFaultParams(msgspec.Struct, forbid_unknown_fields=True):
    failure: Failure  # "none" clears every armed fault
    scope: Scope = "single_item"
    count: int = 1  # validations it hits; 0 = until cleared (system_wide only)
    item: int = 0  # single_item: the failing item's index (the last item of a shorter batch)
    hang_s: float = 30.0  # validation_timeout: the classifier hangs this long unless released


class SafetyFaultResult(msgspec.Struct):
    armed: list[dict[str, Union[str, int, float, None]]]
    cleared: int


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("safety.configure", SafetyConfigureParams, SafetyConfigureResult, idempotent=True,
                  description="Load the safety classifier from a model root (verified) and install the policies: "
                              "the shipped set plus given YAML documents; a bad document refuses the whole set."),
    OperationSpec("safety.validate", SafetyValidateParams, SafetyValidateResult, idempotent=False,
                  description="Classify images and apply a policy; items whose validation fails, crashes or times "
                              "out are blocked (fail_closed) and escalated to the manual-review queue."),
    OperationSpec("safety.classify", SafetyClassifyParams, SafetyClassifyResult, idempotent=True,
                  description="The classifier alone: category scores per image (no policy, no fault injection)."),
    OperationSpec("safety.policy_check", SafetyPolicyCheckParams, SafetyPolicyCheckResult, idempotent=True,
                  description="The policy engine alone on given category scores: a decision per item."),
    OperationSpec("safety.review_queue", ReviewQueueParams, ReviewQueueResult, idempotent=False, control=True,
                  description="The manual-review queue: escalated items, oldest first; take=true hands them over."),
    OperationSpec("safety.status", SafetyStatusParams, SafetyStatusResult, idempotent=True, control=True,
                  description="Classifier, policies, circuit breakers, counters and armed faults."),
    OperationSpec("fault.safety_failure", SafetyFaultParams, SafetyFaultResult, idempotent=False, control=True,
                  fault=True,
                  description="Make the next validations' classifier fail or hang, or the policy engine crash, "
                              "on one item, a whole batch, or every item (system-wide)."),
)
