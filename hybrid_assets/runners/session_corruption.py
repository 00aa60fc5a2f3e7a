"""Spec 3.4 session_state_corruption: corrupt a live session's state; count operations served from it,
detection, and the state the system recovers.

One worker behind a SessionHost (its journal is the host's record of every acknowledged change). Per
injection a fresh session gets a configuration, a job and counter updates; the runner keeps its own
reference (every acknowledged operation applied) and the reference at every acknowledged version. Then
``fault.session_corrupt`` damages the state the way the cause does (a racing writer without the lock, a
damaged serialization read back leniently, a failing store; a failing store also takes the known-good
snapshot with it, so the worker cannot roll back alone) with the case's kind of damage. Right after (or
``probe_delay_s`` later, alternating, so the worker's background validation gets to it first) the
runner sends ``probe_ops`` operations straight to the worker (no host repair in between): get, a counter
update, get. An operation answered with a result computed from the corrupt state (a get whose state is
not the reference; an update whose resulting checksum is not that of the reference plus the update)
counts in operation_on_corrupt_state_count. Detection is the worker's own: a SESSION_CORRUPT answer or a
"corrupt" status event naming the session (detection time from the injection to the first of them).
Recovery: the session is read through the SessionHost (which restores it from its journal when the
worker could not roll back to the acknowledged state) until it is consistent; state_restored_consistent_ok
is 1 when it equals the reference (reconstruction) or an earlier acknowledged version with the rollback
reported in the worker's event (rolled_back_versions > 0), and the session then takes an update.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Union

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.session_support import diff_fields, session_host
from workers.host.errors import WorkerError
from workers.host.sessions import SessionHost
from workers.protocol.messages import ErrorCode
from workers.protocol.ops_sessions import JOB_PREFIX, checksum, job_output

CORRUPTION_METRICS = frozenset({
    "operation_on_corrupt_state_count", "state_corruption_detected", "state_corruption_detection_s",
    "state_restored_consistent_ok", "state_recovery_s",
})
KINDS = {"partial_state_loss": "partial_loss", "inconsistent_state": "inconsistent",
         "complete_state_corruption": "complete"}
CAUSES = ("concurrent_access", "serialization_error", "storage_failure")


class Reference:
    """The runner's own record: the state with every acknowledged operation applied, per version."""

    def __init__(self, state: dict[str, Any], version: int) -> None:
        self.state = dict(state)
        self.by_version = {version: dict(state)}
        self.version = version

    def ack(self, changes: dict[str, Any], version: int) -> None:
        self.state = {**self.state, **changes}
        self.version = version
        self.by_version[version] = dict(self.state)


def _prepare_session(host: SessionHost, n: int) -> tuple[str, Reference]:
    state = {"config": {"user": f"user-{n}", "style": "watercolour", "steps": 20}, "counter": 0,
             "notes": ["draft", "review"], "profile": {"tier": "standard", "quota": 100}}
    info = host.create(state, timeout=30.0)
    sid = info["id"]
    ref = Reference(state, info["version"])
    result = host.work(sid, "render", 3, timeout=30.0)
    ref.ack({JOB_PREFIX + "render": {"items": 3, "done": 3, "outputs": [job_output("render", i) for i in range(3)]}},
            result["version"])
    for _ in range(3):
        r = host.update(sid, incr={"counter": 1}, timeout=30.0)
        ref.ack({"counter": ref.state["counter"] + 1}, r["version"])
    got = host.get(sid, timeout=30.0)["state"]
    if got != ref.state:
        raise RuntimeError(f"session {sid} disagrees with the runner's reference before any fault: "
                           f"{diff_fields(ref.state, got)}")
    return sid, ref


def session_state_corruption(ctx: RunnerContext) -> None:
    p = ctx.params
    kind = KINDS.get(str(p["state_corruption_type"]))
    if kind is None:
        raise ValueError(f"state_corruption_type must be one of {sorted(KINDS)}, got {p['state_corruption_type']!r}")
    causes = list(p["corruption_causes"])
    if not causes or any(c not in CAUSES for c in causes):
        raise ValueError(f"corruption_causes must name some of {CAUSES}, got {causes}")
    per_cause = int(p["injections_per_cause"])
    delays = [float(d) for d in p.get("probe_delay_s", [0.0, 1.0])]
    probe_ops = int(p.get("probe_ops", 3))
    window = float(p.get("detection_window_s", 5.0))
    snapshot_causes = set(p.get("snapshot_lost_with", ["storage_failure"]))
    rec = ctx.recorder
    rec.note("corruption_setup", {"kind": kind, "probe_delay_s": delays, "probe_ops": probe_ops,
                                  "snapshot_lost_with": sorted(snapshot_causes)})
    n = 0
    with session_host(ctx) as host:
        for cause in causes:
            for i in range(per_cause):
                delay = delays[n % len(delays)]
                _one(ctx, host, n, kind, cause, cause in snapshot_causes, delay, probe_ops, window,
                     {"cause": cause, "injection": i, "probe_delay_s": delay})
                n += 1


