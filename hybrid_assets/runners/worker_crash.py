"""Spec 3.4 worker_process_crash: a worker holding sessions crashes; detection, restart, state, results.

A SessionHost of its own (workers/host/sessions.py) keeps ``sessions_per_worker`` sessions on each of
``workers`` workers (cascade: 2), each with a configuration, the model it uses pinned on the worker
(``model``, loaded on every replacement by the host's prepare hook) and a completed job. The runner
keeps its own reference of every session: each change it got acknowledged, applied. Per injection the
crash is armed in the worker (``fault.session_crash``: the catalog's injector sigsegv -> a real NULL
read, protocol_crash -> an unhandled exception escaping the worker, sigkill -> SIGKILL to itself as the
OOM killer sends) at the case's timing, then triggered while the other sessions of the worker take
back-to-back counter updates:
- during_initialization: the next ``session.create`` on that worker (resumed on the replacement);
- during_processing: a ``session.work`` job on a session, after ``after_items`` items were committed
  and reported (resumed on the replacement from the last acknowledged item);
- during_cleanup: ``session.close`` of a session, after it freed its scratch memory (policy: close is not
  idempotent, so it fails with WORKER_LOST and the session is restored; the runner closes it again).
Frequency: single (each crash after the replacement was up ``stable_after_s``: a fresh failure),
repeated (the replacement is armed again as soon as its sessions are restored: a crash loop the pool
backs off from), cascade (the same armed fault in every worker, a shared cause; the second worker is
triggered as soon as the first one's loss is detected, while it recovers).

Per crash: crash_detection_s (the worker's fault event, sent just before it dies, to the pool's "lost"
event), worker_restart_s (the crash to the replacement ready with every session restored, then a probe
answered; the elapsed time at the end of observation when it never is), session_state_restored_ok (every
session of the worker equals the reference field by field, its model pinned on the replacement; for an
initialization crash the new session holds the state it was requested with), partial_results_lost_count
(job outputs acknowledged before the crash, reported ones included, missing after), lost_requests_count
(the runner's request journal: accepted and never ended), leaked_resource_count (the fault experiment's
resource snapshot against the one before the first crash).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Union

from hybrid_assets.faults.journal import RequestJournal
from hybrid_assets.faults.resources import snapshot
from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.session_support import diff_fields, model_prepare, session_host
from workers.host.errors import WorkerError
from workers.host.sessions import Recovery, SessionHost
from workers.protocol.messages import Event
from workers.protocol.ops_sessions import JOB_PREFIX, job_output

CRASH_METRICS = frozenset({
    "crash_detection_s", "worker_restart_s", "session_state_restored_ok", "partial_results_lost_count",
    "lost_requests_count", "leaked_resource_count",
})
INJECTOR_MODES = {"sigsegv": "sigsegv", "protocol_crash": "exception", "sigkill": "sigkill"}
TIMING_PHASES = {"during_initialization": "initialization", "during_processing": "processing",
                 "during_cleanup": "cleanup"}


@dataclass
class Tracked:
    """The runner's reference for one session: every acknowledged change applied."""

    id: str
    slot: int
    state: dict[str, Any]
    counter_errors: int = 0  # counter updates that ended in an error: their effect is unknown


@dataclass
class Crash:
    slot: int
    t_trigger: float
    outcome: str = ""
    reported: dict[int, str] = field(default_factory=dict)  # processing: item -> output reported before the loss
    job: str = ""  # processing: the job that crashed
    victim: Union[Tracked, None] = None  # processing, cleanup: the session the crash hit
    new_session: Union[Tracked, None] = None  # initialization: the session the crashed create made


def _job(name: str, items: int, seed: str = "") -> dict[str, Any]:
    return {"items": items, "done": items, "outputs": [job_output(name, i, seed) for i in range(items)]}


