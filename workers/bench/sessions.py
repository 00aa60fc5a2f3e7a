"""Session benchmark: creation and cleanup times against a plain round trip, measured in the same run.

    python -m workers.bench.sessions [--reps 200] [--workspace-mib 4] [--scratch-files 2] [--json PATH]

One warm worker. Per repetition, interleaved: ``ping`` (a control round trip, answered on the reader
thread), ``echo`` (a round trip through the work queue, where session operations run), ``session.create``
of a bare session and ``session.close`` of it, then the same with ``--workspace-mib`` of scratch memory and
``--scratch-files`` open temporary files. Host-side wall times, p50 and p90 of each, and the ratios of the
session operations' p50 to echo's p50 (what a session adds over the cheapest queued request). A warm-up
repetition is not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from workers.host import WorkerClient
from workers.host.command import bundled_worker_command

MiB = 1 << 20


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(client: WorkerClient, reps: int, workspace_bytes: int, scratch_files: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in ("ping", "echo", "create", "close", "create_resources",
                                                     "close_resources")}

    def timed(key: str, op: str, params: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = client.request(op, params, timeout=30.0)
        if key:
            times[key].append(time.perf_counter() - t0)
        return result

    for i in range(reps + 1):
        keep = i > 0  # repetition 0 warms up (first session: temporary root, validation thread)
        timed("ping" if keep else "", "ping", {"payload": "x"})
        timed("echo" if keep else "", "echo", {"payload": "x"})
        sid = timed("create" if keep else "", "session.create", {"state": {"user": f"u{i}", "n": 0}})["id"]
        timed("close" if keep else "", "session.close", {"id": sid})
        sid = timed("create_resources" if keep else "", "session.create",
                    {"state": {"user": f"u{i}"}, "workspace_bytes": workspace_bytes,
                     "scratch_files": scratch_files})["id"]
        timed("close_resources" if keep else "", "session.close", {"id": sid})
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: {"p50_ms": _pct(v, 0.5) * 1e3, "p90_ms": _pct(v, 0.9) * 1e3,
                               "mean_ms": statistics.fmean(v) * 1e3, "n": len(v)} for k, v in times.items()}
    echo = out["echo"]["p50_ms"]
    out["ratio_p50_to_echo"] = {k: out[k]["p50_ms"] / echo for k in times if k not in ("ping", "echo")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workers.bench.sessions", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--workspace-mib", type=float, default=4.0)
    ap.add_argument("--scratch-files", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    with WorkerClient(bundled_worker_command(), name="bench-sessions").start() as client:
        times = measure(client, args.reps, int(args.workspace_mib * MiB), args.scratch_files)
    figures = summarize(times)
    print(f"session benchmark: {args.reps} repetitions, interleaved; resources = {args.workspace_mib:g} MiB "
          f"workspace + {args.scratch_files} scratch files")
    print(f"{'operation':<18} {'p50 ms':>9} {'p90 ms':>9} {'p50 / echo p50':>15}")
    for key in times:
        ratio = figures["ratio_p50_to_echo"].get(key)
        print(f"{key:<18} {figures[key]['p50_ms']:>9.3f} {figures[key]['p90_ms']:>9.3f} "
              f"{'' if ratio is None else f'{ratio:.2f}':>15}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
