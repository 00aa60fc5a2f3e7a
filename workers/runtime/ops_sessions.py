"""Handlers of the session operations (see workers/protocol/ops_sessions.py).

Session operations run on the shared executor, one at a time, except ``session.list`` (answered on
the reader thread) and ``session.generate`` (routed to the model domain's inference slots, so a
generation never blocks other sessions' bookkeeping). Every operation on a session validates its
state first (workers/runtime/sessions.py); every committed change is announced as a status event
with its delta, which is what a host journals.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import psutil

from workers.protocol.messages import ErrorCode, Event, Request
from workers.protocol.ops_models import InferenceParams
from workers.protocol.ops_sessions import (
    JOB_PREFIX,
    SessionCloseResult,
    SessionCorruptParams,
    SessionCorruptResult,
    SessionCrashParams,
    SessionCrashResult,
    SessionCreateParams,
    SessionGenerateParams,
    SessionGenerateResult,
    SessionIdParams,
    SessionInfo,
    SessionListParams,
    SessionListResult,
    SessionRestoreParams,
    SessionRestoreResult,
    SessionSummary,
    SessionTotals,
    SessionUpdateParams,
    SessionUpdateResult,
    SessionWorkParams,
    SessionWorkResult,
    checksum,
    job_output,
)
from workers.runtime import ops_models, session_faults
from workers.runtime.context import OperationError, RequestContext
from workers.runtime.sessions import Session, SessionStore

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer

_proc = psutil.Process()


class SessionRuntime:
    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.store = SessionStore(self._emit, server.config.worker_id)
        self.crash = session_faults.CrashArm(self._emit)
        server.stop_hooks.append(lambda _drain: self.store.stop())

    def _emit(self, data: dict[str, Any]) -> None:
        self.server.send(Event(event="status", data=data))

    def _announce(self, s: Session, op: str, changed: dict[str, Any], deleted: list[str],
                  op_id: Union[str, None]) -> None:
        self._emit({"domain": "session", "kind": "state", "session": s.id, "op": op, "version": s.version,
                    "checksum": s.checksum, "set": changed, "delete": deleted, "op_id": op_id,
                    "t_mono": time.monotonic()})

    def _open(self, sid: str) -> Session:
        """The session, locked and validated; the caller releases ``session.lock``."""
        s = self.store.find(sid)
        s.lock.acquire()
        try:
            if s.corrupt is not None:
                raise OperationError(ErrorCode.SESSION_CORRUPT,
                                     f"session {s.id} state corrupt ({s.corrupt.kind}: {s.corrupt.detail}); "
                                     f"nothing runs on it until it is restored (session.restore)")
            self.store.checked(s)
        except BaseException:
            s.lock.release()
            raise
        return s

    def _info(self, s: Session, created: bool = False, seconds: float = 0.0) -> SessionInfo:
        snap = s.snapshot.version if s.snapshot is not None else 0
        return SessionInfo(s.id, s.key, s.version, s.checksum, s.state, snap, s.resources(), created, seconds)

    def _pin(self, s: Session) -> None:
        if s.model is None:
            return
        try:
            model = ops_models.runtime(self.server).require().get(s.model)
        except KeyError as exc:
            raise OperationError(ErrorCode.MODEL_NOT_LOADED, f"session model: {exc.args[0]}") from exc
        s.model_objs.add(id(model.obj))

    # ---- lifecycle -------------------------------------------------------------------------
    def create(self, ctx: RequestContext, p: SessionCreateParams) -> SessionInfo:
        t0 = time.perf_counter()
        if p.key is not None:
            existing = self.store.by_key(p.key)
            if existing is not None:
                s = self._open(existing.id)
                try:
                    return self._info(s, False, time.perf_counter() - t0)
                finally:
                    s.lock.release()
        s = Session(self.store.new_id(), p.key, p.model, p.checkpoint_every)
        try:
            self._pin(s)
            s.reserve(p.workspace_bytes, p.scratch_files, self.store.tmp_root())
            s.commit(dict(p.state))
            self.crash.fire("initialization", f"session.create of {s.id}", s.id)
        except BaseException:
            s.release()
            raise
        self.store.add(s)
        self._announce(s, "session.create", dict(s.state), [], None)
        return self._info(s, True, time.perf_counter() - t0)

    def restore(self, ctx: RequestContext, p: SessionRestoreParams) -> SessionRestoreResult:
        t0 = time.perf_counter()
        if not p.id or len(p.id) > 128:
            raise ValueError(f"session id must be 1..128 characters, got {len(p.id)}")
        if checksum(p.state) != p.checksum:
            raise ValueError(f"session {p.id}: the state to restore does not match its checksum (damaged journal)")
        current = self.store.sessions()
        old = next((s for s in current if s.id == p.id), None)
        if old is not None and old.version == p.version and old.checksum == p.checksum and old.corrupt is None:
            return SessionRestoreResult(p.id, p.version, p.checksum, False, time.perf_counter() - t0)
        s = Session(p.id, p.key, p.model, p.checkpoint_every)
        try:
            self._pin(s)
            s.reserve(p.workspace_bytes, p.scratch_files, self.store.tmp_root())
            s.install(dict(p.state), p.version, list(p.applied))
            self.crash.fire("initialization", f"session.restore of {s.id}", s.id)
        except BaseException:
            s.release()
            raise
        replaced = self.store.add(s)
        if replaced is not None:
            with replaced.lock:
                replaced.release()
        return SessionRestoreResult(s.id, s.version, s.checksum, True, time.perf_counter() - t0)

    def get(self, ctx: RequestContext, p: SessionIdParams) -> SessionInfo:
        s = self._open(p.id)
        try:
            return self._info(s)
        finally:
            s.lock.release()

    def close(self, ctx: RequestContext, p: SessionIdParams) -> SessionCloseResult:
        t0 = time.perf_counter()
        s = self._open(p.id)
        try:
            held = s.resources()
            version = s.version
            s.workspace = None  # the first resources go back ...
            self.crash.fire("cleanup", f"session.close of {s.id}", s.id)  # ... so a crash here is mid-cleanup
            s.release()
            self.store.remove(s)
        finally:
            s.lock.release()
        self._emit({"domain": "session", "kind": "closed", "session": s.id, "version": version,
                    "t_mono": time.monotonic()})
        return SessionCloseResult(s.id, version, held, time.perf_counter() - t0)

    # ---- state -----------------------------------------------------------------------------
    def update(self, ctx: RequestContext, p: SessionUpdateParams) -> SessionUpdateResult:
        s = self._open(p.id)
        try:
            if p.op_id is not None and p.op_id in s.applied:
                return SessionUpdateResult(s.id, s.version, s.checksum, {}, [], True)
            overlap = (set(p.set) | set(p.incr)) & set(p.delete)
            if overlap or set(p.set) & set(p.incr):
                raise ValueError(f"keys named twice in one update: {sorted(overlap or set(p.set) & set(p.incr))}")
            missing = [k for k in p.delete if k not in s.state]
            if missing:
                raise ValueError(f"session {s.id}: cannot delete keys it does not have: {missing[:8]}")
            changed: dict[str, Any] = dict(p.set)
            for key, amount in p.incr.items():
                base = s.state.get(key, 0)
                if isinstance(base, bool) or not isinstance(base, (int, float)):
                    raise ValueError(f"session {s.id}: cannot increment {key!r}: it holds a {type(base).__name__}")
                changed[key] = base + (int(amount) if isinstance(base, int) and float(amount).is_integer()
                                       else amount)
            new = {k: v for k, v in s.state.items() if k not in p.delete}
            new.update(changed)
            self.crash.fire("processing", f"session.update of {s.id}", s.id)  # mid-update, before the commit
            s.commit(new, p.op_id)
            self._announce(s, "session.update", changed, list(p.delete), p.op_id)
            return SessionUpdateResult(s.id, s.version, s.checksum, changed, list(p.delete), False)
        finally:
            s.lock.release()

    def work(self, ctx: RequestContext, p: SessionWorkParams) -> SessionWorkResult:
        if not 1 <= p.items <= 10000 or p.item_ms < 0 or not p.job:
            raise ValueError(f"session.work needs a job name, items 1..10000 and item_ms >= 0; got {p.job!r}, "
                             f"{p.items}, {p.item_ms}")
        key = JOB_PREFIX + p.job
        s = self._open(p.id)
        try:
            job = s.state.get(key) or {"items": p.items, "done": 0, "outputs": []}
            if job["items"] != p.items:
                raise ValueError(f"session {s.id}: job {p.job!r} has {job['items']} items, request says {p.items}")
            start = job["done"]
        finally:
            s.lock.release()
        for i in range(start, p.items):
            if p.item_ms:
                ctx.wait(p.item_ms / 1e3)  # the work itself; cancellable, bounded by the deadline
            ctx.check()
            self.crash.fire("processing", f"session.work of {p.id}, job {p.job!r}, item {i}", p.id,
                            progressed=i - start)
            out = job_output(p.job, i, p.seed)
            s = self._open(p.id)
            try:
                job = s.state.get(key) or {"items": p.items, "done": 0, "outputs": []}
                job = {"items": p.items, "done": job["done"] + 1, "outputs": [*job["outputs"], out]}
                s.commit({**s.state, key: job})
                self._announce(s, "session.work", {key: job}, [], None)
            finally:
                s.lock.release()
            ctx.progress(i + 1, p.items, out)  # the item's output: a partial result, reported
        s = self._open(p.id)
        try:
            job = s.state[key]
            return SessionWorkResult(s.id, p.job, p.items, job["done"], list(job["outputs"]), start, s.version,
                                     s.checksum)
        finally:
            s.lock.release()

    # ---- generation (routed to the model domain's inference slots) -------------------------------
    def route_generate(self, req: Request, p: SessionGenerateParams) -> None:
        rt = ops_models.runtime(self.server)
        if rt.slots is None:
            self.server.fail(req.id, ErrorCode.INVALID_PARAMS, "session.generate: no model root configured: "
                                                               "send models.configure first")
            return
        rt.slots.submit(req.id, "session.generate", req.priority, req.deadline_ms, p, self._generate)

    def _generate(self, ctx: RequestContext, p: SessionGenerateParams, queue_s: float) -> SessionGenerateResult:
        rt = ops_models.runtime(self.server)
        s = self._open(p.id)
        try:
            model = s.model
            if model is None:
                raise ValueError(f"session {s.id} has no model: create it with model=<a resident model>")
            if p.op_id is not None and p.op_id in s.applied:
                images = s.state.get("images") or [""]
                return SessionGenerateResult(s.id, model, images[-1], 0.0, queue_s, 0, s.version, s.checksum, True)
        finally:
            s.lock.release()
        try:
            instance = id(rt.require().get(model).obj)
        except KeyError as exc:
            raise OperationError(ErrorCode.MODEL_NOT_LOADED, f"session model: {exc.args[0]}") from exc
        result = rt._infer(ctx, InferenceParams(model=model, prompt=p.prompt, steps=p.steps, width=p.width,
                                                height=p.height, seed=p.seed, output="digest", progress=False),
                           queue_s)
        digest = result.sha256[0]
        s = self._open(p.id)
        try:
            s.model_objs.add(instance)
            images = [*(s.state.get("images") or []), digest]
            self.crash.fire("processing", f"session.generate of {s.id}", s.id)  # generated, not yet committed
            s.commit({**s.state, "images": images}, p.op_id)
            self._announce(s, "session.generate", {"images": images}, [], p.op_id)
            return SessionGenerateResult(s.id, model, digest, result.seconds, queue_s, instance, s.version,
                                         s.checksum, False)
        finally:
            s.lock.release()

    # ---- introspection and faults ------------------------------------------------------------------
    def list(self, p: SessionListParams) -> SessionListResult:
        summaries, refs, instances = [], {}, {}
        state_bytes = workspace = scratch = 0
        for s in self.store.sessions():
            res = s.resources()
            keys = len(s.state) if isinstance(s.state, dict) else 0
            summaries.append(SessionSummary(s.id, s.version, keys, s.model, s.corrupt.kind if s.corrupt else None))
            state_bytes += res.state_bytes
            workspace += res.workspace_bytes
            scratch += res.scratch_files
            if s.model is not None:
                refs[s.model] = refs.get(s.model, 0) + 1
                instances.setdefault(s.model, set()).update(s.model_objs)
        totals = SessionTotals(len(summaries), state_bytes, workspace, scratch, self.store.scratch_entries(), refs,
                               {m: len(objs) for m, objs in instances.items()}, self.store.corruptions_detected,
                               self.store.rollbacks, len(os.listdir("/proc/self/fd")), int(_proc.memory_info().rss))
        return SessionListResult(summaries, totals)

    def fault_corrupt(self, ctx: RequestContext, p: SessionCorruptParams) -> SessionCorruptResult:
        s = self.store.find(p.id)  # no validation, no lock: the fault bypasses both, as its causes do
        detail = session_faults.corrupt(s, p.kind, p.cause, p.snapshot_too)
        return SessionCorruptResult(s.id, p.kind, p.cause, detail)

    def fault_crash(self, ctx: RequestContext, p: SessionCrashParams) -> SessionCrashResult:
        self.crash.arm(p)
        return SessionCrashResult(p.phase, p.mode, True)


def runtime(server: WorkerServer) -> SessionRuntime:
    rt = getattr(server, "_session_runtime", None)
    if rt is None:
        rt = server._session_runtime = SessionRuntime(server)  # type: ignore[attr-defined]
    return rt


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    rt = runtime(server)
    return {"session.create": rt.create, "session.get": rt.get, "session.update": rt.update,
            "session.work": rt.work, "session.close": rt.close, "session.restore": rt.restore,
            "fault.session_corrupt": rt.fault_corrupt, "fault.session_crash": rt.fault_crash}


def routed_handlers(server: WorkerServer) -> dict[str, Callable[[Request, Any], None]]:
    return {"session.generate": runtime(server).route_generate}


def control_handlers(server: WorkerServer) -> dict[str, Callable[[Any], Any]]:
    return {"session.list": runtime(server).list}
