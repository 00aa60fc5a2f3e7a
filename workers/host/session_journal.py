"""The host's journal of sessions: each session's last acknowledged state.

A change is acknowledged when the host hears of its commit: the worker's status event for it (sent
before the answer, with the delta, the new version and the checksum) or a response carrying the full
state (create, get). Deltas apply only in version order and must reproduce the worker's checksum; a
gap or a mismatch marks the entry stale (its last good state is kept, and the host refetches). The
journal is what a replacement worker is given back (``session.restore``) after a crash.
"""

from __future__ import annotations

import collections
import copy
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from workers.protocol.ops_sessions import checksum

APPLIED_KEPT = 256
StateListener = Callable[[str, int, Union[float, None], float], None]  # (id, version, worker t_mono, host t)


@dataclass
class JournalEntry:
    id: str
    slot: int
    key: Union[str, None]
    model: Union[str, None]
    workspace_bytes: int
    scratch_files: int
    checkpoint_every: int
    state: dict[str, Any]
    version: int
    checksum: str
    applied: collections.OrderedDict[str, int] = field(default_factory=collections.OrderedDict)
    stale: str = ""  # why the entry may be behind the worker (a gap or a checksum mismatch)
    acked_at: float = field(default_factory=time.monotonic)

    def restore_params(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "version": self.version, "checksum": self.checksum,
                "key": self.key, "model": self.model, "workspace_bytes": self.workspace_bytes,
                "scratch_files": self.scratch_files, "checkpoint_every": self.checkpoint_every,
                "applied": list(self.applied)}


class SessionJournal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, JournalEntry] = {}
        self._listeners: list[StateListener] = []
        self.mismatches = 0  # deltas that did not reproduce the worker's checksum
        self.gaps = 0

    def subscribe(self, listener: StateListener) -> None:
        """``listener(id, version, worker_t_mono, host_t_mono)`` after each acknowledged change (keep it short)."""
        self._listeners.append(listener)

    def _notify(self, sid: str, version: int, worker_t: Union[float, None]) -> None:
        now = time.monotonic()
        for fn in self._listeners:
            fn(sid, version, worker_t, now)

    # ---- writes ----------------------------------------------------------------------------------
    def record(self, slot: int, info: Mapping[str, Any], create: Union[Mapping[str, Any], None] = None) -> None:
        """A response carrying a session's full state (session.create, session.get)."""
        sid, version = str(info["id"]), int(info["version"])
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None:
                if create is None:
                    return  # a session this host did not create: not journaled
                entry = JournalEntry(sid, slot, info.get("key"), create.get("model"),
                                     int(create.get("workspace_bytes", 0)), int(create.get("scratch_files", 0)),
                                     int(create.get("checkpoint_every", 1)), copy.deepcopy(dict(info["state"])),
                                     version, str(info["checksum"]))
                self._entries[sid] = entry
            elif version >= entry.version:
                entry.state, entry.version = copy.deepcopy(dict(info["state"])), version
                entry.checksum, entry.stale, entry.acked_at = str(info["checksum"]), "", time.monotonic()
            else:
                return
        self._notify(sid, version, None)

    def apply(self, data: Mapping[str, Any]) -> bool:
        """A status event of kind "state"; False when it could not be applied (unknown, gap, mismatch)."""
        sid, version = str(data.get("session")), int(data.get("version", -1))
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None or version <= entry.version:
                return False  # not ours yet (the create's answer records it) or already known
            if version != entry.version + 1:
                self.gaps += 1
                entry.stale = f"missed versions {entry.version + 1}..{version - 1}"
                return False
            new = {k: v for k, v in entry.state.items() if k not in set(data.get("delete") or ())}
            new.update(copy.deepcopy(dict(data.get("set") or {})))
            if checksum(new) != data.get("checksum"):
                self.mismatches += 1
                entry.stale = f"delta to version {version} did not reproduce the worker's checksum"
                return False
            entry.state, entry.version, entry.checksum = new, version, str(data["checksum"])
            entry.stale, entry.acked_at = "", time.monotonic()
            op_id = data.get("op_id")
            if op_id:
                entry.applied[str(op_id)] = version
                while len(entry.applied) > APPLIED_KEPT:
                    entry.applied.popitem(last=False)
        self._notify(sid, version, data.get("t_mono"))
        return True

    def close(self, sid: str) -> Union[JournalEntry, None]:
        with self._lock:
            return self._entries.pop(sid, None)

    # ---- reads -----------------------------------------------------------------------------------
    def get(self, sid: str) -> Union[JournalEntry, None]:
        with self._lock:
            entry = self._entries.get(sid)
            return copy.deepcopy(entry) if entry is not None else None

    def on_slot(self, slot: int) -> list[JournalEntry]:
        with self._lock:
            return [copy.deepcopy(e) for e in self._entries.values() if e.slot == slot]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def count_on(self, slot: int) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.slot == slot)
