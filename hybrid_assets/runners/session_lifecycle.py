"""Spec 4.4 session lifecycle: creation and cleanup times, what a closed session leaves behind, and the
time a session takes to serve again after its worker crashed.

- session_lifecycle: sessions one after another on a warm worker behind a SessionHost. Each is created
  with an initial state, ``workspace_mib`` of scratch memory (pages touched) and ``scratch_files`` open
  temporary files (creation: from the create request to the answer, when the state is initialised and
  the resources reserved), does one piece of work (a two-item job), and is closed (cleanup: from the close
  request to the answer, which comes after everything was released). What the worker holds
  (``session.list`` totals: sessions, state bytes, workspace bytes, open scratch files, entries in the
  sessions' temporary directory, open descriptors, model references) is compared with before the
  session's creation; each kind above it counts one leaked resource. One warm-up session first (the
  worker's first session creates the temporary root and the validation thread), noted, not sampled.
- session_recovery: two sessions with committed state (a configuration, a job, counters) on one worker;
  per crash, the trigger in turn: an unhandled exception (``fault.crash`` mode exception), resource
  exhaustion (``fault.crash`` mode sigkill: the OOM killer's signal, sent by the worker to itself) or a
  SIGKILL from outside; right after it, a counter update is sent to a session through the host. Recovery
  time: from the crash to that update's answer (the host detected the loss, the pool started a
  replacement, the host restored every session from its journal, the update ran there). State lost: per
  crash, the sessions whose state then differs from the runner's reference (every acknowledged change
  applied), or that never came back. Crashes are spaced by the pool's stable period, so each is a fresh
  failure, not a crash loop.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.session_support import diff_fields, leaks, session_host
from workers.host.errors import WorkerError
from workers.protocol.ops_sessions import JOB_PREFIX, job_output

LIFECYCLE_METRICS = frozenset({"session_creation_s", "session_cleanup_s", "session_leaked_resources_count"})
RECOVERY_METRICS = frozenset({"session_recovery_s", "session_state_lost"})
TRIGGERS = ("unhandled_exception", "resource_exhaustion", "kill")
MiB = 1 << 20


def session_lifecycle(ctx: RunnerContext) -> None:
    p = ctx.params
    n = int(p["sessions"])
    workspace = int(float(p.get("workspace_mib", 4)) * MiB)
    files = int(p.get("scratch_files", 2))
    rec = ctx.recorder
    with session_host(ctx) as host:
        warm = host.create({"warm-up": True}, workspace_bytes=workspace, scratch_files=files)
        host.close_session(warm["id"])
        rec.note("warm_up", "one session created and closed before sampling (first-session set-up)")
        for i in range(n):
            before = host.list(0)["totals"]
            state = {"user": f"user-{i}", "preferences": {"style": "photo", "size": 512}, "history": []}
            t0 = time.perf_counter()
            info = host.create(state, workspace_bytes=workspace, scratch_files=files)
            created = time.perf_counter() - t0
            sid = info["id"]
            host.work(sid, "first", 2)
            t1 = time.perf_counter()
            closed = host.close_session(sid)
            cleanup = time.perf_counter() - t1
            after = host.list(0)["totals"]
            left = leaks(before, after)
            freed = closed["freed"]
            rec.record("session_creation_s", created, "s", session=i, worker_s=round(info["seconds"], 6))
            rec.record("session_cleanup_s", cleanup, "s", session=i, worker_s=round(closed["seconds"], 6),
                       freed_workspace=freed["workspace_bytes"], freed_files=freed["scratch_files"])
            rss_delta = (after["rss_bytes"] - before["rss_bytes"]) / MiB  # noted, not counted: allocator noise
            rec.record("session_leaked_resources_count", float(len(left)), "count", session=i,
                       leaks="; ".join(left)[:300], rss_delta_mib=round(rss_delta, 2))
            if freed["workspace_bytes"] != workspace or freed["scratch_files"] != files:
                ctx.log.warning("session %d: close reported %s freed, it held %d bytes and %d files", i, freed,
                                workspace, files)


def session_recovery(ctx: RunnerContext) -> None:
    p = ctx.params
    crashes = int(p["crashes"])
    triggers = list(p.get("triggers", TRIGGERS))
    unknown = [t for t in triggers if t not in TRIGGERS]
    if not triggers or unknown:
        raise ValueError(f"triggers must name some of {TRIGGERS}, got {triggers}")
    stable_s = float(p.get("stable_after_s", 0.5))
    window = float(p.get("recovery_window_s", 60.0))
    rec = ctx.recorder
    with session_host(ctx, stable_after_s=stable_s, max_restarts=crashes + 5, backoff_initial_s=0.05) as host:
        refs: dict[str, dict[str, Any]] = {}
        for u in range(int(p.get("sessions", 2))):
            state = {"config": {"user": f"user-{u}", "steps": 20}, "counter": 0}
            sid = host.create(state)["id"]
            host.work(sid, "setup", 3)
            state[JOB_PREFIX + "setup"] = {"items": 3, "done": 3, "outputs": [job_output("setup", i) for i in range(3)]}
            refs[sid] = state
        target = next(iter(refs))
        for i in range(crashes):
            trigger = triggers[i % len(triggers)]
            client = host.client(0, timeout=window)
            up_for = time.monotonic() - (client.ready_at or 0.0)
            time.sleep(max(0.0, stable_s - up_for) + 0.05)  # a fresh failure, not a crash loop
            t_crash = time.monotonic()
            if trigger == "kill":
                try:
                    os.kill(client.pid or 0, signal.SIGKILL)
                except ProcessLookupError:  # gone already: recorded as what it is, not a crash we caused
                    rec.note(f"crash_{i}", "the worker had exited before the kill")
            else:
                client.submit("fault.crash", {"mode": "exception" if trigger == "unhandled_exception" else "sigkill"})
            labels: dict[str, Any] = {"crash": i, "trigger": trigger}
            try:
                host.update(target, incr={"counter": 1}, timeout=window)
            except WorkerError as exc:
                rec.record("session_recovery_s", time.monotonic() - t_crash, "s", **labels, recovered=False,
                           error=f"{exc.code}: {exc.message[:160]}")
                rec.record("session_state_lost", float(len(refs)), "count", **labels, why="never served again")
                continue
            rec.record("session_recovery_s", time.monotonic() - t_crash, "s", **labels, recovered=True)
            refs[target]["counter"] += 1
            lost = []
            for sid, ref in refs.items():
                try:
                    state = host.get(sid, timeout=window)["state"]
                except WorkerError as exc:
                    lost.append(f"{sid[:10]}: {exc.code}")
                    continue
                if state != ref:
                    lost.append(f"{sid[:10]}: {diff_fields(ref, state)}")
            rec.record("session_state_lost", float(len(lost)), "count", **labels, detail="; ".join(lost)[:300])
        rec.note("recoveries", len(host.recoveries))


RUNNERS = {
    "processing.session_lifecycle": (LIFECYCLE_METRICS, session_lifecycle),
    "processing.session_recovery": (RECOVERY_METRICS, session_recovery),
}
