"""Device changes at run time: hot-plug detection (1.1), hot-swap stress (2.1) and rapid enumeration (2.1).

Devices are simulated in one worker (workers/runtime/simdevices.py), backed by the CPU; changes go
through the protocol like any host's would, and detection is timed at the host: the moment the
router's status listener sees the worker's change event, on the monotonic clock.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psutil

from hybrid_assets.load.driver import EventHook, RequestEvent, run_open_loop
from hybrid_assets.load.schedule import poisson_arrivals, uniform_arrivals
from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.device_load import BackgroundLoad, sim_specs, start_worker, wait_for
from workers.host.devices import DeviceRouter
from workers.host.errors import WorkerError

DETECTION_TIMEOUT_S = 10.0

HOT_SWAP_DETECTION_METRICS = frozenset({
    "hot_swap_detection_s", "integration_request_error", "new_device_serving_ok", "background_request_latency_s"})
HOT_SWAP_METRICS = frozenset({
    "change_detected", "change_detection_latency_s", "leaked_resource_count", "worker_crash_count", "change_count"})
RAPID_ENUMERATION_METRICS = frozenset({
    "discovery_latency_s", "discovery_error", "memory_growth_ratio", "cpu_utilization_ratio", "worker_rss_mb",
    "achieved_rate_rps", "discovered_device_count"})


def _seen_change(router: DeviceRouter, seq: int) -> bool:
    return any(data.get("seq") == seq for _, data in list(router.changes))


def _seen_at(router: DeviceRouter, seq: int) -> float:
    return next(t for t, data in list(router.changes) if data.get("seq") == seq)


def hot_swap_detection(ctx: RunnerContext) -> None:
    additions = int(ctx.params["device_additions"])
    clients = int(ctx.params.get("background_clients", 1))
    min_requests = int(ctx.params.get("min_background_requests", 120))
    rec = ctx.recorder
    with start_worker(ctx.worker_argv) as c:
        c.request("devices.configure", {"devices": sim_specs(1)})
        router = DeviceRouter(c, ["sim:gpu0"], fallback=None)
        c.request("device.run", {"device": "sim:gpu0", "iterations": 1}, timeout=120)  # torch imported
        with BackgroundLoad(router, clients) as bg:
            for i in range(1, additions + 1):
                spec = sim_specs(1, start=i)[0]
                t0 = time.monotonic()
                seq = c.request("devices.add", spec)["seq"]
                seen = wait_for(lambda s=seq: _seen_change(router, s), DETECTION_TIMEOUT_S)
                if seen is None:
                    rec.record("hot_swap_detection_s", time.monotonic() - t0, "s", device=spec["name"], missed=True)
                    rec.record("new_device_serving_ok", 0.0, "count", device=spec["name"])
                    continue
                rec.record("hot_swap_detection_s", _seen_at(router, seq) - t0, "s", device=spec["name"])
                name = spec["name"]
                served = wait_for(lambda n=name: (router.view(n) is not None and router.view(n).completed > 0), 5.0)
                rec.record("new_device_serving_ok", 1.0 if served else 0.0, "count", device=name)
            # enough background requests for the zero-failure claim to be judged (min_samples)
            wait_for(lambda: len(bg.entries()) >= min_requests, 60.0, interval=0.05)
        for e in bg.entries():
            if e.ended is None:
                rec.record("integration_request_error", 1.0, "count", seq=e.seq, error="never ended")
                continue
            rec.record("integration_request_error", 0.0 if e.error is None else 1.0, "count", seq=e.seq,
                       **({"error": e.error} if e.error else {}))
            if e.error is None:
                rec.record("background_request_latency_s", e.ended - e.submitted, "s", device=e.device)
        listed = [d["id"] for d in c.request("devices.list")["devices"] if d["kind"] == "simulated"]
        rec.note("devices_at_end", len(listed))


def _change_times(pattern: str, per_min: float, duration: float, seed: int) -> list[float]:
    if pattern == "random_changes":
        return poisson_arrivals(per_min / 60.0, duration, seed=seed)
    if pattern == "synchronized_changes":  # each tick adds one device and removes another
        return uniform_arrivals(per_min / 120.0, duration)
    if pattern == "burst_changes":  # each minute's changes at one instant
        times: list[float] = []
        minute = 0.0
        while minute < duration:
            share = min(1.0, (duration - minute) / 60.0)
            times += [minute] * max(1, round(per_min * share))
            minute += 60.0
        return times
    raise ValueError(f"unknown change_pattern {pattern!r}: random_changes, synchronized_changes, burst_changes")


def hot_swap(ctx: RunnerContext) -> None:
    pattern = str(ctx.params["change_pattern"])
    times = _change_times(pattern, float(ctx.params["changes_per_min"]), float(ctx.params["duration_s"]),
                          seed=int(ctx.params.get("seed", 7)))
    rng = random.Random(int(ctx.params.get("seed", 7)))
    rec = ctx.recorder
    initial = int(ctx.params.get("initial_devices", 6))
    with start_worker(ctx.worker_argv) as c:
        c.request("devices.configure", {"devices": sim_specs(initial, memory_mib=64)})
        router = DeviceRouter(c, [f"sim:gpu{i}" for i in range(initial)])
        c.request("device.run", {"device": "sim:gpu0", "iterations": 1}, timeout=120)
        next_index = initial
        changes: list[tuple[str, str, int, float]] = []  # (change, device, seq, sent at)

        def add() -> None:
            nonlocal next_index
            spec = sim_specs(1, memory_mib=64, start=next_index)[0]
            next_index += 1
            changes.append(("added", spec["name"], c.request("devices.add", spec)["seq"], t_sent))

        def remove() -> None:
            present = [n for n in router.order if n in router.views]
            victim = rng.choice(present)
            # hold memory on it first, so a removal that forgets its resources shows
            c.request("memory.allocate", {"device": victim, "sizes": [1 << 20], "free": False})
            changes.append(("removed", victim, c.request("devices.remove", {"name": victim})["seq"], t_sent))

        with BackgroundLoad(router, 1):
            t0 = time.monotonic()
            for offset in times:
                delay = t0 + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                t_sent = time.monotonic()
                count = len(router.views)
                if pattern == "synchronized_changes":
                    add()
                    t_sent = time.monotonic()
                    remove()
                elif count <= 2 or (count < 2 * initial and rng.random() < 0.5):
                    add()
                else:
                    remove()
            for change, device, seq, sent in changes:
                seen = wait_for(lambda s=seq: _seen_change(router, s), DETECTION_TIMEOUT_S)
                rec.record("change_detected", 1.0 if seen else 0.0, "count", change=change, device=device)
                if seen:
                    rec.record("change_detection_latency_s", _seen_at(router, seq) - sent, "s", change=change)
        listed = c.request("devices.list")
        present = {d["id"] for d in listed["devices"]}
        for change, device, _, _ in changes:
            if change == "removed":
                leaked = int(device in listed["memory_managers"]) + int(device in present)
                rec.record("leaked_resource_count", float(leaked), "count", device=device)
        alive = c.alive
        try:
            c.request("ping", timeout=5.0)
        except WorkerError:
            alive = False
        rec.record("worker_crash_count", 0.0 if alive else 1.0, "count")
        rec.record("change_count", float(len(changes)), "count", pattern=pattern)


def rapid_enumeration(ctx: RunnerContext) -> None:
    rate = float(ctx.params["request_rate_rps"])
    n = int(ctx.params["simulated_devices"])
    phase_s = float(ctx.params["phase_duration_s"])
    use_cache = bool(ctx.params.get("use_cache", True))
    cpu_every = float(ctx.params.get("cpu_sample_s", 1.0))  # short windows make the peak stricter, not laxer
    rec = ctx.recorder
    rec.note("use_cache", use_cache)
    with start_worker(ctx.worker_argv) as c:
        proc = psutil.Process(c.pid)
        for complexity in ctx.params["device_complexity"]:
            complex_caps = str(complexity).startswith("complex")
            specs = sim_specs(n, complex_caps=complex_caps)
            c.request("devices.configure", {"devices": specs})
            expected = {s["name"] for s in specs}
            t_cold = time.perf_counter()
            c.request("discover_devices", {}, timeout=120)  # the cold profile that later ones refresh
            rec.note(f"cold_discovery_s_{complexity}", time.perf_counter() - t_cold)
            rss0 = proc.memory_info().rss
            events: list[RequestEvent] = []
            hook = EventHook()
            hook.subscribe(events.append)

            def enumerate_once(seq: int, wanted: set[str] = expected) -> Any:
                r = c.request("discover_devices", {"use_cache": use_cache}, timeout=30.0)
                got = {d["id"] for d in r["devices"] if d["kind"] == "simulated"}
                if got != wanted:
                    raise ValueError(f"device list differs: {len(got ^ wanted)} devices")
                return r

            stop = threading.Event()
            cpu: list[float] = []

            def sample_cpu(stop: threading.Event = stop, cpu: list[float] = cpu) -> None:
                psutil.cpu_percent(None)
                while not stop.wait(cpu_every):
                    cpu.append(psutil.cpu_percent(None) / 100.0)

            sampler = threading.Thread(target=sample_cpu, daemon=True)
            sampler.start()
            wall = run_open_loop(enumerate_once, uniform_arrivals(rate, phase_s), hook, max_in_flight=64)
            stop.set()
            sampler.join()
            rss1 = proc.memory_info().rss
            for ev in events:
                rec.record("discovery_error", 0.0 if ev.ok else 1.0, "count", complexity=complexity,
                           **({"error": ev.error} if ev.error else {}))
                if ev.ok:
                    rec.record("discovery_latency_s", ev.latency, "s", complexity=complexity)
            for value in cpu:
                rec.record("cpu_utilization_ratio", value, "ratio", complexity=complexity)
            rec.record("memory_growth_ratio", (rss1 - rss0) / rss0, "ratio", complexity=complexity)
            rec.record("worker_rss_mb", rss1 / 2**20, "MiB", complexity=complexity)
            rec.record("achieved_rate_rps", len(events) / wall if wall > 0 else 0.0, "rps", complexity=complexity)
            rec.record("discovered_device_count", float(len(expected)), "count", complexity=complexity)


RUNNERS = {
    "device.hot_swap_detection": (HOT_SWAP_DETECTION_METRICS, hot_swap_detection),
    "device.hot_swap": (HOT_SWAP_METRICS, hot_swap),
    "device.rapid_enumeration": (RAPID_ENUMERATION_METRICS, rapid_enumeration),
}
