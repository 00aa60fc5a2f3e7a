"""Device benchmark: discovery with 100 simulated devices, and the health monitor's overhead.

    python -m workers.bench.devices [--devices 100] [--reps 3] [--pairs 8] [--run-s 0.6] [--json PATH]

Discovery: ``discover_devices`` cold (every device probed) and cached (``use_cache``) with the
simulated devices configured, against the same two with none, interleaved. Monitoring: a
``device.run`` matmul loop of about ``--run-s`` with the health monitor on (at 1 s and at 0.1 s)
and off, paired and interleaved; the ratio per pair, its median, and the monitor's own reported
CPU cost per tick. The machine is shared and noisy: the medians of paired ratios are the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from workers.host import WorkerClient
from workers.host.command import bundled_worker_command

MiB = 1 << 20


def _sims(n: int) -> dict[str, Any]:
    return {"devices": [{"name": f"sim:bench{i}", "memory_bytes": 64 * MiB, "backing": "cpu",
                         "dtypes": ["float32", "bfloat16"]} for i in range(n)]}


def _timed(client: WorkerClient, op: str, params: dict[str, Any], timeout: float = 120.0) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = client.request(op, params, timeout=timeout)
    return time.perf_counter() - t0, result


def discovery(client: WorkerClient, devices: int, reps: int) -> dict[str, Any]:
    """Seconds per discovery, four ways, interleaved per repetition."""
    times: dict[str, list[float]] = {"none_cold": [], "none_cached": [], "sims_cold": [], "sims_cached": []}
    found = 0
    for _ in range(reps):
        client.request("devices.configure", {"devices": []})
        times["none_cold"].append(_timed(client, "discover_devices", {})[0])
        times["none_cached"].append(_timed(client, "discover_devices", {"use_cache": True})[0])
        client.request("devices.configure", _sims(devices))
        t, result = _timed(client, "discover_devices", {})
        times["sims_cold"].append(t)
        found = sum(1 for d in result["devices"] if d["kind"] == "simulated")
        times["sims_cached"].append(_timed(client, "discover_devices", {"use_cache": True})[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"devices": devices, "found": found, "reps": reps, "median_s": med,
            "cold_ratio_sims_to_none": med["sims_cold"] / med["none_cold"],
            "cached_ratio_sims_to_none": med["sims_cached"] / med["none_cached"]}


def _calibrate(client: WorkerClient, run_s: float) -> dict[str, Any]:
    work = {"device": "cpu", "workload": "inference", "matrix_n": 512}
    client.request("device.run", {**work, "iterations": 5}, timeout=120.0)
    t = statistics.median(client.request("device.run", {**work, "iterations": 20}, timeout=120.0)["run_s"]
                          for _ in range(3))
    return {**work, "iterations": max(1, round(20 * run_s / max(t, 1e-6)))}


def monitoring(client: WorkerClient, interval_s: float, pairs: int, work: dict[str, Any],
               rng: random.Random) -> dict[str, Any]:
    ratios, on, off = [], [], []
    for i in range(pairs):
        times: dict[bool, float] = {}
        for monitored in ((True, False) if i % 2 == 0 else (False, True)):
            client.request("devices.monitor", {"enabled": monitored, "interval_s": interval_s})
            if monitored:
                time.sleep(rng.uniform(0.0, interval_s))  # enabling restarts the cadence: a random phase
            times[monitored] = _timed(client, "device.run", work, timeout=300.0)[0]
        on.append(times[True])
        off.append(times[False])
        ratios.append((times[True] - times[False]) / times[False])
    state = client.request("devices.monitor", {"enabled": False, "interval_s": interval_s})
    return {"interval_s": interval_s, "pairs": pairs, "median_ratio": statistics.median(ratios),
            "mean_ratio": statistics.fmean(ratios), "ratios": ratios, "median_on_s": statistics.median(on),
            "median_off_s": statistics.median(off), "monitor_samples": state["samples"],
            "monitor_mean_cost_ms": state["mean_cost_ms"]}


def run(devices: int = 100, reps: int = 3, pairs: int = 8, run_s: float = 0.6, seed: int = 5) -> dict[str, Any]:
    rng = random.Random(seed)
    with WorkerClient(bundled_worker_command(), name="bench-devices").start() as client:
        out: dict[str, Any] = {"discovery": discovery(client, devices, reps)}
        work = _calibrate(client, run_s)  # the simulated devices stay configured: the monitor samples them all
        out["workload"] = work
        out["monitoring"] = [monitoring(client, interval, pairs, work, rng) for interval in (1.0, 0.1)]
    return out


def render(r: dict[str, Any]) -> str:
    d = r["discovery"]
    m = d["median_s"]
    lines = [f"discovery ({d['reps']} reps, medians; {d['found']} of {d['devices']} simulated devices found)",
             f"  none    cold {m['none_cold'] * 1e3:9.2f} ms   cached {m['none_cached'] * 1e3:9.2f} ms",
             f"  {d['devices']:<4}    cold {m['sims_cold'] * 1e3:9.2f} ms   cached {m['sims_cached'] * 1e3:9.2f} ms",
             f"  {d['devices']} / none: cold x{d['cold_ratio_sims_to_none']:.2f}, "
             f"cached x{d['cached_ratio_sims_to_none']:.2f}",
             f"monitoring overhead (device.run {r['workload']['iterations']} x {r['workload']['matrix_n']}^2 matmuls, "
             f"paired on/off)"]
    for mon in r["monitoring"]:
        cost = mon["monitor_mean_cost_ms"]
        lines.append(f"  every {mon['interval_s']:g} s: median ratio {mon['median_ratio']:+.2%} "
                     f"(mean {mon['mean_ratio']:+.2%}, {mon['pairs']} pairs; on {mon['median_on_s']:.3f} s, "
                     f"off {mon['median_off_s']:.3f} s); monitor cost "
                     f"{'-' if cost is None else f'{cost:.3f} ms'} per tick over {mon['monitor_samples']} ticks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--run-s", type=float, default=0.6)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    r = run(a.devices, a.reps, a.pairs, a.run_s)
    print(render(r))
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
