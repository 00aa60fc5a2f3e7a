"""Store and regression-detection benchmarks (issue 7, Performance), each against a baseline
measured in the same run, in a temporary directory:

    python -m hybrid_assets.regress.bench [--samples 1000000] [--builds 100]

a. ingest: ``--samples`` samples in one case through ``MetricsStore.write_case`` vs the same
   rows inserted into a bare DuckDB table by ``INSERT INTO samples SELECT * FROM frame``;
b. regression detection over a history of ``--builds`` builds (3 metrics x 50 samples each, the
   newest build 20 % slower on one metric): ``detect_case`` on the newest build, and the
   per-build history query alone;
c. the testbed fingerprint: cold (import and first call in a fresh interpreter), cached, and
   recomputed, against one ``write_case`` of a small case.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from hybrid_assets import testbed as testbed_mod
from hybrid_assets.regress import queries as q
from hybrid_assets.regress.detect import detect_case
from hybrid_assets.store import MetricsStore
from hybrid_assets.store.schema import TABLES

TESTBED = {"testbed_id": "tb-bench", "hostname": "bench", "cpu": "cpu", "cpu_cores": 2, "memory_bytes": 1 << 30,
           "gpus": "none", "fingerprint": {"cpu": "cpu"}}
CASE_ID = "bench_case"
METRICS = ("latency_s", "load_s", "throughput")


def payload(run_id: str, build_id: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A case payload as ``case_payload`` makes it, built directly (no runner, no GX)."""
    manifest = {"build_id": build_id, "version": build_id}
    sha = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    started = dt.datetime(2026, 12, 4).isoformat()
    lines = [{"check_name": f"{m}_p90", "expectation_type": "expect_column_quantile_values_to_be_between",
              "spec_section": "1.1", "spec_text": "bench", "metric": m, "statistic": "p90",
              "comparison": ">=" if m == "throughput" else "<=", "threshold": 1e9 if m != "throughput" else 0.0,
              "observed": 0.0, "unit": "s", "sample_count": 0, "verdict": "PASS", "detail": ""} for m in METRICS]
    return {
        "run": {"run_id": run_id, "run_key": run_id, "profile": "smoke", "dagster_run_id": None,
                "worker_cmd": "python -m workers", "started_at": started},
        "build": {"build_id": build_id, "version": build_id, "worker_cmd": None, "manifest": manifest,
                  "content_sha256": sha},
        "testbed": TESTBED,
        "case": {"case_id": CASE_ID, "part": 1, "section": "1.1", "also_covers": "", "domain": "bench",
                 "title": "bench", "verdict": "PASS", "reason": "", "error": None, "started_at": started,
                 "duration_s": 1.0, "notes": {}},
        "samples": samples, "metrics": [], "expectations": lines,
    }


