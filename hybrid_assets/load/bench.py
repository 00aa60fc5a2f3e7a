"""The load generator's own overhead, against bare loops measured in the same run.

    python -m hybrid_assets.load.bench [--requests 20000] [--rate 2000]

1. closed loop, one user, no-op target vs a bare ``for`` loop: the cost per request;
2. open loop at ``--rate`` vs a bare sleep-until-due loop on the same schedule: the
   dispatch lag (how late requests leave against their schedule);
3. closed loop vs a bare loop of ``ping`` on a real worker: the share of a real round trip
   the generator adds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hybrid_assets.load.driver import EventHook, run_closed_loop, run_open_loop
from hybrid_assets.load.schedule import uniform_arrivals
from hybrid_assets.load.stats import LoadStats
from workers.host import WorkerClient
from workers.host.command import bundled_worker_command


def _noop(seq: int) -> None:
    return None


def _closed(target: Any, n: int) -> float:
    hook, stats = EventHook(), LoadStats()
    hook.subscribe(stats.on_event)
    return run_closed_loop(target, users=1, ops_per_user=n, hook=hook)


def _bare(target: Any, n: int) -> float:
    t0 = time.monotonic()
    for i in range(n):
        target(i)
    return time.monotonic() - t0


def _bare_schedule_lags(arrivals: list[float]) -> list[float]:
    lags = []
    t0 = time.monotonic()
    for offset in arrivals:
        due = t0 + offset
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        lags.append(time.monotonic() - due)
    return lags


def run(requests: int, rate: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    bare, closed = _bare(_noop, requests), _closed(_noop, requests)
    out["noop"] = {"bare_rps": requests / bare, "closed_loop_rps": requests / closed,
                   "overhead_us_per_request": (closed - bare) / requests * 1e6}
    arrivals = uniform_arrivals(rate, min(5.0, requests / rate))
    bare_lags = _bare_schedule_lags(arrivals)
    hook = EventHook()
    lags: list[float] = []
    run_open_loop(_noop, arrivals, hook, max_in_flight=8, lag_hook=lags.append)
    out["open_loop"] = {"rate": rate, "requests": len(arrivals),
                        "bare_lag_p50_us": float(np.percentile(bare_lags, 50) * 1e6),
                        "bare_lag_p99_us": float(np.percentile(bare_lags, 99) * 1e6),
                        "lag_p50_us": float(np.percentile(lags, 50) * 1e6),
                        "lag_p99_us": float(np.percentile(lags, 99) * 1e6)}
    n = min(requests, 5000)
    with WorkerClient(bundled_worker_command()).start() as client:
        def ping(seq: int) -> None:
            client.request("ping", {"payload": "x" * 64})

        for _ in range(2):  # interleave, twice, against drift of a shared machine
            b, c = _bare(ping, n), _closed(ping, n)
        out["ping"] = {"requests": n, "bare_rps": n / b, "closed_loop_rps": n / c,
                       "overhead_ratio": c / b}
    return out


def render(r: dict[str, Any]) -> str:
    no, ol, pg = r["noop"], r["open_loop"], r["ping"]
    return "\n".join([
        f"no-op target: bare loop {no['bare_rps']:,.0f}/s, closed loop {no['closed_loop_rps']:,.0f}/s "
        f"({no['overhead_us_per_request']:.1f} us per request added)",
        f"open loop at {ol['rate']:g}/s ({ol['requests']} requests): dispatch lag p50 {ol['lag_p50_us']:.0f} us, "
        f"p99 {ol['lag_p99_us']:.0f} us; bare schedule loop p50 {ol['bare_lag_p50_us']:.0f} us, "
        f"p99 {ol['bare_lag_p99_us']:.0f} us",
        f"real worker ping: bare loop {pg['bare_rps']:,.0f}/s, closed loop {pg['closed_loop_rps']:,.0f}/s "
        f"(x{pg['overhead_ratio']:.2f} the bare loop's time)",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hybrid_assets.load.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--json", default="var/bench/load.json")
    args = p.parse_args(argv)
    if args.requests < 10 or args.rate <= 0:
        p.error("--requests must be at least 10 and --rate > 0")
    result = run(args.requests, args.rate)
    print(render(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
