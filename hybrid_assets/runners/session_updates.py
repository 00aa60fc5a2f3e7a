"""Spec 4.4 coordination: state updates reaching the host, and errors propagating to it.

- state_updates: state changes made inside the worker, by session jobs (``session.work``: every item
  commits a new version of the session's state and announces it) on ``sessions`` sessions one after
  another, interleaved with host-requested updates. The host's subscribed view is the SessionHost's
  journal: it applies each announced delta in version order and checks it reproduces the worker's
  checksum. Latency per change: from the worker's commit (the event's monotonic time: worker and host
  share the machine's monotonic clock) to the journal showing it. Lost: per change the worker committed
  (every version of every session, from the worker's final versions), 1 when the journal never showed it.
- error_propagation: a host-side workflow of ``steps`` steps, each a two-item ``session.work`` job of a
  session; a fault is armed in one step (``fault.session_crash`` in the step's session, after its first
  item): ``exception`` (mode raise: the step fails, the worker lives and answers INTERNAL_ERROR naming
  the job and item) or ``crash`` (mode exception: an unhandled exception ends the worker mid-step). The
  fault's own status event marks the moment it fires; the error is propagated when the host-side
  workflow reports it with the step it came from (error code, step index and, for a crash, the worker
  loss). A crash is run on a plain client (no restart or resubmission, so the loss is the report).
  Lost: 1 per injection never reported within ``report_window_s``, or reported without its step.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Union

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.session_support import session_host, with_fault_flag
from workers.host.client import WorkerClient
from workers.host.errors import WorkerError
from workers.protocol.messages import ErrorCode, Event

UPDATE_METRICS = frozenset({"state_update_latency_s", "state_update_lost"})
PROPAGATION_METRICS = frozenset({"error_propagation_s", "error_lost"})
FAULTS = {"exception": "raise", "crash": "exception"}


def state_updates(ctx: RunnerContext) -> None:
    p = ctx.params
    total = int(p["updates"])
    n_sessions = int(p.get("sessions", 5))
    rec = ctx.recorder
    seen: dict[str, set[int]] = {}
    lock = threading.Lock()
    with session_host(ctx) as host:

        def view(sid: str, version: int, worker_t: Union[float, None], host_t: float) -> None:
            with lock:
                seen.setdefault(sid, set()).add(version)
            if worker_t is not None:
                rec.record("state_update_latency_s", host_t - worker_t, "s", session=sid[:10], version=version)

        host.journal.subscribe(view)
        ids = [host.create({"user": f"user-{i}", "counter": 0})["id"] for i in range(n_sessions)]
        done, k = 0, 0
        while done < total:
            sid = ids[k % n_sessions]
            if k % 4 == 3:
                host.update(sid, incr={"counter": 1})  # a host-requested change, announced the same way
                done += 1
            else:
                items = min(5, total - done)
                host.work(sid, f"job-{k}", items, item_ms=float(p.get("item_ms", 2.0)))
                done += items
            k += 1
        time.sleep(0.2)  # the last announcements are read
        for sid in ids:
            final = host.get(sid)["version"]
            with lock:
                got = seen.get(sid, set())
            for version in range(2, final + 1):  # version 1 is the create's answer itself
                rec.record("state_update_lost", 0.0 if version in got else 1.0, "count", session=sid[:10],
                           version=version)
        rec.note("journal", {"gaps": host.journal.gaps, "checksum_mismatches": host.journal.mismatches})


@dataclass
class StepError:
    step: int
    code: str
    message: str
    at: float


def _workflow(client: WorkerClient, sids: list[str], tag: str, timeout: float) -> Union[StepError, None]:
    """Run the steps in order; the first failure, reported with its step."""
    for step, sid in enumerate(sids):
        try:
            client.request("session.work", {"id": sid, "job": f"{tag}-step-{step}", "items": 2, "item_ms": 5.0},
                           timeout=timeout)
        except WorkerError as exc:
            return StepError(step, exc.code, exc.message, time.monotonic())
    return None


def error_propagation(ctx: RunnerContext) -> None:
    p = ctx.params
    injections = int(p["injections"])
    faults = list(p["faults"])
    if not faults or any(f not in FAULTS for f in faults):
        raise ValueError(f"faults must name some of {sorted(FAULTS)}, got {faults}")
    window = float(p["report_window_s"])
    steps = int(p.get("steps", 3))
    argv = with_fault_flag(ctx).worker_argv
    rec = ctx.recorder
    fired: list[dict[str, Any]] = []

    def on_status(ev: Event) -> None:
        if ev.data.get("domain") == "session" and ev.data.get("kind") == "fault":
            fired.append(dict(ev.data))

    client: Union[WorkerClient, None] = None
    try:
        for i in range(injections):
            fault = faults[i % len(faults)]
            if client is None or not client.alive:
                if client is not None:
                    client.shutdown()  # reaps the crashed one
                client = WorkerClient(argv, name=f"{ctx.case_id}-w{i}").start()
                client.on_status(on_status)
            sids = [client.request("session.create", {"state": {"step": s}}, timeout=30.0)["id"]
                    for s in range(steps)]
            target = i % steps
            client.request("fault.session_crash", {"phase": "processing", "mode": FAULTS[fault], "after_items": 1,
                                                   "session": sids[target]}, timeout=10.0)
            n_fired = len(fired)
            failure = _workflow(client, sids, f"inj{i}", window)
            labels = {"injection": i, "fault": fault, "step": target}
            t_fault = float(fired[n_fired]["t_mono"]) if len(fired) > n_fired else None
            ok = failure is not None and failure.step == target and t_fault is not None
            if fault == "crash" and failure is not None:
                ok = ok and failure.code == ErrorCode.WORKER_LOST
            if ok and failure is not None and t_fault is not None:
                rec.record("error_propagation_s", failure.at - t_fault, "s", **labels, code=failure.code)
            rec.record("error_lost", 0.0 if ok else 1.0, "count", **labels,
                       reported=f"step {failure.step}: {failure.code}: {failure.message[:120]}" if failure else "",
                       fault_fired=t_fault is not None)
            if client.alive:
                for sid in sids:
                    client.request("session.close", {"id": sid}, timeout=10.0)
    finally:
        if client is not None:
            client.shutdown()


RUNNERS = {
    "processing.state_updates": (UPDATE_METRICS, state_updates),
    "processing.error_propagation": (PROPAGATION_METRICS, error_propagation),
}