def _one(ctx: RunnerContext, host: SessionHost, n: int, kind: str, cause: str, snapshot_too: bool, delay: float,
         probe_ops: int, window: float, labels: dict[str, Any]) -> None:
    rec = ctx.recorder
    sid, ref = _prepare_session(host, n)
    client = host.client(host.slot_of(sid))
    acked_version = ref.version  # acknowledged when the damage is done
    t_inject = time.monotonic()
    done = client.request("fault.session_corrupt", {"id": sid, "kind": kind, "cause": cause,
                                                    "snapshot_too": snapshot_too}, timeout=10.0)
    labels = {**labels, "damage": done["detail"][:120]}
    if delay:
        time.sleep(delay)
    on_corrupt = 0
    detected_at: Union[float, None] = None
    how = ""
    for k in range(probe_ops):
        op = ("get", "update", "get")[k % 3]
        try:
            if op == "get":
                got = client.request("session.get", {"id": sid}, timeout=10.0)
                served_corrupt = got["state"] != ref.state
            else:
                expected = {**ref.state, "counter": ref.state["counter"] + 1}
                got = client.request("session.update", {"id": sid, "incr": {"counter": 1},
                                                        "op_id": uuid.uuid4().hex}, timeout=10.0)
                served_corrupt = got["checksum"] != checksum(expected)
                if not served_corrupt:
                    ref.ack({"counter": expected["counter"]}, got["version"])
        except WorkerError as exc:
            if exc.code != ErrorCode.SESSION_CORRUPT:
                raise
            if detected_at is None:
                detected_at, how = time.monotonic(), "SESSION_CORRUPT answer"
            continue
        if served_corrupt:
            on_corrupt += 1  # a result computed from the corrupt state: nothing refused it
    deadline = t_inject + window
    event = _event(host, sid, t_inject)
    while event is None and detected_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
        event = _event(host, sid, t_inject)
    if event is not None and (detected_at is None or float(event["t_mono"]) < detected_at):
        detected_at, how = float(event["t_mono"]), f"worker {event.get('detected_by', '?')}"
    rec.record("operation_on_corrupt_state_count", float(on_corrupt), "count", **labels)
    rec.record("state_corruption_detected", 1.0 if detected_at is not None else 0.0, "ratio", **labels,
               detected_by=how or "none")
    if detected_at is not None:
        rec.record("state_corruption_detection_s", detected_at - t_inject, "s", **labels, detected_by=how)
    ok, read_at, detail = _recover(host, sid, ref, t_inject + window + 10.0)
    rec.record("state_restored_consistent_ok", 1.0 if ok else 0.0, "ratio", **labels, detail=detail[:200],
               host_repairs=len([r for r in host.repairs if r[0] == sid]))
    if ok and read_at is not None and detected_at is not None:
        installed = _installed_at(host, sid, acked_version, t_inject)
        recovered_at = installed if installed is not None and installed <= read_at else read_at
        rec.record("state_recovery_s", max(0.0, recovered_at - detected_at), "s", **labels,
                   measured_to="consistent state installed" if recovered_at != read_at else "first consistent read")
    try:
        host.close_session(sid, timeout=10.0)
    except WorkerError as exc:
        ctx.log.warning("closing %s after the injection failed: %s", sid, exc)


def _event(host: SessionHost, sid: str, since: float) -> Union[dict[str, Any], None]:
    """The worker's first "corrupt" event for ``sid`` since ``since`` (t_mono: when it detected)."""
    events = [e for e in host.corrupt_events if e.get("session") == sid and float(e.get("t_mono", 0.0)) >= since]
    return min(events, key=lambda e: float(e["t_mono"])) if events else None


def _installed_at(host: SessionHost, sid: str, version: int, since: float) -> Union[float, None]:
    """When a consistent state went back in: the worker's rollback to the acknowledged version (its event),
    or the host's restore from its journal."""
    times = [float(e["t_mono"]) for e in host.corrupt_events
             if e.get("session") == sid and float(e["t_mono"]) >= since and e.get("rolled_back")
             and e.get("version") == version]
    times += [t for s, _why, t in host.repairs if s == sid and t >= since]
    return min(times) if times else None


def _recover(host: SessionHost, sid: str, ref: Reference, deadline: float) -> tuple[bool, Union[float, None], str]:
    """Read the session through the host until it is consistent; (ok, when, what was found)."""
    detail = ""
    while time.monotonic() < deadline:
        try:
            info = host.get(sid, timeout=10.0)
        except WorkerError as exc:
            detail = f"{exc.code}: {exc.message[:120]}"
            time.sleep(0.1)
            continue
        at = time.monotonic()
        state = info["state"]
        if state == ref.state:
            how = "reconstruction (every acknowledged operation)"
        else:
            rolled = [e for e in host.corrupt_events if e.get("session") == sid and e.get("rolled_back_versions")]
            earlier = ref.by_version.get(info["version"])
            if not (rolled and earlier is not None and state == earlier):
                detail = (f"state differs from the reference at version {info['version']}: "
                          f"{diff_fields(ref.state, state)}")
                time.sleep(0.1)
                continue
            how = f"rolled back to version {info['version']} (reported)"
        try:
            host.update(sid, incr={"counter": 1}, timeout=10.0)  # usable again
        except WorkerError as exc:
            return False, None, f"{how}, but not usable: {exc.code}"
        return True, at, how
    return False, None, detail or "never read back"


RUNNERS = {"processing.session_state_corruption": (CORRUPTION_METRICS, session_state_corruption)}
