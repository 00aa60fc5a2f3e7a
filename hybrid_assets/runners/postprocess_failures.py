"""3.6 enhancement_processing_failure: each enhancement stage made to fail under the case's recovery path.

Every item is one request through all three stages: a reference photo crop (image_size) downscaled by 2
(bicubic) goes to ``postprocess.enhance`` with upscale_factor 2 (backend auto: Real-ESRGAN), level
standard and format webp, ``on_failure`` = the case's failure_recovery. Before each item
``fault.postprocess`` breaks one stage's algorithm for that one request: upscaling_algorithm_failure the
upscaler auto resolves to, quality_enhancement_crash the standard enhancer, format_conversion_error the
WebP encoder (each raises inside the algorithm).

Per item: output_validated_ok (the result reports validation passed, a decode check included when a file
was delivered); invalid_output_delivered_error (the runner's own check: the delivered file decodes, in the
format the result declares, at the declared size, and the pixels hash as declared); fallback_psnr_gain_db
(PSNR of the delivered image, resized to the reference by bicubic when smaller, minus PSNR of the input
resized the same way: handing back the original scores 0); limitation_reported_ok (the failed stage says
recovered, why, which path served and which fallback, and the result's limitation names it);
lost_requests_count (1 when the request delivered nothing: an error or no answer).
"""

from __future__ import annotations

import hashlib

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.postprocess_support import note_model, pp_worker, shm_input, take_output
from workers.host import RequestTimeout, WorkerError, WorkerLost
from workers.postprocess import imageio, quality, samples
from workers.protocol.images import ShmLedger

STAGE_OF = {"upscaling_algorithm_failure": "upscale", "quality_enhancement_crash": "enhance",
            "format_conversion_error": "convert"}
METRICS = frozenset({"output_validated_ok", "invalid_output_delivered_error", "fallback_psnr_gain_db",
                     "limitation_reported_ok", "lost_requests_count"})


def _size(text: str) -> int:
    w, _, h = str(text).lower().partition("x")
    if not h or int(w) != int(h) or int(w) % 2:
        raise ValueError(f"image_size must be an even square like 512x512, got {text!r}")
    return int(w)


def _own_check(result: dict, out: object) -> str:
    """'' when the delivered output is what the result declares; else what is wrong."""
    pixels, fmt, data = out.pixels, out.format, out.file  # type: ignore[attr-defined]
    if data is not None:
        found = imageio.sniff(data)
        if found != fmt:
            return f"file is {found or 'unknown'}, declared {fmt}"
    elif fmt != "raw":
        return f"declared {fmt} but no file was delivered"
    if (pixels.shape[1], pixels.shape[0]) != (result["width"], result["height"]):
        return f"decodes to {pixels.shape[1]}x{pixels.shape[0]}, declared {result['width']}x{result['height']}"
    if fmt in ("raw", "png") and hashlib.sha256(pixels.tobytes()).hexdigest() != result["sha256"]:
        return "pixels do not hash as declared"
    return ""


def enhancement_failure_recovery(ctx: RunnerContext) -> None:
    p = ctx.params
    policy, failures = str(p["failure_recovery"]), list(p["enhancement_failures"])
    px, items = _size(p["image_size"]), int(p["items_per_failure"])
    unknown = [f for f in failures if f not in STAGE_OF]
    if unknown:
        raise ValueError(f"unknown enhancement failures {unknown}; known: {sorted(STAGE_OF)}")
    note_model(ctx)
    pool = samples.crops(px)
    ledger = ShmLedger()
    n = 0
    try:
        with pp_worker(ctx, faults=True) as client:
            auto = client.request("postprocess.backends")["auto"]
            target = {"upscaling_algorithm_failure": auto, "quality_enhancement_crash": "standard",
                      "format_conversion_error": "webp"}
            for failure in failures:
                stage = STAGE_OF[failure]
                for _ in range(items):
                    ref = pool[(n * 5) % len(pool)].pixels
                    n += 1
                    low = quality.downscale(ref, 2)
                    baseline = quality.psnr(quality.resize(low, px, px, "bicubic"), ref)
                    client.request("fault.postprocess", {"kind": failure, "calls": 1, "algorithm": target[failure]})
                    params = {"image": shm_input(ledger, low), "upscale_factor": 2, "level": "standard",
                              "format": "webp", "on_failure": policy, "output": "shm"}
                    try:
                        result = client.request("postprocess.enhance", params, timeout=600)
                    except (WorkerError, RequestTimeout, WorkerLost) as exc:
                        ctx.recorder.record("lost_requests_count", 1, "count", failure=failure,
                                            error=str(exc)[:200])
                        ctx.recorder.note(f"error_{failure}_{n}", str(exc)[:400])
                        continue
                    finally:
                        ledger.unlink_all()
                    ctx.recorder.record("lost_requests_count", 0, "count", failure=failure)
                    out = take_output(result)
                    failed = next((s for s in result["stages"] if s["stage"] == stage), None)
                    labels = {"failure": failure, "stage": stage, "served_by": failed["served_by"] if failed else "",
                              "fallback": result["fallback"], "format": result["format"]}
                    file_checked = out.file is None or any(c.startswith("decodes as") for c in result["checks"])
                    ctx.recorder.record("output_validated_ok", float(result["validated"] and bool(result["checks"])
                                                                     and file_checked), "ratio", **labels)
                    problem = _own_check(result, out)
                    ctx.recorder.record("invalid_output_delivered_error", float(bool(problem)), "count",
                                        problem=problem, **labels)
                    pixels = out.pixels
                    if pixels.shape[:2] != ref.shape[:2]:
                        pixels = quality.resize(pixels, px, px, "bicubic")
                    ctx.recorder.record("fallback_psnr_gain_db", quality.psnr(pixels, ref) - baseline, "dB",
                                        baseline_psnr_db=round(baseline, 3), **labels)
                    reported = bool(failed and failed["status"] == "recovered" and failed["error"]
                                    and failed["served_by"] and failed["fallback"] and stage in result["limitation"])
                    ctx.recorder.record("limitation_reported_ok", float(reported), "ratio",
                                        limitation=result["limitation"][:300], **labels)
    finally:
        ledger.unlink_all()
    ctx.recorder.note("request", f"{px // 2} px input (a {px} px reference downscaled by 2), postprocess.enhance "
                                 "upscale_factor 2 (auto backend), level standard, format webp, on_failure "
                                 f"{policy}; the fault breaks one algorithm of one stage for that request")


RUNNERS = {"postprocessing.enhancement_failure_recovery": (METRICS, enhancement_failure_recovery)}
