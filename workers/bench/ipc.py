"""Protocol benchmark: round trips against a bare JSON-lines echo, measured in the same run.

    python -m workers.bench.ipc [--requests 10000] [--spawns 20] [--crashes 5] [--json PATH]

The machine is shared and noisy, so the figure that matters is the ratio to the floor,
measured interleaved (blocks alternate floor / protocol) in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from workers.host import WorkerClient
from workers.host.command import bundled_worker_command
from workers.host.pool import PoolConfig, WorkerPool

FLOOR_SCRIPT = Path(__file__).with_name("echo_floor.py")


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_us": _pct(values, 50) * 1e6, "p99_us": _pct(values, 99) * 1e6,
            "mean_us": statistics.fmean(values) * 1e6}


def round_trips(requests: int, blocks: int = 10, pin: int | None = None) -> dict[str, Any]:
    """Interleaved blocks of floor / ping / echo. ``pin``: run host and children on that one
    CPU. On a 2-vCPU VM, whether two processes share a core decides the round trip more than
    any code does (a cross-core wake-up costs tens of microseconds), and placement is luck;
    pinned, both sides of the comparison get the same placement."""
    saved = os.sched_getaffinity(0)
    if pin is not None:
        os.sched_setaffinity(0, {pin})  # children inherit it
    try:
        return _round_trips(requests, blocks)
    finally:
        os.sched_setaffinity(0, saved)


def _round_trips(requests: int, blocks: int) -> dict[str, Any]:
    floor = subprocess.Popen([sys.executable, str(FLOOR_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert floor.stdin and floor.stdout
    client = WorkerClient(bundled_worker_command()).start()
    msg = {"type": "request", "id": 0, "op": "ping", "params": {"payload": "x" * 64}}
    lat: dict[str, list[float]] = {"floor": [], "ping": [], "echo": []}
    per_block = max(1, requests // blocks)
    try:
        for _ in range(blocks):
            for _ in range(per_block):
                t0 = time.perf_counter()
                floor.stdin.write(json.dumps(msg).encode() + b"\n")
                floor.stdin.flush()
                json.loads(floor.stdout.readline())
                lat["floor"].append(time.perf_counter() - t0)
            for _ in range(per_block):
                t0 = time.perf_counter()
                client.request("ping", msg["params"])
                lat["ping"].append(time.perf_counter() - t0)
            for _ in range(max(1, per_block // 5)):
                t0 = time.perf_counter()
                client.request("echo", msg["params"])
                lat["echo"].append(time.perf_counter() - t0)
    finally:
        client.shutdown()
        floor.stdin.close()
        floor.wait(10)
    out = {k: _summary(v) for k, v in lat.items()}
    out["ratio_p50_ping_to_floor"] = out["ping"]["p50_us"] / out["floor"]["p50_us"]
    out["ratio_p99_ping_to_floor"] = out["ping"]["p99_us"] / out["floor"]["p99_us"]
    out["ratio_p50_echo_to_floor"] = out["echo"]["p50_us"] / out["floor"]["p50_us"]
    return out


def spawn_to_ready(spawns: int) -> dict[str, Any]:
    times = []
    for _ in range(spawns):
        c = WorkerClient(bundled_worker_command()).start()
        times.append(c.ready_at - c.spawned_at)
        c.shutdown()
    return {"n": spawns, "p50_ms": _pct(times, 50) * 1e3, "max_ms": max(times) * 1e3}


def crash_to_served(crashes: int) -> dict[str, Any]:
    """SIGKILL the only worker; time until a request is served again (detect + back-off + spawn)."""
    config = PoolConfig(size=1, backoff_initial_s=0.1, max_restarts=crashes + 1, stable_after_s=0.5)
    served, detect_to_ready = [], []
    with WorkerPool(bundled_worker_command(), config) as pool:
        for _ in range(crashes):
            time.sleep(0.6)  # past the stable-start window: each crash is a first failure
            victim = pool.clients[0]
            n_events = len(pool.events)
            t0 = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            while pool.clients and pool.clients[0] is victim:
                time.sleep(0.001)
            pool.request("ping", timeout=30)
            served.append(time.monotonic() - t0)
            events = pool.events[n_events:]
            lost = next(e.at for e in events if e.kind == "lost")
            ready = next(e.at for e in events if e.kind == "ready")
            detect_to_ready.append(ready - lost)
    return {"n": crashes, "kill_to_served_p50_ms": _pct(served, 50) * 1e3, "kill_to_served_max_ms": max(served) * 1e3,
            "lost_to_ready_p50_ms": _pct(detect_to_ready, 50) * 1e3, "backoff_s": config.backoff_initial_s}


def run(requests: int, spawns: int, crashes: int) -> dict[str, Any]:
    cpu = max(os.sched_getaffinity(0))
    return {"round_trips": round_trips(requests), "round_trips_pinned": round_trips(requests, pin=cpu),
            "pinned_cpu": cpu, "spawn_to_ready": spawn_to_ready(spawns),
            "crash_to_served": crash_to_served(crashes), "python": sys.version.split()[0], "cpus": os.cpu_count()}


def render(r: dict[str, Any]) -> str:
    lines = []
    for key, title in (("round_trips", "unpinned"), ("round_trips_pinned", f"pinned to CPU {r['pinned_cpu']}")):
        lines += _render_rt(r[key], title)
    lines += [
        f"spawn to ready ({r['spawn_to_ready']['n']} spawns): p50 {r['spawn_to_ready']['p50_ms']:.1f} ms, "
        f"max {r['spawn_to_ready']['max_ms']:.1f} ms",
        f"SIGKILL to served by the replacement ({r['crash_to_served']['n']} crashes, back-off "
        f"{r['crash_to_served']['backoff_s']:g} s): p50 {r['crash_to_served']['kill_to_served_p50_ms']:.1f} ms, "
        f"max {r['crash_to_served']['kill_to_served_max_ms']:.1f} ms; lost->ready p50 "
        f"{r['crash_to_served']['lost_to_ready_p50_ms']:.1f} ms",
    ]
    return "\n".join(lines)


def _render_rt(rt: dict[str, Any], title: str) -> list[str]:
    return [
        f"round trips, {title} ({rt['ping']['n']} ping, {rt['floor']['n']} floor, interleaved):",
        f"  bare JSON-lines echo (floor)  p50 {rt['floor']['p50_us']:8.1f} us   p99 {rt['floor']['p99_us']:8.1f} us",
        f"  protocol ping (control path)  p50 {rt['ping']['p50_us']:8.1f} us   p99 {rt['ping']['p99_us']:8.1f} us",
        f"  protocol echo (work queue)    p50 {rt['echo']['p50_us']:8.1f} us   p99 {rt['echo']['p99_us']:8.1f} us",
        f"  ping / floor: p50 x{rt['ratio_p50_ping_to_floor']:.2f}  p99 x{rt['ratio_p99_ping_to_floor']:.2f}"
        f"   (target: p50 at most x2.00); echo / floor p50 x{rt['ratio_p50_echo_to_floor']:.2f}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.bench.ipc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--spawns", type=int, default=20)
    p.add_argument("--crashes", type=int, default=5)
    p.add_argument("--json", default="var/bench/ipc.json", help="where to write the figures")
    args = p.parse_args(argv)
    if min(args.requests, args.spawns, args.crashes) < 1:
        p.error("--requests, --spawns and --crashes must be at least 1")
    result = run(args.requests, args.spawns, args.crashes)
    print(render(result))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