class CrashCase:
    def __init__(self, ctx: RunnerContext, host: SessionHost, model: Union[str, None]) -> None:
        p = ctx.params
        self.ctx, self.host, self.model = ctx, host, model
        self.mode = INJECTOR_MODES[p["injector"]]
        self.phase = TIMING_PHASES[p["crash_timing"]]
        self.items = int(p.get("job_items", 6))
        self.item_ms = float(p.get("item_ms", 20.0))
        self.after_items = int(p.get("after_items", 2))
        self.observe_s = float(p.get("observe_s", 30.0))
        self.sessions: list[Tracked] = []
        self.seq = 0

    # ---- sessions --------------------------------------------------------------------------------
    def open(self, slot: int) -> Tracked:
        self.seq += 1
        state = {"config": {"user": f"user-{self.seq}", "quality": "standard", "steps": 20, "seed": self.seq},
                 "requests": 0}
        info = self.host.create(state, model=self.model, slot=slot, timeout=self.observe_s)
        t = Tracked(info["id"], slot, dict(state))
        self.host.work(t.id, "warmup", 3, timeout=self.observe_s)
        t.state[JOB_PREFIX + "warmup"] = _job("warmup", 3)
        self.sessions.append(t)
        return t

    def on(self, slot: int) -> list[Tracked]:
        return [s for s in self.sessions if s.slot == slot]

    # ---- one crash ---------------------------------------------------------------------------------
    def arm(self, slot: int) -> None:
        """Armed for the slot's first session (processing, cleanup: the victim; the others keep taking
        updates), or the next session.create (initialization)."""
        client = self.host.client(slot, timeout=self.observe_s)
        target = None if self.phase == "initialization" else self.on(slot)[0].id
        client.request("fault.session_crash", {"phase": self.phase, "mode": self.mode, "session": target,
                                               "after_items": self.after_items}, timeout=10.0)

    def trigger(self, crash: Crash, journal: RequestJournal, k: int) -> None:
        seq = journal.accept()
        try:
            if self.phase == "initialization":
                self.seq += 1
                state = {"config": {"user": f"user-{self.seq}", "quality": "high", "steps": 30, "seed": self.seq},
                         "requests": 0}
                info = self.host.create(state, model=self.model, slot=crash.slot, timeout=self.observe_s)
                crash.new_session = Tracked(info["id"], crash.slot, dict(state))
                crash.outcome = "created" if info["state"] == state else f"created with {info['state']}"
            elif self.phase == "processing":
                victim = crash.victim = self.on(crash.slot)[0]
                job = crash.job = f"crash-{k}"

                def seen(ev: Event) -> None:
                    if ev.event == "progress" and self._before_loss(crash):
                        crash.reported[int(ev.data["step"]) - 1] = str(ev.data.get("message", ""))

                self.host.work(victim.id, job, self.items, item_ms=self.item_ms, on_event=seen,
                               timeout=self.observe_s)
                victim.state[JOB_PREFIX + job] = _job(job, self.items)
                crash.outcome = "job completed"
            else:
                victim = crash.victim = self.on(crash.slot)[0]
                self.host.close_session(victim.id, timeout=self.observe_s)
                crash.outcome = "closed"  # the close survived: the crash did not happen where armed
                self.sessions.remove(victim)
        except WorkerError as exc:
            journal.end(seq, exc.code)
            crash.outcome = f"{exc.code}: {exc.message[:160]}"
            return
        journal.end(seq)

    def _before_loss(self, crash: Crash) -> bool:
        return not any(r.slot == crash.slot and r.detected_at >= crash.t_trigger for r in self.host.recoveries)

    def load(self, slots: list[int], journal: RequestJournal, stop: threading.Event) -> list[threading.Thread]:
        """Back-to-back counter updates on every session of the crashing workers but the victim."""
        def run(t: Tracked) -> None:
            while not stop.is_set():
                seq = journal.accept()
                try:
                    self.host.update(t.id, incr={"requests": 1}, timeout=self.observe_s)
                except WorkerError as exc:
                    journal.end(seq, exc.code)
                    t.counter_errors += 1
                    time.sleep(0.05)
                else:
                    journal.end(seq)
                    t.state["requests"] += 1

        targets = [t for slot in slots for t in self.on(slot)[1:]]
        threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in targets]
        for th in threads:
            th.start()
        return threads

    # ---- judging what came back (facts, not verdicts) ----------------------------------------------
    def check_slot(self, crash: Crash) -> tuple[bool, int, list[str]]:
        """(every session of the slot as referenced, acknowledged outputs missing, what differs)."""
        problems: list[str] = []
        lost_outputs = 0
        tracked = self.on(crash.slot)
        if crash.new_session is not None:
            tracked = [*tracked, crash.new_session]
        for t in tracked:
            try:
                info = self.host.get(t.id, timeout=self.observe_s)
            except WorkerError as exc:
                problems.append(f"{t.id[:10]}: {exc.code}")
                lost_outputs += sum(len(v["outputs"]) for k, v in t.state.items() if k.startswith(JOB_PREFIX))
                continue
            state = info["state"]
            for key, job in t.state.items():
                if key.startswith(JOB_PREFIX):
                    got = state.get(key, {}).get("outputs", []) if isinstance(state.get(key), dict) else []
                    lost_outputs += sum(1 for i, out in enumerate(job["outputs"]) if i >= len(got) or got[i] != out)
            differs = diff_fields(t.state, state)
            if differs == ["requests"] and t.counter_errors:
                ok = t.state["requests"] <= state["requests"] <= t.state["requests"] + t.counter_errors
                differs = [] if ok else differs
            if differs:
                problems.append(f"{t.id[:10]}: {differs}")
        if crash.reported and crash.victim is not None and JOB_PREFIX + crash.job not in crash.victim.state:
            # The job did not complete: what it reported before the crash must still be there.
            final = self._outputs(crash.victim, crash.job)
            lost_outputs += sum(1 for i, out in crash.reported.items() if i >= len(final) or final[i] != out)
        if self.model is not None:
            listing = self.host.list(crash.slot)
            pinned = listing["totals"]["model_refs"].get(self.model, 0)
            if pinned != len(tracked):
                problems.append(f"model {self.model} pinned by {pinned} of {len(tracked)} sessions")
        if crash.new_session is not None:
            self.sessions.append(crash.new_session)
        return not problems, lost_outputs, problems

    def _outputs(self, t: Tracked, job: str) -> list[str]:
        try:
            state = self.host.get(t.id, timeout=self.observe_s)["state"]
        except WorkerError:
            return []
        rec = state.get(JOB_PREFIX + job)
        return list(rec["outputs"]) if isinstance(rec, dict) else []


