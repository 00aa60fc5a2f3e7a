"""Session faults (served only with --allow-fault-injection): state corruption by cause, and a
worker crash armed for the next session initialization, processing or cleanup.

Corruption is done the way each cause does it, so detection is exercised on realistic damage:
- ``concurrent_access``: a second writer thread that does not take the session's lock;
- ``serialization_error``: the state goes through its canonical bytes, which are damaged, and a
  lenient reader installs what it could read back;
- ``storage_failure``: the store's write of the session's record stops midway, loses its data or
  metadata half, or the record reads back as nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Union

from workers.protocol.ops_sessions import JOB_PREFIX, SessionCrashParams, canonical, checksum
from workers.runtime.handlers import die
from workers.runtime.sessions import Session, Snapshot


def _halves(keys: list[str]) -> tuple[list[str], list[str]]:
    """Keys kept and keys lost in a partial loss: at least one of each when there are two or more."""
    cut = max(1, len(keys) // 2)
    return keys[:cut], keys[cut:]


def _racer(fn: Any) -> None:
    t = threading.Thread(target=fn, name="racing-writer")
    t.start()
    t.join()


def _bump_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "~"
    if isinstance(value, list):
        return [*value, None]
    if isinstance(value, dict):
        return {**value, "~": None}
    return 0


def corrupt(session: Session, kind: str, cause: str, snapshot_too: bool = False) -> str:
    """Damage ``session`` (without its lock, as the causes do); what was done."""
    state = session.state
    if not isinstance(state, dict) or not state:
        raise ValueError(f"session {session.id} has an empty state: nothing to corrupt")
    keys = sorted(state)
    detail = _CORRUPTERS[(cause, kind)](session, keys)
    if snapshot_too and session.snapshot is not None:
        snap = session.snapshot
        blob = bytes(b ^ 0x20 for b in snap.blob[:64]) + snap.blob[64:]
        session.snapshot = Snapshot(snap.version, blob, snap.checksum, snap.applied)
        detail += "; the snapshot's bytes were damaged too"
    return detail


# ---- concurrent access ---------------------------------------------------------------------
def _race_partial(s: Session, keys: list[str]) -> str:
    kept, lost = _halves(keys)
    stale = {k: s.state[k] for k in kept}

    def write() -> None:  # installs a stale copy that predates the lost keys: a lost update
        s.state = stale

    _racer(write)
    return f"a racing writer installed a stale copy without {lost}"


def _race_inconsistent(s: Session, keys: list[str]) -> str:
    jobs = [k for k in keys if k.startswith(JOB_PREFIX)]
    if jobs:
        key = jobs[0]

        def write() -> None:
            # Two writers interleaved: one advanced the counter, the other's output never landed; the
            # second committed the mix (version and checksum recomputed) without holding the lock.
            job = dict(s.state[key])
            job["done"] = int(job["done"]) + 1
            new = {**s.state, key: job}
            s.state = new
            s.version += 1
            s.committed_version = s.version
            s.checksum = checksum(new)

        _racer(write)
        return f"a racing writer committed {key} with done advanced past its outputs"
    key = keys[0]

    def torn() -> None:  # the value landed, the version and checksum of the other writer stayed
        s.state[key] = _bump_value(s.state[key])

    _racer(torn)
    return f"a racing writer changed {key!r} without its version and checksum"


def _race_complete(s: Session, keys: list[str]) -> str:
    blob = canonical(s.state).decode()
    other = canonical({"writer": "b", **{k: None for k in keys}}).decode()

    def write() -> None:  # two serialized writes interleaved chunk by chunk into one record
        s.state = "".join(a + b for a, b in zip(blob[::8], other[::8], strict=False))

    _racer(write)
    return "two racing writers interleaved their serialized states into one unreadable record"


# ---- serialization error ---------------------------------------------------------------------
def _salvage(blob: bytes, cut: int, keys: list[str], state: dict[str, Any]) -> dict[str, Any]:
    """What a lenient reader recovers from a state truncated at ``cut``: the entries that end before it."""
    out: dict[str, Any] = {}
    pos = 1  # after "{"
    for k in keys:  # canonical JSON orders keys
        entry = len(canonical({k: state[k]})) - 2 + 1  # "k":v plus the comma
        if pos + entry - 1 > cut:
            break
        out[k] = state[k]
        pos += entry
    return out


def _ser_partial(s: Session, keys: list[str]) -> str:
    state = s.state
    blob = canonical(state)
    salvaged = _salvage(blob, len(blob) // 2, keys, state)
    if not salvaged:
        salvaged = {keys[0]: state[keys[0]]}
    if len(salvaged) == len(keys) and len(keys) > 1:
        salvaged.pop(keys[-1])
    s.state = json.loads(canonical(salvaged))
    lost = [k for k in keys if k not in salvaged]
    return f"serialized state truncated at byte {len(blob) // 2} of {len(blob)}; read back without {lost}"


def _ser_inconsistent(s: Session, keys: list[str]) -> str:
    state = json.loads(canonical(s.state))
    key = next((k for k in keys if isinstance(state[k], (int, float, str)) and not isinstance(state[k], bool)),
               keys[0])
    state[key] = _bump_value(state[key])
    s.state = state
    return f"one value ({key!r}) changed in the serialized bytes; read back as valid JSON"


def _ser_complete(s: Session, keys: list[str]) -> str:
    blob = bytearray(canonical(s.state))
    for i in range(0, len(blob), 7):
        blob[i] ^= 0x5A
    try:
        s.state = json.loads(bytes(blob))
    except ValueError:
        s.state = bytes(blob).decode("utf-8", "replace")  # the reader kept the raw text
    return f"serialized state garbled (every 7th of {len(blob)} bytes); unreadable"


# ---- storage failure ---------------------------------------------------------------------------
def _store_partial(s: Session, keys: list[str]) -> str:
    _kept, lost = _halves(keys)
    for k in lost:
        del s.state[k]
    return f"the store's write stopped midway: {lost} never landed"


def _store_inconsistent(s: Session, keys: list[str]) -> str:
    s.version += 1
    return f"the store's metadata write landed (version {s.version}), its data write was lost"


def _store_complete(s: Session, keys: list[str]) -> str:
    s.state = None
    return "the store returned nothing for the session's record"


_CORRUPTERS = {
    ("concurrent_access", "partial_loss"): _race_partial,
    ("concurrent_access", "inconsistent"): _race_inconsistent,
    ("concurrent_access", "complete"): _race_complete,
    ("serialization_error", "partial_loss"): _ser_partial,
    ("serialization_error", "inconsistent"): _ser_inconsistent,
    ("serialization_error", "complete"): _ser_complete,
    ("storage_failure", "partial_loss"): _store_partial,
    ("storage_failure", "inconsistent"): _store_inconsistent,
    ("storage_failure", "complete"): _store_complete,
}


class InjectedStepError(RuntimeError):
    """The failing step of mode "raise": the worker answers INTERNAL_ERROR and keeps serving."""


class CrashArm:
    """One-shot crashes armed per phase; ``fire`` kills the worker (or fails the step) when its phase
    is armed, after announcing the moment in a status event (written before the process goes)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self._lock = threading.Lock()
        self._emit = emit
        self._armed: dict[str, SessionCrashParams] = {}

    def arm(self, p: SessionCrashParams) -> None:
        if p.after_items < 0:
            raise ValueError(f"after_items must be >= 0, got {p.after_items}")
        with self._lock:
            self._armed[p.phase] = p

    def fire(self, phase: str, where: str, session: str, progressed: Union[int, None] = None) -> None:
        """Crash now if ``phase`` is armed for ``session`` (or any) (for processing with items: once
        ``progressed`` reached ``after_items``); ``where`` names the step for the record."""
        with self._lock:
            p = self._armed.get(phase)
            if p is None or (p.session is not None and p.session != session):
                return
            if progressed is not None and progressed < p.after_items:
                return
            del self._armed[phase]
        self._emit({"domain": "session", "kind": "fault", "phase": phase, "mode": p.mode, "where": where,
                    "t_mono": time.monotonic()})
        if p.mode == "raise":
            raise InjectedStepError(f"injected failure during {phase} in {where}")
        die(p.mode, p.exit_code)
