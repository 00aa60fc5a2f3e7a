"""Spec 4.1 health assessment: critical alert latency, automatic intervention, failure prediction.

Faults are injected into simulated devices the way their hardware would show them: sensor
readings past a critical limit (``devices.set_health``: temperature, power, an uncorrectable
memory error) or the device's memory nearly exhausted by real allocations (seen by the health
monitor at its next tick). Every time is taken by the host when its listener sees the event.
Failure prediction replays labelled synthetic traces (``device_traces``) and scores the
runtime's own ``prediction`` events against the labels.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.device_events import DeviceEvents, MiB, Seen, is_change, sim_specs
from hybrid_assets.runners.device_traces import generate_traces, score, summarise
from workers.host import WorkerClient, WorkerError
from workers.host.devices import DeviceRouter
from workers.protocol.messages import ErrorCode

ALERT_METRICS = frozenset({"alert_latency_s", "alert_missed", "spurious_alert_detected"})
INTERVENTION_METRICS = frozenset({"intervention_s", "intervention_missed", "flag_latency_s"})
PREDICTION_METRICS = frozenset({"failure_prediction_correct", "failure_prediction_false_alarm",
                                "failure_prediction_missed"})

KINDS = ("temperature", "ecc_uncorrectable", "power", "memory")
NOMINAL = {"temperature_c": 45.0, "power_w": 80.0, "ecc_uncorrectable": 0.0}
DEVICE_MEMORY = 64 * MiB


def _inject(client: WorkerClient, device: str, kind: str, rng: random.Random) -> Callable[[], None]:
    """Drive ``device`` past a critical limit; returns what makes it healthy again."""
    if kind == "memory":
        size = int(DEVICE_MEMORY * rng.uniform(0.96, 0.99))  # the monitor's limit is 95 % of the budget
        got = client.request("memory.allocate", {"device": device, "sizes": [size], "free": False},
                             timeout=60.0)["allocations"][0]
        if got.get("error"):
            raise RuntimeError(f"could not exhaust {device}'s memory: {got['error']}")
        return lambda: client.request("memory.free", {"device": device, "ids": [got["id"]]}, timeout=60.0) and None
    readings = {"temperature": {"temperature_c": round(rng.uniform(91.0, 99.0), 1)},
                "ecc_uncorrectable": {"ecc_uncorrectable": float(rng.randint(1, 3))},
                "power": {"power_w": round(rng.uniform(460.0, 600.0), 0)}}
    if kind not in readings:
        raise ValueError(f"unknown fault kind {kind!r}; known: {list(KINDS)}")
    client.request("devices.set_health", {"name": device, "readings": readings[kind]})
    return lambda: client.request("devices.set_health", {"name": device, "readings": dict(NOMINAL)}) and None


def _is_alert(device: str) -> Callable[[Seen], bool]:
    return lambda s: s.kind == "alert" and s.data.get("device") == device


def _setup(ctx: RunnerContext, client: WorkerClient) -> tuple[list[str], tuple[str, ...], float]:
    p = ctx.params
    n = int(p.get("devices", 5))
    kinds = tuple(p.get("kinds", KINDS))
    bad = sorted(set(kinds) - set(KINDS))
    if bad or not kinds:
        raise ValueError(f"kinds: expected some of {list(KINDS)}, got {list(kinds)}")
    interval = float(p.get("monitor_interval_s", 1.0))
    client.request("devices.configure", {"devices": sim_specs(n, memory_bytes=DEVICE_MEMORY)})
    for i in range(n):  # the first allocation imports torch in the worker: not part of any fault's latency
        client.request("memory.allocate", {"device": f"sim:gpu{i}", "sizes": [MiB]}, timeout=120.0)
    # Memory exhaustion is only seen by the monitor's ticks: it runs as the deployment would.
    client.request("devices.monitor", {"enabled": True, "interval_s": interval})
    return [f"sim:gpu{i}" for i in range(n)], kinds, interval


class _Healing:
    """Devices healed but maybe not restored yet. Waiting for a restore only when the device is
    next needed lets the other devices' faults go on meanwhile (a memory fault is only seen, and
    cleared, at a monitor tick), and starts each fault at a random phase of the monitor's cadence."""

    def __init__(self, events: DeviceEvents, interval: float) -> None:
        self.events, self.interval = events, interval
        self._pending: dict[str, int] = {}  # device -> event index when it was healed
        self.not_restored = 0

    def heal(self, device: str, heal: Callable[[], None]) -> None:
        self._pending[device] = self.events.mark()
        heal()

    def ready(self, device: str) -> bool:
        """Wait until ``device`` is restored (if it was healed); False if it never was."""
        mark = self._pending.pop(device, None)
        if mark is None:
            return True
        ok = self.events.wait_for(mark, is_change(device, "restored"), timeout=3 * self.interval + 5.0) is not None
        self.not_restored += not ok
        return ok