def _recovery(host: SessionHost, slot: int, since: float) -> Union[Recovery, None]:
    return next((r for r in host.recoveries if r.slot == slot and r.detected_at >= since), None)


def _fault_time(host: SessionHost, slot: int, since: float) -> Union[float, None]:
    """When the armed fault fired in the slot's worker (its own event, on the shared monotonic clock)."""
    times = [float(e["t_mono"]) for e in host.fault_events
             if e.get("slot") == slot and float(e.get("t_mono", 0.0)) >= since]
    return min(times) if times else None


def worker_crash_recovery(ctx: RunnerContext) -> None:
    p = ctx.params
    for key, known in (("injector", INJECTOR_MODES), ("crash_timing", TIMING_PHASES)):
        if p.get(key) not in known:
            raise ValueError(f"{key} must be one of {sorted(known)}, got {p.get(key)!r}")
    frequency = str(p["crash_frequency"])
    if frequency not in ("single_crash", "repeated_crashes", "cascade_crashes"):
        raise ValueError(f"unknown crash_frequency {frequency!r}")
    injections = int(p["injections"])
    workers = int(p.get("workers", 2 if frequency == "cascade_crashes" else 1))
    stable_s = float(p.get("stable_after_s", 1.0))
    model_param = p.get("model", "synthetic-1m")
    model, prepare = model_prepare(ctx, model_param) if model_param else (None, None)
    rec = ctx.recorder
    rec.note("crash_mode", {"injector": p["injector"], "mode": INJECTOR_MODES[p["injector"]],
                            "phase": TIMING_PHASES[p["crash_timing"]], "workers": workers, "model": model})
    with session_host(ctx, workers=workers, prepare=prepare, stable_after_s=stable_s,
                      max_restarts=injections * workers + 4) as host:
        case = CrashCase(ctx, host, model)
        for slot in range(workers):
            for _ in range(int(p.get("sessions_per_worker", 2))):
                case.open(slot)
        baseline = snapshot(host.pool)
        for k in range(injections):
            victims = list(range(workers)) if frequency == "cascade_crashes" else [k % workers]
            _inject(ctx, case, victims, k, baseline)
            if frequency != "repeated_crashes":
                _settle(host, victims, stable_s, case.observe_s)
        rec.note("recoveries", [{"slot": r.slot, "reason": r.reason, "restored": len(r.sessions_restored),
                                 "resumed": r.resumed, "failed": r.failed, "gave_up": r.gave_up}
                                for r in host.recoveries][:40])


def _settle(host: SessionHost, slots: list[int], stable_s: float, observe_s: float) -> None:
    """Wait until each slot's worker has been up ``stable_s``: the next crash is a fresh failure."""
    for slot in slots:
        try:
            client = host.client(slot, timeout=observe_s)
        except WorkerError:
            continue
        time.sleep(max(0.0, stable_s - (time.monotonic() - (client.ready_at or 0.0))) + 0.05)


