"""Sessions: per-user state that survives a worker crash (issue 6).

A session is a versioned JSON object held by one worker: every committed change bumps its
``version`` and recomputes its ``checksum`` (sha256 over the canonical JSON of the state,
``canonical`` below: both sides compute it the same way). Every committed change is also
announced as a status event (``domain: "session"``, ``kind: "state"``) carrying the delta, so a
host can keep a journal of the last acknowledged state and restore it on a replacement worker
(``session.restore``) after a crash.

Idempotency (what a host may resubmit after losing the worker):
- ``session.create`` with a ``key``: a repeated key returns the session it created;
- ``session.update`` / ``session.generate`` with an ``op_id``: a repeated op_id is answered
  without applying anything again (``duplicate: true``);
- ``session.work`` resumes a job from the items the state records as done;
- ``session.restore`` of the same version is a no-op.
Without the key / op_id a resubmitted create or update is applied again: hosts always send them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Union

import msgspec

from workers.protocol.opspec import OperationSpec

CrashPhase = Literal["initialization", "processing", "cleanup"]
# sigsegv, sigkill, exception, exit, abort: the worker dies (handlers.die); raise: the step fails with an
# exception the worker survives (answered INTERNAL_ERROR naming the step): an error, not a crash.
CrashMode = Literal["sigsegv", "sigkill", "exception", "exit", "abort", "raise"]
CorruptionKind = Literal["partial_loss", "inconsistent", "complete"]
CorruptionCause = Literal["concurrent_access", "serialization_error", "storage_failure"]

JOB_PREFIX = "job:"  # state keys holding session.work progress: {"items", "done", "outputs"}
MAX_STATE_BYTES = 1 << 20  # canonical JSON of one session's state (well under a frame)


def canonical(state: Any) -> bytes:
    """The canonical JSON of a state: sorted keys, no whitespace, UTF-8, no NaN/Infinity.
    Raises ValueError/TypeError for anything that is not plain JSON."""
    return json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def checksum(state: Any) -> str:
    return hashlib.sha256(canonical(state)).hexdigest()


def checksum_bytes(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def job_output(job: str, item: int, seed: str = "") -> str:
    """What item ``item`` of job ``job`` produces: deterministic, so a runner can check every
    reported partial result after a crash."""
    return hashlib.sha256(f"{seed}:{job}:{item}".encode()).hexdigest()[:16]


# ---- parameters and results ------------------------------------------------------------------
class SessionCreateParams(msgspec.Struct, forbid_unknown_fields=True):
    state: dict[str, Any] = {}  # the initial state (a JSON object)
    key: Union[str, None] = None  # idempotency key: a repeated key returns the same session
    model: Union[str, None] = None  # a resident model the session uses (shared, never copied)
    workspace_bytes: int = 0  # scratch memory reserved for the session (pages touched)
    scratch_files: int = 0  # temporary files the session keeps open
    checkpoint_every: int = 1  # take a known-good snapshot every N committed updates


class SessionResources(msgspec.Struct):
    state_bytes: int
    workspace_bytes: int
    scratch_files: int
    model: Union[str, None]


class SessionInfo(msgspec.Struct):
    id: str
    key: Union[str, None]
    version: int
    checksum: str
    state: dict[str, Any]
    snapshot_version: int  # the last known-good snapshot
    resources: SessionResources
    created: bool = False  # session.create: False when the key named an existing session
    seconds: float = 0.0  # time the worker spent on the operation


class SessionIdParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class SessionUpdateParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    set: dict[str, Any] = {}  # top-level keys to set
    delete: list[str] = []  # top-level keys to remove (a missing key is an error)
    incr: dict[str, float] = {}  # numeric top-level keys to add to (absent: starts at 0)
    op_id: Union[str, None] = None  # idempotency token: a repeated op_id applies nothing


class SessionUpdateResult(msgspec.Struct):
    id: str
    version: int
    checksum: str
    set: dict[str, Any]  # every changed key with its new value (incremented ones included)
    delete: list[str]
    duplicate: bool  # the op_id had been applied already: nothing changed


class SessionWorkParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    job: str  # progress lives in state["job:<job>"]; a resubmitted job resumes from it
    items: int  # 1..10000
    item_ms: float = 0.0  # work per item (a cancellable wait)
    seed: str = ""


class SessionWorkResult(msgspec.Struct):
    id: str
    job: str
    items: int
    done: int
    outputs: list[str]
    resumed_from: int  # items already done when this request started
    version: int
    checksum: str


class SessionGenerateParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    prompt: str = ""
    steps: int = 2
    width: int = 64
    height: int = 64
    seed: int = 0
    op_id: Union[str, None] = None


class SessionGenerateResult(msgspec.Struct):
    id: str
    model: str
    sha256: str  # of the generated image; also appended to state["images"]
    seconds: float
    queue_s: float
    model_instance: int  # identity of the in-memory model object used (sharing check)
    version: int
    checksum: str
    duplicate: bool


class SessionCloseResult(msgspec.Struct):
    id: str
    version: int
    freed: SessionResources  # everything the session held, now released
    seconds: float


class SessionRestoreParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    state: dict[str, Any]
    version: int
    checksum: str  # must match the state: a damaged journal is refused, never installed
    key: Union[str, None] = None
    model: Union[str, None] = None
    workspace_bytes: int = 0
    scratch_files: int = 0
    checkpoint_every: int = 1
    applied: list[str] = []  # op_ids already applied (so a resubmitted one is not applied twice)


class SessionRestoreResult(msgspec.Struct):
    id: str
    version: int
    checksum: str
    restored: bool  # False: the session was already there at that version
    seconds: float


class SessionListParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class SessionSummary(msgspec.Struct):
    id: str
    version: int
    keys: int
    model: Union[str, None]
    corrupt: Union[str, None]  # the corruption found and not yet repaired


class SessionTotals(msgspec.Struct):
    sessions: int
    state_bytes: int
    workspace_bytes: int
    scratch_files: int  # open temporary files of every session
    scratch_entries: int  # entries left in the sessions' temporary directory
    model_refs: dict[str, int]  # model -> sessions using it
    model_instances: dict[str, int]  # model -> distinct in-memory model objects sessions used
    corruptions_detected: int
    rollbacks: int
    open_fds: int
    rss_bytes: int


class SessionListResult(msgspec.Struct):
    sessions: list[SessionSummary]
    totals: SessionTotals


class SessionCorruptParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    kind: CorruptionKind
    cause: CorruptionCause
    snapshot_too: bool = False  # damage the known-good snapshot as well (no rollback possible)


class SessionCorruptResult(msgspec.Struct):
    id: str
    kind: str
    cause: str
    detail: str  # what was done to the state


class SessionCrashParams(msgspec.Struct, forbid_unknown_fields=True):
    phase: CrashPhase
    mode: CrashMode = "sigkill"
    after_items: int = 1  # processing, session.work: crash after this many items were reported
    session: Union[str, None] = None  # only an operation on this session fires it (None: the next one)
    exit_code: int = 70  # mode "exit"


class SessionCrashResult(msgspec.Struct):
    phase: str
    mode: str
    armed: bool


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("session.create", SessionCreateParams, SessionInfo, idempotent=True,
                  description="Open a session with an initial state (and optionally a shared resident model, "
                              "scratch memory and files); idempotent given a key."),
    OperationSpec("session.get", SessionIdParams, SessionInfo, idempotent=True,
                  description="A session's state, version and checksum, validated first."),
    OperationSpec("session.update", SessionUpdateParams, SessionUpdateResult, idempotent=True,
                  description="Set, delete or increment top-level keys: one new version, checksum and "
                              "snapshot; idempotent given an op_id."),
    OperationSpec("session.work", SessionWorkParams, SessionWorkResult, idempotent=True,
                  description="Run a job of N items in the session, committing and announcing each item's "
                              "output; a resubmitted job resumes after the last committed item."),
    OperationSpec("session.generate", SessionGenerateParams, SessionGenerateResult, idempotent=True,
                  description="Generate an image with the session's shared model on an inference slot; its "
                              "digest is appended to the session's state."),
    OperationSpec("session.close", SessionIdParams, SessionCloseResult, idempotent=False,
                  description="Close a session and free everything it holds; says what was freed."),
    OperationSpec("session.restore", SessionRestoreParams, SessionRestoreResult, idempotent=True,
                  description="Install a session (same id, state, version) from the host's journal, e.g. on "
                              "a replacement worker after a crash."),
    OperationSpec("session.list", SessionListParams, SessionListResult, idempotent=True, control=True,
                  description="Every open session and what all of them hold (answered at once)."),
    OperationSpec("fault.session_corrupt", SessionCorruptParams, SessionCorruptResult, idempotent=False,
                  fault=True,
                  description="Corrupt a session's state: partial loss, inconsistency or complete corruption, "
                              "through a racing writer, a damaged serialization or a failing state store."),
    OperationSpec("fault.session_crash", SessionCrashParams, SessionCrashResult, idempotent=False, fault=True,
                  description="Arm a one-shot worker crash (SIGSEGV, SIGKILL, unhandled exception, exit, "
                              "abort) or a failing step (raise) in the next session initialization, processing "
                              "or cleanup; a status event (kind fault) marks the moment it fires."),
)
