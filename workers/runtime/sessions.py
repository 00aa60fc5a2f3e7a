"""The worker's session store: versioned state, validation on every access, rollback, resources.

Every committed change goes through ``commit``: the new state's canonical JSON gives its checksum,
the version goes up by one, the set of keys is recorded (the manifest), and every
``checkpoint_every`` commits the canonical bytes become the known-good snapshot. ``validate``
checks a session against what was committed: the state is an object that serializes (else
*complete* corruption), every committed key is there (else *partial loss*), no key appeared and
the checksum, version and job invariants hold (else *inconsistent*). Validation runs before every
operation on a session and in a background sweep, so no operation computes anything from a
corrupt state. A corrupt session is rolled back to its snapshot when the snapshot's bytes still
hash to its checksum; the operation that found it is refused with SESSION_CORRUPT either way, and
a session without a good snapshot refuses everything until the host restores it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

from workers.protocol.messages import ErrorCode
from workers.protocol.ops_sessions import (
    JOB_PREFIX,
    MAX_STATE_BYTES,
    SessionResources,
    canonical,
    checksum_bytes,
)
from workers.runtime.context import OperationError

log = logging.getLogger(__name__)

APPLIED_KEPT = 256  # op_ids remembered per session (duplicate detection)
PAGE = 4096
Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Snapshot:
    version: int
    blob: bytes  # canonical JSON of the state at ``version``
    checksum: str
    applied: tuple[tuple[str, int], ...]  # op_id -> version, as of the snapshot


@dataclass(frozen=True)
class Corruption:
    kind: str  # partial_loss | inconsistent | complete
    detail: str


class Session:
    """One session's state and what it holds. Mutated only under ``lock``, except by fault injection."""

    def __init__(self, sid: str, key: Union[str, None], model: Union[str, None], checkpoint_every: int) -> None:
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        self.id, self.key, self.model = sid, key, model
        self.checkpoint_every = checkpoint_every
        self.lock = threading.RLock()
        self.state: Any = {}
        self.version = 0
        self.committed_version = 0  # what commit() last wrote; a version field that disagrees is damage
        self.checksum = ""
        self.keys: frozenset[str] = frozenset()
        self.state_bytes = 0
        self.snapshot: Union[Snapshot, None] = None
        self.since_snapshot = 0
        self.applied: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.corrupt: Union[Corruption, None] = None  # found and not repaired (no good snapshot)
        self.model_objs: set[int] = set()  # identities of the model objects this session used
        self.workspace: Union[bytearray, None] = None
        self.scratch_dir: Union[Path, None] = None
        self.scratch: list[IO[bytes]] = []

    # ---- resources ---------------------------------------------------------------------------
    def reserve(self, workspace_bytes: int, scratch_files: int, tmp_root: Path) -> None:
        if not 0 <= workspace_bytes <= 1 << 30:
            raise ValueError(f"workspace_bytes must be 0..1 GiB, got {workspace_bytes}")
        if not 0 <= scratch_files <= 64:
            raise ValueError(f"scratch_files must be 0..64, got {scratch_files}")
        if workspace_bytes:
            ws = bytearray(workspace_bytes)
            ws[::PAGE] = b"\x01" * len(range(0, workspace_bytes, PAGE))  # resident, not just promised
            self.workspace = ws
        if scratch_files:
            self.scratch_dir = Path(tempfile.mkdtemp(prefix=f"{self.id}-", dir=tmp_root))
            for i in range(scratch_files):
                f = open(self.scratch_dir / f"scratch-{i}", "w+b")  # noqa: SIM115 (held until close)
                f.write(b"\0" * PAGE)
                f.flush()
                self.scratch.append(f)

    def resources(self) -> SessionResources:
        return SessionResources(self.state_bytes, len(self.workspace) if self.workspace is not None else 0,
                                len(self.scratch), self.model)

    def release(self) -> SessionResources:
        """Free everything; what was held."""
        held = self.resources()
        self.workspace = None
        for f in self.scratch:
            f.close()
        self.scratch.clear()
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            self.scratch_dir = None
        self.model_objs.clear()
        self.state = {}
        self.snapshot = None
        return held

    # ---- state ---------------------------------------------------------------------------------
    def commit(self, new_state: dict[str, Any], op_id: Union[str, None] = None) -> bytes:
        """Install ``new_state`` as the next version; the canonical bytes. ValueError for a state that
        is not plain JSON or too large (nothing changes then)."""
        try:
            blob = canonical(new_state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"session {self.id}: state is not plain JSON: {exc}") from exc
        if len(blob) > MAX_STATE_BYTES:
            raise ValueError(f"session {self.id}: state of {len(blob)} bytes exceeds {MAX_STATE_BYTES}")
        self.state = new_state
        self.version += 1
        self.committed_version = self.version
        self.checksum = checksum_bytes(blob)
        self.keys = frozenset(new_state)
        self.state_bytes = len(blob)
        if op_id is not None:
            self.applied[op_id] = self.version
            while len(self.applied) > APPLIED_KEPT:
                self.applied.popitem(last=False)
        self.since_snapshot += 1
        if self.snapshot is None or self.since_snapshot >= self.checkpoint_every:
            self.snapshot = Snapshot(self.version, blob, self.checksum, tuple(self.applied.items()))
            self.since_snapshot = 0
        return blob

    def install(self, state: dict[str, Any], version: int, applied: list[str]) -> None:
        """Set the state at ``version`` (restore from the host's journal); a snapshot of it."""
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        self.applied = collections.OrderedDict((op, version) for op in applied[-APPLIED_KEPT:])
        self.version = version - 1
        self.snapshot = None
        self.commit(state)
        self.corrupt = None

    def validate(self) -> Union[Corruption, None]:
        state = self.state
        if not isinstance(state, dict):
            return Corruption("complete", f"state is a {type(state).__name__}, not a JSON object")
        try:
            blob = canonical(state)
        except (TypeError, ValueError) as exc:
            return Corruption("complete", f"state does not serialize: {exc}")
        missing = sorted(self.keys - state.keys())
        if missing and len(missing) == len(self.keys):
            return Corruption("complete", f"every committed key is gone ({len(missing)})")
        if missing:
            return Corruption("partial_loss", f"{len(missing)} of {len(self.keys)} committed keys missing: "
                                              f"{missing[:8]}")
        extra = sorted(state.keys() - self.keys)
        if extra:
            return Corruption("inconsistent", f"keys no committed version had: {extra[:8]}")
        if self.version != self.committed_version:
            return Corruption("inconsistent", f"version field says {self.version}, last commit was "
                                              f"{self.committed_version}")
        actual = checksum_bytes(blob)
        if actual != self.checksum:
            return Corruption("inconsistent", f"state hashes to {actual[:12]}, version {self.version} was "
                                              f"committed as {self.checksum[:12]}")
        return _job_invariants(state)

    def rollback(self) -> Union[int, None]:
        """Back to the snapshot when its bytes still hash to its checksum; the versions lost, or None
        when there is no good snapshot."""
        snap = self.snapshot
        if snap is None or checksum_bytes(snap.blob) != snap.checksum:
            return None
        try:
            state = json.loads(snap.blob)
        except ValueError:
            return None
        lost = self.committed_version - snap.version
        self.state = state
        self.version = self.committed_version = snap.version
        self.checksum = snap.checksum
        self.keys = frozenset(state)
        self.state_bytes = len(snap.blob)
        self.applied = collections.OrderedDict(snap.applied)
        self.since_snapshot = 0
        self.corrupt = None
        return lost