def critical_alerting(ctx: RunnerContext) -> None:
    p = ctx.params
    alerts, timeout = int(p["alerts"]), float(p.get("alert_timeout_s", 60.0))
    rec = ctx.recorder
    rng = random.Random(11)
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-worker").start() as client:
        events = DeviceEvents(client)
        devices, kinds, interval = _setup(ctx, client)
        healing = _Healing(events, interval)
        for i in range(alerts):
            device, kind = devices[(i + i // len(kinds)) % len(devices)], kinds[i % len(kinds)]
            healing.ready(device)
            if kind == "memory":
                # Memory is assessed at the monitor's ticks, and the wait for the last restore ended
                # at one: start at a random phase of the cadence, as a real exhaustion would.
                time.sleep(rng.uniform(0.0, interval))
            mark = events.mark()
            t0 = time.monotonic()  # before the condition is created: never under-reports
            heal = _inject(client, device, kind, rng)
            seen = events.wait_for(mark, _is_alert(device), timeout)
            if seen is None:
                rec.record("alert_missed", 1.0, "count", device=device, kind=kind, seq=i)
                ctx.log.warning("no alert within %g s for %s on %s", timeout, kind, device)
            else:
                rec.record("alert_missed", 0.0, "count", device=device, kind=kind, seq=i)
                rec.record("alert_latency_s", seen.t - t0, "s", device=device, kind=kind, seq=i)
            # Alerts since this fault began, other than its own: none is expected (each device alerts
            # only when it enters critical, and every other device is healed or healing).
            others = [s for s in events.since(mark, "alert") if s is not seen]
            rec.record("spurious_alert_detected", 1.0 if others else 0.0, "count", device=device, kind=kind, seq=i,
                       unexpected=[s.data.get("device") for s in others][:5])
            healing.heal(device, heal)
        for device in devices:
            healing.ready(device)
        client.request("devices.monitor", {"enabled": False})
        rec.note("devices_not_restored_after_healing", healing.not_restored)


def health_intervention(ctx: RunnerContext) -> None:
    p = ctx.params
    injections, timeout = int(p["injections"]), float(p.get("intervention_timeout_s", 60.0))
    rec = ctx.recorder
    rng = random.Random(13)
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-worker").start() as client:
        devices, kinds, interval = _setup(ctx, client)
        router = DeviceRouter(client, devices, fallback=None)  # the host side that must stop giving it work
        events = DeviceEvents(client)
        healing = _Healing(events, interval)
        for i in range(injections):
            device, kind = devices[(i + i // len(kinds)) % len(devices)], kinds[i % len(kinds)]
            healing.ready(device)
            labels = {"device": device, "kind": kind, "seq": i}
            mark = events.mark()
            t0 = time.monotonic()
            heal = _inject(client, device, kind, rng)
            flag = events.wait_for(mark, _is_alert(device), timeout)  # the assessment that flags it
            if flag is None:
                rec.record("intervention_missed", 1.0, "count", flagged=False, **labels)
                ctx.log.warning("%s on %s was never flagged within %g s", kind, device, timeout)
                healing.heal(device, heal)
                continue
            rec.record("flag_latency_s", flag.t - t0, "s", **labels)
            drained = events.wait_for(mark, is_change(device, "draining"), timeout)
            refused = _refuses_work(client, device)
            view = router.view(device)
            router_stopped = view is not None and view.state != "online" and device not in router.online()
            if drained is None or not refused or not router_stopped:
                rec.record("intervention_missed", 1.0, "count", drained=drained is not None, refused=refused,
                           router_stopped=router_stopped, **labels)
                ctx.log.warning("intervention %d on %s: drained=%s refused=%s router_stopped=%s", i, device,
                                drained is not None, refused, router_stopped)
            else:
                rec.record("intervention_missed", 0.0, "count", **labels)
                # From the flag to the host learning the device is drained (worker-side it is immediate).
                rec.record("intervention_s", max(0.0, drained.t - flag.t), "s", **labels)
            healing.heal(device, heal)
        for device in devices:
            healing.ready(device)
        client.request("devices.monitor", {"enabled": False})
        rec.note("devices_not_restored_after_healing", healing.not_restored)


def _refuses_work(client: WorkerClient, device: str) -> bool:
    try:
        client.request("device.run", {"device": device, "iterations": 1, "matrix_n": 8}, timeout=30.0)
    except WorkerError as exc:
        return exc.code == ErrorCode.DEVICE_UNAVAILABLE
    return False


def failure_prediction(ctx: RunnerContext) -> None:
    p = ctx.params
    playback = str(p.get("playback", "accelerated"))
    if playback not in ("accelerated", "realtime"):
        raise ValueError(f"playback must be 'accelerated' or 'realtime', got {playback!r}")
    period = 0.0 if playback == "accelerated" else float(p.get("reading_period_s", 30.0))
    traces = generate_traces(int(p["traces"]), float(p["failing_fraction"]), seed=int(p.get("seed", 2024)),
                             length=int(p.get("trace_length", 40)))
    rec = ctx.recorder
    scored = []
    final_correct = 0
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-worker").start() as client:
        events = DeviceEvents(client, kinds={"prediction", "alert"})
        for t in traces:
            device = f"trace{t.trace_id}"  # a new device per trace: no history carried over
            client.request("devices.add", {"name": device, "memory_bytes": DEVICE_MEMORY, "backing": "cpu"})
            mark = events.mark()
            predicted_at = None
            for k, reading in enumerate(t.readings):
                client.request("devices.set_health", {"name": device, "readings": reading})
                # The worker sends its prediction before answering, so it is here by now.
                if predicted_at is None and any(s.data.get("device") == device
                                                for s in events.since(mark, "prediction")):
                    predicted_at = k
                if period:
                    time.sleep(period)
            listed = client.request("devices.list")["devices"]
            final = next((bool(d.get("failure_predicted")) for d in listed if d["id"] == device), False)
            client.request("devices.remove", {"name": device})
            alerted = any(s.data.get("device") == device for s in events.since(mark, "alert"))
            s = score(t.failing, predicted_at is not None)
            final_correct += final == t.failing
            scored.append((t, s))
            labels: dict[str, Any] = {"trace": t.trace_id, "pattern": t.pattern,
                                      "label": "failing" if t.failing else "healthy", "readings": len(t.readings),
                                      "predicted_at": predicted_at, "predicted_at_end": final, "alerted": alerted}
            rec.record("failure_prediction_correct", 1.0 if s.correct else 0.0, "ratio", **labels)
            if t.failing:
                rec.record("failure_prediction_missed", 1.0 if s.missed else 0.0, "ratio", **labels)
            else:
                rec.record("failure_prediction_false_alarm", 1.0 if s.false_alarm else 0.0, "ratio", **labels)
    summary = summarise(scored)
    rec.note("prediction_summary", summary)
    # A prediction raised and later withdrawn (a spike that passed) still counts as an alarm above;
    # scored on the state at the last reading only, for comparison:
    rec.note("accuracy_on_final_state", round(final_correct / len(traces), 4))
    by_pattern: dict[str, list[int]] = {}
    for t, s in scored:
        by_pattern.setdefault(t.pattern, []).append(int(s.correct))
    rec.note("accuracy_by_pattern", {k: round(sum(v) / len(v), 3) for k, v in sorted(by_pattern.items())})
    ctx.log.info("failure prediction: %s", summary)


RUNNERS: dict[str, tuple[frozenset[str], Any]] = {
    "device.critical_alerting": (ALERT_METRICS, critical_alerting),
    "device.health_intervention": (INTERVENTION_METRICS, health_intervention),
    "device.failure_prediction": (PREDICTION_METRICS, failure_prediction),
}
