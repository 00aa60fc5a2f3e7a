"""Sessions that survive a worker crash: the host side.

``SessionHost`` keeps sessions on the workers of a supervised ``WorkerPool`` (workers/host/pool.py
does detection and restarts: EOF, exit or missed heartbeats; exponential back-off; at most
``max_restarts`` within ``restart_window_s``, reset by a start that stayed up ``stable_after_s``).
Each session lives on one slot of the pool. The host journals every session's last acknowledged
state (workers/host/session_journal.py). When a slot's worker is lost, the pool's "lost" event marks
the slot down (the detection time); when the pool's replacement is ready, the host prepares it (an
optional hook: configure and load models), restores every journaled session of the slot on it
(``session.restore``: same id, state, version and applied op_ids) and only then lets requests in.

Requests in flight on a lost worker, per this policy (``RESUME`` / ``MARK_FAILED``):
- resume: an operation the worker declared idempotent (its handshake) is resubmitted on the
  replacement once its sessions are restored. Session operations are idempotent by construction:
  the host sends a ``key`` with every create and an ``op_id`` with every update and generate, the
  restored session carries the op_ids already applied, and ``session.work`` continues after the
  last item the journal acknowledged. So an acknowledged change is never lost (it is in the journal
  the replacement gets) and none is applied twice (the dead worker's unacknowledged changes died
  with it; acknowledged ones are recognised by op_id). A request resubmitted ``max_resubmits``
  times and lost again is failed: it is taking workers down with it (a poison request).
- mark failed: every other operation (``session.close``, ``model.unload``, faults, ...) fails with
  WORKER_LOST naming the policy. A close that was in flight leaves the session restored, as it was
  acknowledged last: the caller may close it again.

A session found corrupt by the worker (SESSION_CORRUPT, or a "corrupt" status event from its
background validation) is repaired from the journal when the worker could not roll back or rolled
back past an acknowledged version; the failed request is then retried once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from workers.host.client import EventCallback, WorkerClient
from workers.host.errors import NoWorkerAvailable, RequestTimeout, WorkerError, WorkerLost
from workers.host.pool import PoolConfig, PoolEvent, WorkerPool
from workers.host.session_journal import SessionJournal
from workers.protocol.messages import ErrorCode, Event

log = logging.getLogger("workers.sessions")

RESUME = "resume"
MARK_FAILED = "mark failed"
Prepare = Callable[[WorkerClient], None]


@dataclass
class Recovery:
    """One lost worker and what the host did about it (monotonic times)."""

    slot: int
    lost_pid: Union[int, None]
    reason: str
    detected_at: float
    ready_at: Union[float, None] = None  # the replacement's handshake
    restored_at: Union[float, None] = None  # every session of the slot restored: requests flow again
    sessions_restored: list[str] = field(default_factory=list)
    restore_failed: dict[str, str] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)  # "op #n" resubmitted on the replacement
    failed: list[str] = field(default_factory=list)  # "op #n: why" failed with WORKER_LOST
    gave_up: bool = False  # the pool stopped restarting the slot


@dataclass
class _Slot:
    index: int
    client: Union[WorkerClient, None] = None
    state: str = "starting"  # starting | ready | down | restoring | failed
    generation: int = 0  # bumped on every loss
    recovery: Union[Recovery, None] = None


class SessionHost:
    def __init__(self, argv: Sequence[str], *, workers: int = 1, config: Union[PoolConfig, None] = None,
                 env: Union[Mapping[str, str], None] = None, name: str = "sessions",
                 prepare: Union[Prepare, None] = None, max_resubmits: int = 2) -> None:
        cfg = config or PoolConfig(size=workers)
        if cfg.size != workers and config is not None and workers != 1:
            raise ValueError(f"workers={workers} disagrees with config.size={cfg.size}")
        self.pool = WorkerPool(argv, cfg, env=env, name=name)
        self.journal = SessionJournal()
        self.recoveries: list[Recovery] = []
        # (session, why, monotonic time) restored from the journal after corruption
        self.repairs: list[tuple[str, str, float]] = []
        self.corrupt_events: list[dict[str, Any]] = []  # the workers' "corrupt" status events (+ "slot")
        self.fault_events: list[dict[str, Any]] = []  # "fault" status events: when an armed fault fired
        self.max_resubmits = max_resubmits
        self._prepare = prepare
        self._slots = [_Slot(i) for i in range(cfg.size)]
        self._cv = threading.Condition()
        self._closed = False
        self.pool.subscribe(self._on_pool_event)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> SessionHost:
        self.pool.start()
        deadline = time.monotonic() + timeout
        with self._cv:
            while any(s.state in ("starting", "restoring") for s in self._slots):
                if not self._cv.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                    break
        return self

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self.pool.close()

    def __enter__(self) -> SessionHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- pool events: detection, replacement, restore -------------------------------------------
    def _on_pool_event(self, ev: PoolEvent) -> None:
        slot = self._slots[ev.slot]
        if ev.kind in ("lost", "hung"):
            with self._cv:
                if slot.state in ("down", "failed"):
                    return  # "lost" after "hung": the same loss
                slot.state, slot.client = "down", None
                slot.generation += 1
                slot.recovery = Recovery(ev.slot, ev.pid, ev.detail, ev.at)
                self.recoveries.append(slot.recovery)
                self._cv.notify_all()
        elif ev.kind == "ready":
            client = next((c for c in self.pool.clients if c.pid == ev.pid), None)
            if client is None:
                return  # lost again before we saw it: its "lost" follows
            with self._cv:
                slot.state, slot.client = "restoring", client
                if slot.recovery is not None:
                    slot.recovery.ready_at = ev.at
            threading.Thread(target=self._bring_up, args=(slot, client), name=f"session-restore-{ev.slot}",
                             daemon=True).start()
        elif ev.kind == "failed":
            with self._cv:
                slot.state, slot.client = "failed", None
                if slot.recovery is not None:
                    slot.recovery.gave_up = True
                self._cv.notify_all()

    def _bring_up(self, slot: _Slot, client: WorkerClient) -> None:
        client.on_status(lambda ev, index=slot.index: self._on_status(ev, index))
        recovery = slot.recovery
        try:
            if self._prepare is not None:
                self._prepare(client)
            for entry in self.journal.on_slot(slot.index):
                try:
                    client.request("session.restore", entry.restore_params(), timeout=30.0)
                except WorkerLost:
                    raise
                except WorkerError as exc:  # one bad entry must not keep the others down
                    if recovery is not None:
                        recovery.restore_failed[entry.id] = f"{exc.code}: {exc.message}"
                    log.error("session %s not restored on %s: %s", entry.id, client.name, exc)
                else:
                    if recovery is not None:
                        recovery.sessions_restored.append(entry.id)
        except WorkerLost as exc:
            log.warning("replacement for slot %d lost while restoring: %s", slot.index, exc.message)
            return  # the pool reports it lost and starts another: restore begins again there
        with self._cv:
            if slot.client is client and slot.state == "restoring":
                slot.state = "ready"
                if recovery is not None:
                    recovery.restored_at = time.monotonic()
                self._cv.notify_all()

    def _on_status(self, ev: Event, slot: int) -> None:
        data = ev.data
        if data.get("domain") != "session":
            return
        kind = data.get("kind")
        if kind == "state":
            self.journal.apply(data)
        elif kind == "fault":
            self.fault_events.append({**data, "slot": slot})
        elif kind == "corrupt":
            self.corrupt_events.append({**data, "slot": slot})
            sid = str(data.get("session"))
            entry = self.journal.get(sid)
            behind = entry is not None and (not data.get("rolled_back") or data.get("version") != entry.version)
            if behind:
                # Not on the reader thread: a request from here would wait for the pipe it is reading.
                threading.Thread(target=self._repair, args=(sid, "worker rollback fell short of the journal"),
                                 daemon=True).start()

    def _repair(self, sid: str, why: str) -> None:
        entry = self.journal.get(sid)
        if entry is None:
            return
        try:
            client = self._await_slot(entry.slot, time.monotonic() + 30.0)[0]
            client.request("session.restore", entry.restore_params(), timeout=30.0)
        except WorkerError as exc:
            log.error("session %s could not be repaired from the journal: %s", sid, exc)
            return
        self.repairs.append((sid, why, time.monotonic()))

    # ---- slots ------------------------------------------------------------------------------------
    def _await_slot(self, index: int, deadline: float, after: int = -1) -> tuple[WorkerClient, int]:
        """The slot's worker once ready (and, with ``after``, a newer one than generation ``after``)."""
        slot = self._slots[index]
        with self._cv:
            while True:
                if self._closed:
                    raise NoWorkerAvailable("the session host is closed")
                if slot.state == "ready" and slot.client is not None and slot.generation > after:
                    return slot.client, slot.generation
                if slot.state == "failed":
                    raise NoWorkerAvailable(f"worker slot {index} failed for good: {self.pool.describe()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoWorkerAvailable(f"worker slot {index} not back in time ({slot.state}): "
                                            f"{self.pool.describe()}")
                self._cv.wait(min(remaining, 0.1))

    def _place(self, deadline: float) -> int:
        """The ready slot holding the fewest sessions."""
        with self._cv:
            while True:
                ready = [s.index for s in self._slots if s.state == "ready"]
                if ready:
                    return min(ready, key=self.journal.count_on)
                if all(s.state == "failed" for s in self._slots) or self._closed:
                    raise NoWorkerAvailable(f"no worker for a new session: {self.pool.describe()}")
                if not self._cv.wait(max(0.0, min(deadline - time.monotonic(), 0.1))) \
                        and time.monotonic() > deadline:
                    raise NoWorkerAvailable(f"no worker ready for a new session: {self.pool.describe()}")

    def client(self, slot: int, timeout: float = 30.0) -> WorkerClient:
        """The slot's current worker, once ready (for fault injection and inspection)."""
        return self._await_slot(slot, time.monotonic() + timeout)[0]

    def slot_of(self, sid: str) -> int:
        entry = self.journal.get(sid)
        if entry is None:
            raise WorkerError(ErrorCode.SESSION_NOT_FOUND, f"session {sid[:100]!r} is not in this host's journal")
        return entry.slot

    @property
    def slots(self) -> int:
        return len(self._slots)

    # ---- requests ----------------------------------------------------------------------------------
    def policy(self, client: WorkerClient, op: str) -> str:
        info = client.operation_info(op)
        return RESUME if info is not None and info.idempotent else MARK_FAILED

    def call(self, slot: int, op: str, params: Mapping[str, Any], *, timeout: float = 30.0, priority: int = 5,
             on_event: Union[EventCallback, None] = None) -> dict[str, Any]:
        """Run ``op`` on the slot's worker, applying the in-flight policy across worker losses."""
        deadline = time.monotonic() + timeout
        resubmits = 0
        repaired = False
        lost_generation = -1
        while True:
            # After a loss, only a replacement will do: the lost client can look ready for a moment (its
            # pipe broke on write before its reader saw the end of the stream).
            client, generation = self._await_slot(slot, deadline, lost_generation)
            remaining = max(0.001, deadline - time.monotonic())
            try:
                return self._request(client, op, params, remaining, priority, on_event)
            except WorkerLost as exc:
                recovery = self._recovery_of(slot, generation)
                what = f"{op} #{exc.request_id}"
                if self.policy(client, op) == MARK_FAILED:
                    self._note(recovery, "failed", f"{what}: not idempotent")
                    raise WorkerLost(f"{exc.message} (policy {MARK_FAILED!r}: {op} is not idempotent, not "
                                     f"resubmitted)", exc.request_id, op) from exc
                if resubmits >= self.max_resubmits:
                    self._note(recovery, "failed", f"{what}: lost {resubmits + 1} workers")
                    raise WorkerLost(f"{exc.message} (policy {RESUME!r}: resubmitted {resubmits} times and lost "
                                     f"again: not resubmitted further)", exc.request_id, op) from exc
                resubmits += 1
                lost_generation = generation
                self._note(recovery, "resumed", what)
            except WorkerError as exc:
                sid = params.get("id")
                if exc.code != ErrorCode.SESSION_CORRUPT or repaired or not isinstance(sid, str):
                    raise
                repaired = True
                entry = self.journal.get(sid)
                if entry is not None and (not exc.retryable or self._worker_behind(client, sid, entry.version)):
                    client.request("session.restore", entry.restore_params(), timeout=max(1.0, remaining))
                    self.repairs.append((sid, exc.message[:200], time.monotonic()))

    @staticmethod
    def _request(client: WorkerClient, op: str, params: Mapping[str, Any], timeout: float, priority: int,
                 on_event: Union[EventCallback, None]) -> dict[str, Any]:
        """Send and sleep until the answer. Unlike ``WorkerClient.request`` the caller never takes the read
        role: with dozens of sessions waiting at once, callers polling for that role burn the CPU the
        worker needs; the client's reader thread hands each answer over instead."""
        pending = client.submit(op, params, deadline_ms=timeout * 1e3, priority=priority, on_event=on_event)
        if not pending.wait(timeout + min(1.0, 0.1 * timeout + 0.05)):
            if client.alive:
                client.submit("cancel", {"target": pending.id})
            raise RequestTimeout(f"no answer within {timeout:g} s", pending.id, op)
        return pending.result()

    def _worker_behind(self, client: WorkerClient, sid: str, version: int) -> bool:
        listing = client.request("session.list", {}, timeout=10.0)
        return any(s["id"] == sid and s["version"] != version for s in listing["sessions"])

    def _recovery_of(self, slot: int, generation: int) -> Union[Recovery, None]:
        # The loss that ended ``generation`` is the recovery recorded as generation + 1.
        lost = [r for r in self.recoveries if r.slot == slot]
        return lost[generation] if generation < len(lost) else None

    def _note(self, recovery: Union[Recovery, None], kind: str, what: str) -> None:
        if recovery is not None:
            getattr(recovery, kind).append(what)

    # ---- session operations -------------------------------------------------------------------------
    def create(self, state: Union[Mapping[str, Any], None] = None, *, model: Union[str, None] = None,
               workspace_bytes: int = 0, scratch_files: int = 0, checkpoint_every: int = 1,
               key: Union[str, None] = None, slot: Union[int, None] = None, timeout: float = 30.0) -> dict[str, Any]:
        params = {"state": dict(state or {}), "key": key or uuid.uuid4().hex, "model": model,
                  "workspace_bytes": workspace_bytes, "scratch_files": scratch_files,
                  "checkpoint_every": checkpoint_every}
        where = self._place(time.monotonic() + timeout) if slot is None else slot
        info = self.call(where, "session.create", params, timeout=timeout)
        self.journal.record(where, info, params)
        return info

    def get(self, sid: str, *, timeout: float = 30.0) -> dict[str, Any]:
        slot = self.slot_of(sid)
        info = self.call(slot, "session.get", {"id": sid}, timeout=timeout)
        self.journal.record(slot, info)
        return info

    def update(self, sid: str, set: Union[Mapping[str, Any], None] = None, *,
               delete: Sequence[str] = (), incr: Union[Mapping[str, float], None] = None,
               op_id: Union[str, None] = None, timeout: float = 30.0) -> dict[str, Any]:
        params = {"id": sid, "set": dict(set or {}), "delete": list(delete), "incr": dict(incr or {}),
                  "op_id": op_id or uuid.uuid4().hex}
        return self.call(self.slot_of(sid), "session.update", params, timeout=timeout)

    def work(self, sid: str, job: str, items: int, *, item_ms: float = 0.0, seed: str = "",
             on_event: Union[EventCallback, None] = None, timeout: float = 60.0) -> dict[str, Any]:
        params = {"id": sid, "job": job, "items": items, "item_ms": item_ms, "seed": seed}
        return self.call(self.slot_of(sid), "session.work", params, timeout=timeout, on_event=on_event)

    def generate(self, sid: str, *, timeout: float = 120.0, **params: Any) -> dict[str, Any]:
        body = {"id": sid, "op_id": params.pop("op_id", None) or uuid.uuid4().hex, **params}
        return self.call(self.slot_of(sid), "session.generate", body, timeout=timeout)

    def close_session(self, sid: str, *, timeout: float = 30.0) -> dict[str, Any]:
        result = self.call(self.slot_of(sid), "session.close", {"id": sid}, timeout=timeout)
        self.journal.close(sid)
        return result

    def list(self, slot: int, *, timeout: float = 10.0) -> dict[str, Any]:
        return self.call(slot, "session.list", {}, timeout=timeout)
