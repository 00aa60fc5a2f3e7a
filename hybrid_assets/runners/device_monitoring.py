"""Spec 4.1 device monitoring: update frequency of critical metrics, the monitor's overhead, and
the health assessment cadence.

Each runner uses a fresh worker of its own with the runtime's health monitor (``devices.monitor``)
at the case's interval; the host times every health event when its listener sees it. The
overhead runner pairs one reference workload with the monitor on and off, interleaved; until the
inference domain lands, the reference is a ``device.run`` matmul loop of comparable duration.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.device_events import DeviceEvents, Seen, sim_specs
from workers.host import WorkerClient

UPDATES_METRICS = frozenset({"critical_update_interval_s", "update_delivery_latency_s"})
OVERHEAD_METRICS = frozenset({"monitoring_overhead_ratio", "workload_monitored_s", "workload_unmonitored_s",
                              "monitor_tick_cost_s"})
CADENCE_METRICS = frozenset({"health_assessment_interval_s", "health_assessment_s"})

# What the monitor classes critical, per kind of device entry in a health event: utilisation,
# memory in use, temperature and errors (the case's list).
CRITICAL_METRICS = ("utilisation", "memory_utilisation", "temperature_c", "ecc_correctable", "ecc_uncorrectable")


def _intervals(ticks: list[Seen], keys: tuple[str, ...]) -> dict[tuple[str, str], list[float]]:
    """(device, metric) -> intervals between consecutive host arrivals of health events carrying it."""
    last: dict[tuple[str, str], float] = {}
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in ticks:
        for entry in s.data.get("devices", []):
            for key in keys:
                if key not in entry:
                    continue
                k = (str(entry["id"]), key)
                if k in last:
                    out[k].append(s.t - last[k])
                last[k] = s.t
    return out


def monitoring_updates(ctx: RunnerContext) -> None:
    p = ctx.params
    observe_s, interval = float(p["observe_s"]), float(p.get("monitor_interval_s", 1.0))
    n_sims = int(p.get("simulated_devices", 2))
    change_every_s = float(p.get("sensor_change_every_s", 2.5))
    rec = ctx.recorder
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-worker").start() as client:
        client.request("devices.configure", {"devices": sim_specs(n_sims)})
        events = DeviceEvents(client, kinds={"health"})
        start = events.mark()
        client.request("devices.monitor", {"enabled": True, "interval_s": interval})
        end = time.monotonic() + observe_s
        rng = random.Random(41)
        k = 0
        while time.monotonic() + change_every_s <= end and n_sims:
            # A sensor changes in the device layer; time until the host receives an update carrying it.
            device, value = f"sim:gpu{k % n_sims}", round(rng.uniform(50.0, 70.0), 3)
            mark = events.mark()
            t0 = time.monotonic()
            client.request("devices.set_health", {"name": device, "readings": {"temperature_c": value}})
            seen = events.wait_for(mark, lambda s, d=device, v=value: any(
                e.get("id") == d and e.get("temperature_c") == v for e in s.data.get("devices", [])),
                timeout=max(2 * interval, 1.0) + 1.0)
            if seen is not None:
                rec.record("update_delivery_latency_s", seen.t - t0, "s", device=device, reading="temperature_c")
            else:
                ctx.log.warning("temperature %.3f on %s never reached the host", value, device)
            k += 1
            time.sleep(max(0.0, min(end, t0 + change_every_s) - time.monotonic()))
        time.sleep(max(0.0, end - time.monotonic()))
        monitor = client.request("devices.monitor", {"enabled": False})
        ticks = events.since(start)
        found = _intervals(ticks, CRITICAL_METRICS)
        for (device, metric), values in sorted(found.items()):
            for v in values:
                rec.record("critical_update_interval_s", v, "s", device=device, reading=metric)
        missing = sorted({f"{e['id']}:{m}" for s in ticks for e in s.data.get("devices", [])
                          for m in CRITICAL_METRICS if m not in e and not (e["id"] == "cpu" and m.startswith("ecc"))})
        rec.note("critical_metrics_not_reported", missing)
        rec.note("monitor", monitor)
        rec.note("health_events", len(ticks))


def _calibrate(client: WorkerClient, work: dict[str, Any], target_s: float) -> dict[str, Any]:
    """The stand-in's iteration count for about ``target_s`` on this machine now: it is shared,
    and a fixed count takes 20x longer when other work competes for the cores."""
    client.request("device.run", {**work, "iterations": 5}, timeout=120.0)  # kernel set-up, first-use costs
    probe = 20
    t = client.request("device.run", {**work, "iterations": probe}, timeout=120.0)["run_s"]
    return {**work, "iterations": max(1, min(1_000_000, round(probe * target_s / max(t, 1e-6))))}


def monitoring_overhead(ctx: RunnerContext) -> None:
    p = ctx.params
    pairs, interval = int(p["pairs"]), float(p.get("monitor_interval_s", 1.0))
    target_s = float(p.get("stand_in_target_s", 0.5))
    work = {"device": str(p.get("stand_in_device", "cpu")), "workload": "inference",
            "matrix_n": int(p.get("stand_in_matrix_n", 512))}
    n_sims = int(p.get("simulated_devices", 4))
    rec = ctx.recorder
    rng = random.Random(7)
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-worker").start() as client:
        if n_sims:
            client.request("devices.configure", {"devices": sim_specs(n_sims)})
        events = DeviceEvents(client, kinds={"health"})
        start = events.mark()
        work = _calibrate(client, work, target_s)
        rec.note("reference_workload", f"device.run inference matmul stand-in {work} (about {target_s:g} s) for "
                 f"the case's {p.get('workload')!r} ({p.get('width_px')}x{p.get('height_px')}, {p.get('steps')} "
                 "steps) until the inference domain lands")
        for i in range(pairs):
            times: dict[bool, float] = {}
            ticks = 0
            for monitored in ((True, False) if i % 2 == 0 else (False, True)):
                client.request("devices.monitor", {"enabled": monitored, "interval_s": interval})
                if monitored:
                    # Enabling restarts the monitor's cadence: start the run at a random phase of it,
                    # so ticks fall into runs as often as they would in steady operation.
                    time.sleep(rng.uniform(0.0, interval))
                mark = events.mark()
                t0 = time.perf_counter()
                client.request("device.run", work, timeout=300.0)
                times[monitored] = time.perf_counter() - t0
                if monitored:
                    ticks = len(events.since(mark))
            rec.record("workload_monitored_s", times[True], "s", pair=i, ticks=ticks)
            rec.record("workload_unmonitored_s", times[False], "s", pair=i)
            rec.record("monitoring_overhead_ratio", (times[True] - times[False]) / times[False], "ratio", pair=i,
                       ticks=ticks, monitored_first=i % 2 == 0)
        monitor = client.request("devices.monitor", {"enabled": False})
        for s in events.since(start):
            rec.record("monitor_tick_cost_s", float(s.data.get("cost_ms", 0.0)) / 1e3, "s",
                       devices=len(s.data.get("devices", [])))
        rec.note("monitor_mean_cost_ms", monitor["mean_cost_ms"])
        rec.note("monitor_samples", monitor["samples"])
        if monitor["mean_cost_ms"] is not None:
            rec.note("monitor_cpu_share_estimate", monitor["mean_cost_ms"] / 1e3 / interval)


def health_assessment_cadence(ctx: RunnerContext) -> None:
    p = ctx.params
    observe_s, interval = float(p["observe_s"]), float(p.get("monitor_interval_s", 1.0))
    n_sims = int(p["simulated_devices"])
    rec = ctx.recorder
    with WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-worker").start() as client:
        if n_sims:
            client.request("devices.configure", {"devices": sim_specs(n_sims)})
        events = DeviceEvents(client, kinds={"health"})
        start = events.mark()
        client.request("devices.monitor", {"enabled": True, "interval_s": interval})
        time.sleep(observe_s)
        monitor = client.request("devices.monitor", {"enabled": False})
        ticks = events.since(start)
        per_device = _intervals(ticks, ("status",))  # every entry, real or simulated, carries its assessment
        for (device, _), values in sorted(per_device.items()):
            for v in values:
                rec.record("health_assessment_interval_s", v, "s", device=device,
                           kind="cpu" if device == "cpu" else "simulated")
        for s in ticks:
            rec.record("health_assessment_s", float(s.data.get("cost_ms", 0.0)) / 1e3, "s",
                       devices=len(s.data.get("devices", [])))
        seen_devices = {d for d, _ in per_device}
        rec.note("devices_assessed", len(seen_devices))
        rec.note("devices_expected", n_sims + 1)
        rec.note("monitor", monitor)
        if ticks:
            rec.note("mean_tick_cost_ms", statistics.fmean(float(s.data.get("cost_ms", 0.0)) for s in ticks))


RUNNERS: dict[str, tuple[frozenset[str], Any]] = {
    "device.monitoring_updates": (UPDATES_METRICS, monitoring_updates),
    "device.monitoring_overhead": (OVERHEAD_METRICS, monitoring_overhead),
    "device.health_assessment_cadence": (CADENCE_METRICS, health_assessment_cadence),
}