def _job_invariants(state: dict[str, Any]) -> Union[Corruption, None]:
    for key, job in state.items():
        if not key.startswith(JOB_PREFIX):
            continue
        if not isinstance(job, dict) or not {"items", "done", "outputs"} <= job.keys():
            return Corruption("inconsistent", f"{key} is not a job record")
        items, done, outputs = job["items"], job["done"], job["outputs"]
        if not (isinstance(done, int) and isinstance(items, int) and isinstance(outputs, list)):
            return Corruption("inconsistent", f"{key}: fields of the wrong type")
        if done != len(outputs) or not 0 <= done <= items:
            return Corruption("inconsistent", f"{key}: done={done} with {len(outputs)} outputs of {items} items")
    return None


class SessionStore:
    """Every session of one worker. ``emit`` sends a status event's data to the host."""

    def __init__(self, emit: Emit, worker_id: str, sweep_interval_s: float = 0.5) -> None:
        self._emit = emit
        self.worker_id = worker_id
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._keys: dict[str, str] = {}
        self._tmp_root: Union[Path, None] = None
        self.corruptions_detected = 0
        self.rollbacks = 0
        self._sweep_interval = sweep_interval_s
        self._sweeper: Union[threading.Thread, None] = None
        self._stop = threading.Event()

    # ---- registry ------------------------------------------------------------------------------
    def tmp_root(self) -> Path:
        with self._lock:
            if self._tmp_root is None:
                self._tmp_root = Path(tempfile.mkdtemp(prefix="worker-sessions-"))
            return self._tmp_root

    @staticmethod
    def new_id() -> str:
        return f"s-{secrets.token_hex(16)}"  # 128 random bits: unguessable, never reused

    def by_key(self, key: str) -> Union[Session, None]:
        with self._lock:
            sid = self._keys.get(key)
            return self._sessions.get(sid) if sid else None

    def add(self, session: Session) -> Union[Session, None]:
        """Register; returns the session it replaced (a restore over an older copy)."""
        with self._lock:
            old = self._sessions.get(session.id)
            self._sessions[session.id] = session
            if session.key is not None:
                self._keys[session.key] = session.id
        self._start_sweeper()
        return old

    def remove(self, session: Session) -> None:
        with self._lock:
            if self._sessions.get(session.id) is session:
                del self._sessions[session.id]
            if session.key is not None and self._keys.get(session.key) == session.id:
                del self._keys[session.key]

    def find(self, sid: str) -> Session:
        with self._lock:
            session = self._sessions.get(sid)
            count = len(self._sessions)
        if session is None:
            raise OperationError(ErrorCode.SESSION_NOT_FOUND,
                                 f"no session {sid[:100]!r} on worker {self.worker_id} ({count} open): never "
                                 f"created, closed, or lost with a worker")
        return session

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    # ---- validation ------------------------------------------------------------------------
    def checked(self, session: Session, detected_by: str = "access") -> None:
        """Validate (the caller holds ``session.lock``); raise SESSION_CORRUPT after rolling back."""
        found = session.validate()
        if found is None:
            return
        self.corruptions_detected += 1
        committed = session.committed_version
        lost = session.rollback()
        event: dict[str, Any] = {"domain": "session", "kind": "corrupt", "session": session.id,
                                 "corruption": found.kind, "detail": found.detail, "detected_by": detected_by,
                                 "t_mono": time.monotonic()}
        if lost is None:
            session.corrupt = found
            event.update(rolled_back=False, version=committed)
            message = (f"session {session.id} state corrupt ({found.kind}: {found.detail}); no good snapshot to "
                       f"roll back to: nothing runs on it until it is restored (session.restore)")
        else:
            self.rollbacks += 1
            event.update(rolled_back=True, version=session.version, checksum=session.checksum,
                         rolled_back_versions=lost, state=session.state if lost else None)
            message = (f"session {session.id} state corrupt ({found.kind}: {found.detail}); rolled back to "
                       f"snapshot version {session.version}, {lost} later update(s) undone; nothing ran on the "
                       f"corrupt state: retry")
        log.warning("%s", message)
        self._emit(event)
        raise OperationError(ErrorCode.SESSION_CORRUPT, message, retryable=lost is not None)

    def _start_sweeper(self) -> None:
        with self._lock:
            if self._sweeper is not None or self._sweep_interval <= 0:
                return
            self._sweeper = threading.Thread(target=self._sweep_loop, name="session-sweep", daemon=True)
        self._sweeper.start()

    def _sweep_loop(self) -> None:
        # Continuous validation: a session nobody touches is still checked, and its corruption reported.
        while not self._stop.wait(self._sweep_interval):
            self.sweep()

    def sweep(self) -> int:
        """Validate every idle session now; how many were found corrupt."""
        found = 0
        for session in self.sessions():
            if not session.lock.acquire(blocking=False):
                continue  # busy: the operation holding it validates it
            try:
                if session.corrupt is None:
                    self.checked(session, "sweep")
            except OperationError:
                found += 1
            finally:
                session.lock.release()
        return found

    # ---- totals ----------------------------------------------------------------------------
    def scratch_entries(self) -> int:
        root = self._tmp_root
        if root is None or not root.exists():
            return 0
        return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))

    def stop(self) -> None:
        self._stop.set()
        for session in self.sessions():
            with session.lock:
                session.release()
        if self._tmp_root is not None:
            shutil.rmtree(self._tmp_root, ignore_errors=True)