def sample_rows(values: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for metric, vs in values.items():
        rows += [{"seq": len(rows) + i, "metric": metric, "value": float(v), "unit": "s", "t_s": 0.001 * i,
                  "labels": {}} for i, v in enumerate(vs)]
    return rows


def _timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """(median seconds over ``repeat`` calls, the last result)."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_ingest(tmp: Path, n: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    rows = sample_rows({"latency_s": rng.lognormal(0, 0.2, n)})
    store = MetricsStore(tmp / "ingest.duckdb")
    store.initialize()
    t_store, _ = _timed(lambda: store.write_case(payload("ingest-run", "ingest-build", rows)))
    frame = pd.DataFrame.from_records(rows)
    frame["labels"] = "{}"
    frame.insert(0, "case_id", CASE_ID)
    frame.insert(0, "run_id", "ingest-run")
    con = duckdb.connect(str(tmp / "bare.duckdb"))
    try:
        con.execute(TABLES)
        con.register("frame", frame)
        t_bare, _ = _timed(lambda: con.execute("INSERT INTO samples SELECT * FROM frame"))
        stored = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        con.close()
    assert store.query("SELECT count(*) AS n FROM samples").n[0] == n == stored
    return {"samples": n, "write_case_s": t_store, "write_case_rows_per_s": n / t_store,
            "bare_insert_s": t_bare, "bare_rows_per_s": n / t_bare, "ratio": t_store / t_bare}


def bench_detection(tmp: Path, builds: int, per_build: int = 50) -> dict[str, Any]:
    store = MetricsStore(tmp / "history.duckdb")
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for k in range(builds):
        slow = 1.2 if k == builds - 1 else 1.0  # the newest build: 20 % slower on latency_s
        values = {"latency_s": rng.lognormal(np.log(slow), 0.1, per_build),
                  "load_s": rng.lognormal(np.log(2.0), 0.1, per_build),
                  "throughput": rng.lognormal(np.log(100.0), 0.1, per_build)}
        store.write_case(payload(f"run-{k:03d}", f"build-{k:03d}", sample_rows(values)))
    t_fill = time.perf_counter() - t0
    newest = f"run-{builds - 1:03d}"
    ctx = q.case_lines(store, newest, CASE_ID)[0]
    t_hist, hist = _timed(lambda: q.history(store, ctx, list(METRICS), [0.9]), repeat=5)
    t_detect, found = _timed(lambda: detect_case(store, newest, CASE_ID, write=False), repeat=5)
    t_detect_w, _ = _timed(lambda: detect_case(store, newest, CASE_ID), repeat=3)
    t_query, _ = _timed(lambda: store.query("SELECT 1"), repeat=5)
    return {"builds": builds, "samples": builds * len(METRICS) * per_build, "fill_s": t_fill,
            "history_query_s": t_hist, "history_rows": len(hist), "detect_case_s": t_detect,
            "detect_case_with_write_s": t_detect_w, "store_query_roundtrip_s": t_query,
            "verdicts": {f.metric: f.verdict for f in found}}


_COLD = ("import time; t0 = time.perf_counter(); import hybrid_assets.testbed as t; t1 = time.perf_counter(); "
         "t.fingerprint(); t2 = time.perf_counter(); print(t1 - t0, t2 - t1)")


def bench_fingerprint(tmp: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _COLD], capture_output=True, text=True, check=True, timeout=300)
    wall = time.perf_counter() - t0
    t_import, t_first = (float(x) for x in out.stdout.split())
    testbed_mod.fingerprint()
    t_cached, _ = _timed(testbed_mod.fingerprint, repeat=1000)
    result = {"cold_process_wall_s": wall, "cold_import_s": t_import, "cold_first_call_s": t_first,
              "cached_call_s": t_cached}
    # The computation itself, uncached (the cache is an lru_cache on a private helper).
    clear = getattr(getattr(testbed_mod, "_fingerprint", None), "cache_clear", None)
    if clear is not None:
        def recompute() -> Any:
            clear()
            return testbed_mod.fingerprint()
        result["recompute_s"], _ = _timed(recompute, repeat=5)
    store = MetricsStore(tmp / "small.duckdb")
    store.initialize()
    rows = sample_rows({"latency_s": np.random.default_rng(2).lognormal(0, 0.2, 100)})
    result["small_write_case_s"], _ = _timed(lambda: store.write_case(payload("small", "small-build", rows)), 5)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000, help="samples in the ingest case")
    ap.add_argument("--builds", type=int, default=100, help="builds of history for detection")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.builds < 2:
        ap.error("--samples must be >= 1 and --builds >= 2")
    with tempfile.TemporaryDirectory(prefix="regress-bench-") as d:
        tmp = Path(d)
        a = bench_ingest(tmp, args.samples)
        print(f"(a) ingest {a['samples']:,} samples in one case: write_case {a['write_case_s']:.2f} s "
              f"({a['write_case_rows_per_s']:,.0f} rows/s); bare INSERT ... SELECT * FROM frame "
              f"{a['bare_insert_s']:.2f} s ({a['bare_rows_per_s']:,.0f} rows/s); ratio {a['ratio']:.1f}x", flush=True)
        b = bench_detection(tmp, args.builds)
        print(f"(b) {b['builds']} builds x {len(METRICS)} metrics x 50 samples ({b['samples']:,} samples, "
              f"written in {b['fill_s']:.1f} s): per-build history query {b['history_query_s'] * 1e3:.1f} ms "
              f"({b['history_rows']} rows); detect_case on the newest {b['detect_case_s'] * 1e3:.0f} ms "
              f"({b['detect_case_with_write_s'] * 1e3:.0f} ms with its write); one store.query round trip "
              f"{b['store_query_roundtrip_s'] * 1e3:.1f} ms; verdicts {b['verdicts']}", flush=True)
        c = bench_fingerprint(tmp)
        recompute = f", recomputed {c['recompute_s'] * 1e3:.1f} ms" if "recompute_s" in c else ""
        print(f"(c) fingerprint: cold process {c['cold_process_wall_s']:.2f} s (import {c['cold_import_s']:.2f} s, "
              f"first call {c['cold_first_call_s'] * 1e3:.1f} ms); cached call {c['cached_call_s'] * 1e6:.2f} us"
              f"{recompute}; one write_case of 100 samples {c['small_write_case_s'] * 1e3:.1f} ms", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"ingest": a, "detection": b, "fingerprint": c}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
