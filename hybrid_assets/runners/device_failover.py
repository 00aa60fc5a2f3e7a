"""Device failures (3.1): the primary disconnected while idle, running an inference or loading a
model; cascading failures of 25-90 % of 20 devices.

The devices are simulated in one worker; the disconnection is the runtime's own (hardware, driver
or power failure: workers/runtime/simdevices.py), so detection, failover, promotion of a secondary,
CPU-only degradation and reintegration are the runtime's and the host router's real behaviour.
Every request is journalled; a request that never ends is lost.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Union

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.device_load import BackgroundLoad, MiB, routed_or_error, sim_specs, start_worker, wait_for
from workers.host.client import WorkerClient
from workers.host.devices import DeviceRouter, RoutedResult
from workers.host.errors import WorkerError

FAILOVER_METRICS = frozenset({
    "detection_s", "failover_initiation_s", "recovery_s", "secondary_request_error", "lost_requests_count",
    "in_flight_result_missing_count", "secondary_promoted_ok", "idle_while_backlogged_count",
    "device_reintegrated_ok", "reintegration_s", "leaked_resource_count"})
CASCADE_METRICS = frozenset({
    "detection_s", "basic_probe_ok", "lost_requests_count", "dispatch_to_failed_device_count",
    "survivor_overload_failure_count", "status_mismatch_count", "unexplained_error_count",
    "remaining_capacity_ratio", "leaked_resource_count"})
LONG_INFERENCE = {"iterations": 400, "matrix_n": 256}  # ~0.3-1 s on one core: long enough to be hit
LONG_LOAD = {"workload": "load", "weights_bytes": 192 * MiB, "model": "primary-model"}
KNOWN_CODES = ("DEVICE_LOST", "DEVICE_UNAVAILABLE", "NO_WORKER_AVAILABLE", "DEADLINE_EXCEEDED")


def _wait_running(c: WorkerClient, device: str, timeout: float = 30.0) -> bool:
    def running() -> bool:
        return any(d["id"] == device and d["running"] for d in c.request("devices.list")["devices"])
    return wait_for(running, timeout, interval=0.002) is not None


def _leaks(c: WorkerClient, lost: list[str]) -> int:
    listed = c.request("devices.list")
    by_id = {d["id"]: d for d in listed["devices"]}
    return sum(int(n in listed["memory_managers"]) + len(by_id.get(n, {}).get("models", [])) for n in lost)


def _one_injection(ctx: RunnerContext, c: WorkerClient, n: int, timing: str, mode: str, k: int) -> None:
    rec = ctx.recorder
    names = [f"sim:gpu{i}" for i in range(n)]
    c.request("devices.configure", {"devices": sim_specs(n)})
    router = DeviceRouter(c, names)
    primary = names[0]
    in_flight: list[Union[RoutedResult, WorkerError]] = []
    with BackgroundLoad(router, max(1, n - 2)) as bg:
        time.sleep(0.2)  # background requests flowing on every device
        worker: Union[threading.Thread, None] = None
        if timing != "during_idle":
            work = LONG_INFERENCE if timing == "during_inference" else LONG_LOAD
            worker = threading.Thread(target=lambda: in_flight.append(
                routed_or_error(router, dict(work), role="primary", timeout=60.0)))
            worker.start()
            _wait_running(c, primary)
        else:
            wait_for(lambda: not any(d["id"] == primary and (d["running"] or d["queued"])
                                     for d in c.request("devices.list")["devices"]), 10.0, interval=0.002)
        t_inj = time.monotonic()
        c.request("devices.disconnect", {"name": primary, "mode": mode})
        lost_at = wait_for(lambda: router.view(primary).lost_at is not None, 10.0)
        rec.record("detection_s", (router.view(primary).lost_at if lost_at else time.monotonic()) - t_inj, "s",
                   injection=k, missed=lost_at is None)
        # failover starts when work addressed to the primary goes to a secondary
        probe = routed_or_error(router, dict(LONG_INFERENCE, iterations=5), role="primary", timeout=30.0)
        moved = [t for t, dev, role in list(router.dispatches) if role == "primary" and t >= t_inj and dev != primary]
        rec.record("failover_initiation_s", (min(moved) if moved else time.monotonic()) - t_inj, "s", injection=k)
        promoted = any(old == primary and new is not None for _, old, new in router.promotions)
        served = isinstance(probe, RoutedResult) and probe.device == router.primary and probe.device != primary
        rec.record("secondary_promoted_ok", 1.0 if promoted and served else 0.0, "count", injection=k,
                   new_primary=str(router.primary))
        if worker is not None:
            worker.join(60.0)
            result = in_flight[0] if in_flight else None
            missing = not isinstance(result, RoutedResult)
            rec.record("in_flight_result_missing_count", 1.0 if missing else 0.0, "count", injection=k,
                       **({"error": getattr(result, "code", "never ended")} if missing else {}))
        rec.record("recovery_s", time.monotonic() - t_inj, "s", injection=k)
        # work conservation after the failover: no healthy device idle while another has a queue
        # (a device idle in this poll and the previous one while another had a queue in both)
        previous: Union[dict[str, dict[str, object]], None] = None
        for _ in range(11):
            devs = {d["id"]: d for d in c.request("devices.list")["devices"] if d["kind"] == "simulated"
                    and d["state"] == "online"}
            if previous is not None:
                both = [nm for nm in devs if nm in previous]
                idle = [nm for nm in both if not devs[nm]["running"] and not devs[nm]["queued"]
                        and not previous[nm]["running"] and not previous[nm]["queued"]]
                backlogged = [nm for nm in both if devs[nm]["queued"] and previous[nm]["queued"]]
                rec.record("idle_while_backlogged_count", float(len(idle) if backlogged else 0), "count",
                           injection=k)
            previous = devs
            time.sleep(0.03)
        rec.record("leaked_resource_count", float(_leaks(c, [primary])), "count", injection=k)
        t_back = time.monotonic()
        c.request("devices.reconnect", {"name": primary})
        before = router.view(primary).completed
        back = wait_for(lambda: router.view(primary).completed > before, 10.0)
        rec.record("device_reintegrated_ok", 1.0 if back else 0.0, "count", injection=k)
        if back:
            rec.record("reintegration_s", back - t_back, "s", injection=k)
    entries = bg.entries()
    rec.record("lost_requests_count", float(sum(1 for e in entries if e.ended is None)), "count", injection=k)
    for e in entries:
        if e.ended is None:
            continue
        if e.device != primary:  # served, or to be served, by a secondary
            rec.record("secondary_request_error", 0.0 if e.error is None else 1.0, "count", injection=k,
                       **({"error": e.error} if e.error else {}))


def disconnection_failover(ctx: RunnerContext) -> None:
    n = int(ctx.params.get("simulated_devices", 5))
    timing = str(ctx.params["disconnection_timing"])
    mode = str(ctx.params["disconnection_method"])
    if timing not in ("during_idle", "during_inference", "during_model_loading"):
        raise ValueError(f"unknown disconnection_timing {timing!r}")
    with start_worker(ctx.worker_argv) as c:
        c.request("device.run", {"device": "cpu", "iterations": 1}, timeout=120)  # torch imported
        for k in range(int(ctx.params["injections"])):
            _one_injection(ctx, c, n, timing, mode, k)


def cascading_failures(ctx: RunnerContext) -> None:
    n = int(ctx.params.get("simulated_devices", 20))
    levels = [int(p) for p in ctx.params["failure_percentages"]]
    gap = float(ctx.params.get("time_between_failures_s", 0)) * float(ctx.params.get("time_scale", 1.0))
    probes = int(ctx.params.get("probes_per_level", 10))
    rec = ctx.recorder
    with start_worker(ctx.worker_argv) as c:
        c.request("device.run", {"device": "cpu", "iterations": 1}, timeout=120)
        for run in range(int(ctx.params.get("runs", 1))):
            names = [f"sim:gpu{i}" for i in range(n)]
            c.request("devices.configure", {"devices": sim_specs(n, memory_mib=64)})
            router = DeviceRouter(c, names)
            failed: dict[str, float] = {}  # device -> injection time
            detected: set[str] = set()
            with BackgroundLoad(router, 2) as bg:
                time.sleep(0.1)
                for pct in sorted(levels):
                    target = math.ceil(n * pct / 100)
                    for name in names[len(failed):target]:  # the primary first, then secondaries in order
                        if gap and failed:
                            time.sleep(gap)
                        failed[name] = time.monotonic()
                        c.request("devices.disconnect", {"name": name, "mode": "hardware_disconnect"})
                    for name, t in failed.items():
                        if name in detected:
                            continue
                        detected.add(name)
                        seen = wait_for(lambda nm=name, r=router: r.view(nm).lost_at is not None, 5.0)
                        lost_at = router.view(name).lost_at if seen is not None else time.monotonic()
                        rec.record("detection_s", lost_at - t, "s", level=pct, run=run, missed=seen is None)
                    for _ in range(probes):
                        r = routed_or_error(router, dict(iterations=3, matrix_n=64), timeout=30.0)
                        ok = isinstance(r, RoutedResult)
                        rec.record("basic_probe_ok", 1.0 if ok else 0.0, "count", level=pct, run=run)
                        if not ok:
                            code = getattr(r, "code", "")
                            overload = code not in ("DEVICE_LOST",)
                            rec.record("survivor_overload_failure_count", 1.0 if overload else 0.0, "count",
                                       level=pct)
                            rec.record("unexplained_error_count", 0.0 if code in KNOWN_CODES and str(r) else 1.0,
                                       "count", level=pct)
                        else:
                            rec.record("survivor_overload_failure_count", 0.0, "count", level=pct)
                            rec.record("unexplained_error_count", 0.0, "count", level=pct)
                    # once the failure was detected (the router knew), nothing may go to the device
                    late = [(t, dev) for t, dev, _ in list(router.dispatches) if dev in failed
                            and router.view(dev) is not None and router.view(dev).lost_at is not None
                            and t > router.view(dev).lost_at]
                    rec.record("dispatch_to_failed_device_count", float(len(late)), "count", level=pct, run=run)
                    listed = {d["id"]: d["state"] for d in c.request("devices.list")["devices"]}
                    mismatch = sum(1 for nm in names if (listed.get(nm) == "online") == (nm in failed))
                    rec.record("status_mismatch_count", float(mismatch), "count", level=pct, run=run)
                    online = sum(1 for nm in names if listed.get(nm) == "online")
                    rec.record("remaining_capacity_ratio", online / n, "ratio", level=pct, run=run)
                    rec.record("leaked_resource_count", float(_leaks(c, list(failed))), "count", level=pct, run=run)
            entries = bg.entries()
            rec.record("lost_requests_count", float(sum(1 for e in entries if e.ended is None)), "count", run=run)
            rec.note(f"background_requests_run{run}", len(entries))
            rec.note(f"background_errors_run{run}", sorted({e.error for e in entries if e.error}))


RUNNERS = {
    "device.disconnection_failover": (FAILOVER_METRICS, disconnection_failover),
    "device.cascading_failures": (CASCADE_METRICS, cascading_failures),
}
