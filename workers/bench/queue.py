"""Job queue admission overhead at 1,000 requests per second, against the same operation without
the queue, in the same run (the machine is shared: only same-run comparisons mean anything).

1. Through a worker, open loop: ``echo`` sent directly (the server's own work queue) and as
   ``job.run`` of echo (admission control, the job queue, its answer path), in alternating blocks
   at ``--rate`` requests per second; latency from each request's scheduled send time to its
   answer, so queueing delay is never hidden. Figures per kind and the ratio of medians.
2. In-process: a job admitted, run and finished by ``JobQueue`` against the same function called
   directly, so the queue's own cost is seen without the pipe.

Run::  .venv/bin/python -m workers.bench.queue [--rate 1000] [--requests 3000] [--blocks 6] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.host.client import PendingRequest, WorkerClient
from workers.host.command import bundled_worker_command


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_us": round(_pct(values, 50) * 1e6, 1), "p90_us": round(_pct(values, 90) * 1e6, 1),
            "p99_us": round(_pct(values, 99) * 1e6, 1), "mean_us": round(statistics.fmean(values) * 1e6, 1)}


def _open_loop(client: WorkerClient, send: Callable[[], PendingRequest], n: int, rate: float) -> dict[str, Any]:
    """``n`` requests at ``rate`` per second; latency from the scheduled send time to the answer."""
    sent: list[tuple[float, PendingRequest]] = []
    lock = threading.Condition()
    latencies: list[float] = []
    errors = 0

    def collect() -> None:
        nonlocal errors
        for i in range(n):
            with lock:
                while len(sent) <= i:
                    lock.wait()
                scheduled, pending = sent[i]
            pending.wait(30)
            latencies.append(time.perf_counter() - scheduled)
            try:
                pending.result()
            except Exception:  # counted, the figure says how many
                errors += 1

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    t0 = time.perf_counter()
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        pending = send()
        with lock:
            sent.append((scheduled, pending))
            lock.notify()
    collector.join(60)
    wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "achieved_rps": n / wall}


def through_worker(rate: float, requests: int, blocks: int) -> dict[str, Any]:
    per_block = max(1, requests // blocks)
    lat: dict[str, list[float]] = {"direct": [], "queued": []}
    errors = {"direct": 0, "queued": 0}
    rates: dict[str, list[float]] = {"direct": [], "queued": []}
    with WorkerClient(bundled_worker_command(), name="bench-queue").start() as client:
        client.request("queue.configure", {"capacity": 5000, "concurrency": 1})
        senders = {
            "direct": lambda: client.submit("echo", {"payload": "x" * 64}),
            "queued": lambda: client.submit("job.run", {"op": "echo", "params": {"payload": "x" * 64}}),
        }
        for kind in ("direct", "queued"):  # warm-up, not counted
            _open_loop(client, senders[kind], 200, rate)
        for b in range(blocks):
            for kind in (("direct", "queued") if b % 2 == 0 else ("queued", "direct")):
                out = _open_loop(client, senders[kind], per_block, rate)
                lat[kind] += out["latencies"]
                errors[kind] += out["errors"]
                rates[kind].append(out["achieved_rps"])
        stats = client.request("queue.stats")
    d, q = _summary(lat["direct"]), _summary(lat["queued"])
    return {"rate_rps": rate, "direct": {**d, "errors": errors["direct"], "achieved_rps": min(rates["direct"])},
            "queued": {**q, "errors": errors["queued"], "achieved_rps": min(rates["queued"])},
            "ratio_p50": round(q["p50_us"] / d["p50_us"], 3), "ratio_p90": round(q["p90_us"] / d["p90_us"], 3),
            "added_p50_us": round(q["p50_us"] - d["p50_us"], 1),
            "queue": {k: stats[k] for k in ("admitted", "rejected", "completed", "high_water")}}


def in_process(jobs: int) -> dict[str, Any]:
    from workers.protocol.ops_queue import QueueConfigureParams
    from workers.runtime.context import RequestContext
    from workers.runtime.jobqueue import Job, JobQueue

    class _Server:
        def send(self, message: Any) -> None:
            pass

    def fn(payload: str) -> str:
        return payload

    direct: list[float] = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        fn("x")
        direct.append(time.perf_counter() - t0)
    q = JobQueue(_Server(), QueueConfigureParams(capacity=5000, concurrency=1))  # type: ignore[arg-type]
    queued: list[float] = []
    try:
        for i in range(jobs):
            done = threading.Event()
            ctx = RequestContext(None, i, None)  # type: ignore[arg-type]
            job = Job(str(i), "echo", 5, ctx, lambda job: fn("x"), lambda job, r, e, d=done: d.set(), True)
            t0 = time.perf_counter()
            q.admit(job)
            done.wait(5)
            queued.append(time.perf_counter() - t0)
    finally:
        q.close(drain=False)
    return {"direct": _summary(direct), "queued": _summary(queued)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--requests", type=int, default=3000, help="per kind, over all blocks")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--in-process-jobs", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    worker = through_worker(args.rate, args.requests, args.blocks)
    local = in_process(args.in_process_jobs)
    print(f"through a worker at {args.rate:g} req/s (open loop, {args.requests} per kind, {args.blocks} "
          "alternating blocks; latency from the scheduled send time):")
    for kind, label in (("direct", "echo"), ("queued", "job.run(echo)")):
        w = worker[kind]
        print(f"  {label:<14} p50 {w['p50_us']:8.1f} us  p90 {w['p90_us']:8.1f} us  p99 {w['p99_us']:9.1f} us  "
              f"achieved {w['achieved_rps']:.0f}/s (slowest block)  errors {w['errors']}")
    print(f"  queue / direct: p50 x{worker['ratio_p50']:.2f}, p90 x{worker['ratio_p90']:.2f}; "
          f"added p50 {worker['added_p50_us']:.1f} us; queue {worker['queue']}")
    print(f"in-process ({args.in_process_jobs} jobs): direct call p50 {local['direct']['p50_us']:.1f} us, "
          f"admit+run+finish through JobQueue p50 {local['queued']['p50_us']:.1f} us "
          f"(p90 {local['queued']['p90_us']:.1f} us): a thread hand-off each way")
    if args.json:
        args.json.write_text(json.dumps({"worker": worker, "in_process": local}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