def _inject(ctx: RunnerContext, case: CrashCase, victims: list[int], k: int, baseline: Any) -> None:
    host, rec = case.host, ctx.recorder
    journal = RequestJournal()
    stop = threading.Event()
    for slot in victims:
        case.arm(slot)
    load = case.load(victims, journal, stop)
    time.sleep(0.1)  # load flowing before the crash
    crashes: list[Crash] = []
    triggers: list[threading.Thread] = []
    for slot in victims:
        crash = Crash(slot, time.monotonic())
        crashes.append(crash)
        th = threading.Thread(target=case.trigger, args=(crash, journal, k), daemon=True)
        th.start()
        triggers.append(th)
        if slot != victims[-1]:  # cascade: the next worker goes down while this one recovers
            deadline = time.monotonic() + 5.0
            while _recovery(host, slot, crash.t_trigger) is None and time.monotonic() < deadline:
                time.sleep(0.005)
    for th in triggers:
        th.join(case.observe_s + 5.0)
    observed_until = time.monotonic()
    stop.set()
    for th in load:
        th.join(case.observe_s)
    for crash in crashes:
        labels = {"injection": k, "slot": crash.slot, "outcome": crash.outcome[:120]}
        r = _recovery(host, crash.slot, crash.t_trigger)
        t_crash = _fault_time(host, crash.slot, crash.t_trigger) or crash.t_trigger
        if r is None:
            rec.record("crash_detection_s", observed_until - t_crash, "s", **labels, detected=False)
            rec.record("worker_restart_s", observed_until - t_crash, "s", **labels, restarted=False)
            ctx.log.warning("injection %d on slot %d: no loss detected (%s)", k, crash.slot, crash.outcome)
        else:
            rec.record("crash_detection_s", r.detected_at - t_crash, "s", **labels, reason=r.reason[:80])
            restored = r.restored_at if r.restored_at is not None else observed_until
            probe_ok = _probe(case, crash.slot)
            rec.record("worker_restart_s", restored - t_crash, "s", **labels, restored=r.restored_at is not None,
                       probe_ok=probe_ok, sessions_restored=len(r.sessions_restored), resumed=len(r.resumed),
                       marked_failed=len(r.failed))
        ok, lost_outputs, problems = case.check_slot(crash)
        rec.record("session_state_restored_ok", 1.0 if ok else 0.0, "ratio", **labels,
                   problems="; ".join(problems)[:300])
        rec.record("partial_results_lost_count", float(lost_outputs), "count", **labels,
                   reported_before_crash=len(crash.reported))
        if case.phase == "cleanup" and crash.outcome.startswith("WORKER_LOST"):
            _finish_cleanup(case, crash)
    counts = journal.counts()
    for crash in crashes:
        rec.record("lost_requests_count", float(counts.lost), "count", injection=k, slot=crash.slot,
                   accepted=counts.accepted, results=counts.results, errors=dict(counts.errors_by_code))
    deadline = time.monotonic() + 5.0
    problems = snapshot(host.pool).compare(baseline)
    while problems and time.monotonic() < deadline:
        time.sleep(0.2)
        problems = snapshot(host.pool).compare(baseline)
    rec.record("leaked_resource_count", float(len(problems)), "count", injection=k, leaks="; ".join(problems)[:300])


def _probe(case: CrashCase, slot: int) -> bool:
    sessions = case.on(slot)
    try:
        if sessions:
            case.host.get(sessions[0].id, timeout=10.0)
        else:
            case.host.client(slot, timeout=10.0).request("ping", {"payload": "probe"}, timeout=5.0)
    except WorkerError:
        return False
    return True


def _finish_cleanup(case: CrashCase, crash: Crash) -> None:
    """The close that crashed failed explicitly and the session came back: close it again for real, and
    open another so the worker keeps its sessions for the next injection."""
    victim = case.on(crash.slot)[0]
    try:
        case.host.close_session(victim.id, timeout=case.observe_s)
    except WorkerError as exc:
        case.ctx.log.warning("second close of %s failed: %s", victim.id, exc)
        return
    case.sessions.remove(victim)
    case.open(crash.slot)


RUNNERS = {"processing.worker_crash_recovery": (CRASH_METRICS, worker_crash_recovery)}
