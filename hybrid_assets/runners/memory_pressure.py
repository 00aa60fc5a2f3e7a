"""Memory-pressure episodes (spec 1.4 and 3.2): the shared engine.

An episode holds one fresh worker whose device has a pressure-configured memory manager (a configured budget
on the CPU) with two real, evictable tensor caches: ``models`` (30 % of the budget in 8 models, unloaded from
DEGRADED as far as the degraded response needs, all in an emergency) and ``latents`` (5 %, evicted from WARNING).
A balloon of real tensors (memory the runtime does not own) drives the device's utilisation as the case
schedules it, one short request per tick, and each tick sends probes through the worker's work queue: an
``interactive`` one (downgraded in degraded mode), a ``critical`` one (always full size) and a ``background`` one
(refused in degraded mode). Every reply carries the device's state and is kept with the host's receipt time,
beside the ``status`` events drained after it, so the runners derive what the system did (cleanup, degraded
mode, emergency, recovery) from what reached the host, not from assumptions.

The runners live in memory_pressure_workflows.py (1.4) and memory_pressure_failures.py (3.2).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Union

from hybrid_assets.runners import RunnerContext
from workers.host import RequestTimeout, WorkerClient, WorkerError, WorkerLost

MiB = 1 << 20
LEVELS = {"NORMAL": 0, "WARNING": 1, "DEGRADED": 2, "EMERGENCY": 3}
TICK_S = 0.02  # minimum tick period: keeps a closed loop from hammering a shared 2-core machine
REQUEST_TIMEOUT_S = 30.0
PROBE_WORK = 4 * MiB  # a tiny model's working set: 1.6 % of the smoke budget
PROBE_MIN_WORK = MiB
# Models dominate an image-generation worker's memory; latents are small and cheap to rebuild.
MODEL_CACHE_SHARE, MODEL_ENTRIES = 0.30, 8
LATENT_CACHE_SHARE, LATENT_ENTRIES = 0.05, 10
BUDGET_MIB_BY_MODEL = {"tiny": 256, "small": 1024, "full": 4096}
SERVED = ("ok", "downgraded")


@dataclass
class Reply:
    t: float  # host monotonic time the reply (or failure) arrived
    op: str
    target: float  # the utilisation the runner was driving at the time (nan when not driving)
    phase: str
    state: Union[dict[str, Any], None]
    events: list[dict[str, Any]]  # status events drained right after this reply (they travel before it)

    @property
    def level(self) -> Union[str, None]:
        return None if self.state is None else self.state["level"]

    @property
    def evictions(self) -> int:
        return 0 if self.state is None else sum(c["evictions"] for c in self.state["caches"].values())


@dataclass
class ProbeRecord:
    t: float
    kind: str
    phase: str
    target: float
    latency_s: float  # host round trip
    status: str  # ok | downgraded | refused | failed | error (worker error) | lost (timeout, worker lost)
    reason: Union[str, None]
    level: Union[str, None]  # the device's level in the probe's reply (the last known one when it failed)
    error: Union[str, None] = None


@dataclass
class Episode:
    ctx: RunnerContext
    budget: int
    device: str = "cpu"
    client: Union[WorkerClient, None] = None
    replies: list[Reply] = field(default_factory=list)
    probes: list[ProbeRecord] = field(default_factory=list)
    sent: int = 0
    lost: int = 0  # requests accepted and never answered (timeout, worker lost)

    # ---- worker --------------------------------------------------------------------------------------------
    def start(self) -> Episode:
        self.client = WorkerClient(self.ctx.worker_argv, name=f"pressure-{self.ctx.case_id}").start()
        self.call("pressure.configure", {"budget_bytes": self.budget})
        return self

    def close(self) -> None:
        if self.client is not None:
            self.client.shutdown()

    def healthy(self) -> bool:
        """Alive, answering a ping, heartbeats current: the opposite of crashed, killed or hung."""
        c = self.client
        if c is None or not c.alive:
            return False
        try:
            c.request("ping", timeout=5.0)
        except WorkerError:
            return False
        hello = c.hello
        interval = hello.capabilities.heartbeat_interval_ms / 1e3 if hello else 1.0
        # a worker up for less than two intervals may not have sent one yet
        fresh = c.last_heartbeat is not None and time.monotonic() - c.last_heartbeat < 3 * interval + 1.0
        return fresh or (c.ready_at is not None and time.monotonic() - c.ready_at < 2 * interval)

    # ---- requests ------------------------------------------------------------------------------------------
    def call(self, op: str, params: dict[str, Any], target: float = math.nan,
             phase: str = "") -> Union[dict[str, Any], WorkerError]:
        """One request; the reply (or the failure) is kept with its host time and the events it carried."""
        assert self.client is not None
        self.sent += 1
        try:
            result: Union[dict[str, Any], WorkerError] = self.client.request(
                op, {"device": self.device, **params}, timeout=REQUEST_TIMEOUT_S)
        except (WorkerLost, RequestTimeout) as exc:
            self.lost += 1
            result = exc
        except WorkerError as exc:  # an explicit error: answered, not lost
            result = exc
        events = []
        while self.client.status_events:
            ev = self.client.status_events.popleft()
            if ev.data.get("domain") == "memory":
                events.append(dict(ev.data))
        state = result.get("state") if isinstance(result, dict) else None
        self.replies.append(Reply(time.monotonic(), op, target, phase, state, events))
        return result

    def probe(self, kind: str, target: float, phase: str) -> ProbeRecord:
        last_level = next((r.level for r in reversed(self.replies) if r.state is not None), None)
        t0 = time.perf_counter()
        r = self.call("pressure.probe", {"kind": kind, "work_bytes": PROBE_WORK, "min_work_bytes": PROBE_MIN_WORK},
                      target, phase)
        latency = time.perf_counter() - t0
        if isinstance(r, WorkerError):
            status = "lost" if isinstance(r, (WorkerLost, RequestTimeout)) else "error"
            rec = ProbeRecord(time.monotonic(), kind, phase, target, latency, status, r.code, last_level, str(r))
        else:
            status = r["status"] if r["checksum_ok"] or r["status"] == "refused" else "failed"
            rec = ProbeRecord(time.monotonic(), kind, phase, target, latency, status, r["reason"],
                              r["state"]["level"], r["error"])
        self.probes.append(rec)
        return rec

    def balloon(self, target: float, phase: str, **params: Any) -> Union[dict[str, Any], WorkerError]:
        return self.call("pressure.balloon", params, target, phase)

    def tick(self, phase: str, target: float, balloon: Union[dict[str, Any], None],
             kinds: tuple[str, ...] = ("interactive", "critical", "background")) -> list[ProbeRecord]:
        """One step of the schedule: move the balloon (when given), then one probe of each kind."""
        start = time.monotonic()
        if balloon is not None:
            self.balloon(target, phase, **balloon)
        out = [self.probe(kind, target, phase) for kind in kinds]
        time.sleep(max(0.0, TICK_S - (time.monotonic() - start)))
        return out

    # ---- set-up -----------------------------------------------------------------------------------------------
    def setup(self, baseline: float, phase: str = "setup") -> None:
        """Empty balloons and caches, warm both caches again (the workload's models and latents), then hold the
        base balloon at ``baseline`` utilisation."""
        self.call("pressure.reset", {}, phase=phase)
        for cache, share, entries in (("models", MODEL_CACHE_SHARE, MODEL_ENTRIES),
                                      ("latents", LATENT_CACHE_SHARE, LATENT_ENTRIES)):
            r = self.call("pressure.cache_fill", {"cache": cache, "entries": entries,
                                                  "entry_bytes": int(self.budget * share / entries)}, phase=phase)
            if isinstance(r, WorkerError) or r["refused"]:
                why = r if isinstance(r, WorkerError) else r["refused"]
                raise RuntimeError(f"could not warm the {cache} cache: {why}")
        self.balloon(baseline, phase, tag="base", target_utilisation=baseline)

    def own_bytes_before(self, t: float) -> Union[int, None]:
        states = [r.state for r in self.replies if r.t < t and r.state is not None]
        return states[-1]["own_bytes"] if states else None

    def events_between(self, t0: float, t1: float) -> list[tuple[float, dict[str, Any]]]:
        return [(r.t, e) for r in self.replies if t0 <= r.t < t1 for e in r.events]


def budget_bytes(ctx: RunnerContext) -> int:
    """The case's memory_limit_mb (3.2) or budget_mib, else a budget by model size (1.4)."""
    p = ctx.params
    for key in ("memory_limit_mb", "budget_mib"):
        if p.get(key):
            return int(float(p[key]) * MiB)
    return BUDGET_MIB_BY_MODEL.get(str(p.get("model", "tiny")), 4096) * MiB


def names_level(event: dict[str, Any], level: str) -> bool:
    if event.get("kind") == "level":
        return event.get("level") == level
    return level == "DEGRADED" and event.get("response") == "degraded_mode"


def is_action(event: dict[str, Any]) -> bool:
    """A cleanup or load-reduction action: cache freed, or degraded mode (non-critical work refused)."""
    if event.get("kind") == "response":
        return event.get("response") == "degraded_mode" or event.get("freed_bytes", 0) > 0
    return event.get("level") in ("DEGRADED", "EMERGENCY")


def record_status_communication(ep: Episode, t0: float, t1: float) -> None:
    """Per mode change seen in a reply's state (and per pressure response counted there), 1 when no status event
    naming it came with that reply; per refused or downgraded probe, 1 when it carried no reason code."""
    rec = ep.ctx.recorder
    prev: Union[Reply, None] = None
    for r in ep.replies:
        if r.state is None:
            continue
        if prev is not None and t0 <= r.t < t1:
            if r.level != prev.level:
                named = any(e.get("kind") == "level" and e.get("level") == r.level for e in r.events)
                rec.record("status_communication_missing_detected", 0.0 if named else 1.0, "count",
                           change=f"{prev.level}->{r.level}")
            told = sum(1 for e in r.events if e.get("kind") == "response")
            for i in range(r.state["responses"] - prev.state["responses"]):  # type: ignore[index]
                rec.record("status_communication_missing_detected", 0.0 if i < told else 1.0, "count",
                           change="response")
        prev = r
    for pr in ep.probes:
        if t0 <= pr.t < t1 and pr.status in ("refused", "downgraded"):
            rec.record("status_communication_missing_detected", 0.0 if pr.reason else 1.0, "count",
                       change=f"probe_{pr.status}")


def record_usage(ep: Episode, t0: float, t1: float, **labels: Any) -> None:
    for r in ep.replies:
        if r.state is not None and t0 <= r.t < t1:
            ep.ctx.recorder.record("memory_usage_ratio", r.state["utilisation"], "ratio", phase=r.phase, **labels)


def wait_recovered(ep: Episode, bound_s: float, window_s: float, phase: str = "recovery") -> tuple[bool, float]:
    """After a release: tick until the device is out of degraded mode (NORMAL or WARNING) and a background probe,
    refused or downgraded while degraded, succeeds in full. Watches ``window_s``, and past it keeps watching up to
    the line's own bound (plus a second) so an unrecovered system is recorded past the bound, never inside it."""
    t_rel = time.monotonic()
    limit = max(window_s, bound_s + 1.0)
    while time.monotonic() - t_rel < limit:
        bg = ep.tick(phase, math.nan, None, kinds=("critical", "background"))[-1]
        if bg.status == "ok" and bg.level is not None and LEVELS[bg.level] < LEVELS["DEGRADED"]:
            return True, time.monotonic() - t_rel
        if ep.client is None or not ep.client.alive:
            break
    return False, time.monotonic() - t_rel


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
