"""4.6 postprocessing quality on real photographs (scikit-image's sample images, cut and sorted by input type
in workers/postprocess/samples.py): upscaling PSNR gain over bicubic, and enhancement of degraded images.

Upscaling: each reference (input_px square) is downscaled by the factor (bicubic, the usual super-resolution
protocol) and upscaled back by the worker (backend auto: the pretrained Real-ESRGAN, quality standard); the
same low-resolution input is upscaled by plain bicubic here, in the same run. gain = PSNR(upscaled, ref) -
PSNR(bicubic, ref); one sample per image and factor, then one per input type and factor: that type's mean.
Real-ESRGAN is a GAN-trained (perceptual) model: its PSNR is reported as measured, never tuned.

Enhancement: each reference is degraded (Gaussian blur sigma 1.5, Gaussian noise sigma 15, JPEG q20) and
enhanced by the worker at each level; one sample per (image, degradation, level): improved = 1 when the
enhanced image beats its degraded input on both PSNR and SSIM against the clean reference, with the gains.
"""

from __future__ import annotations

import statistics
from typing import Any

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.postprocess_support import note_model, pp_worker, shm_input, take_output
from workers.host import WorkerError
from workers.postprocess import quality, samples
from workers.protocol.images import ShmLedger


def upscaling_quality(ctx: RunnerContext) -> None:
    p = ctx.params
    px, factors, types = int(p["input_px"]), [int(f) for f in p["factors"]], list(p["input_types"])
    per_type = int(p["images_per_type"])
    note_model(ctx)
    ledger = ShmLedger()
    try:
        with pp_worker(ctx) as client:
            for input_type in types:
                refs = samples.by_type(input_type, per_type, px)
                for factor in factors:
                    gains: list[float] = []
                    for sample in refs:
                        low = quality.downscale(sample.pixels, factor)
                        try:
                            r = client.request("postprocess.upscale", {"image": shm_input(ledger, low),
                                                                       "factor": factor}, timeout=600)
                        except WorkerError as exc:
                            ctx.recorder.note(f"failed_{input_type}_{factor}_{sample.name}", str(exc)[:300])
                            continue
                        up = take_output(r).pixels
                        bicubic = quality.resize(low, px, px, "bicubic")
                        p_up, p_bic = quality.psnr(up, sample.pixels), quality.psnr(bicubic, sample.pixels)
                        gain = p_up - p_bic
                        gains.append(gain)
                        ctx.recorder.record("upscale_psnr_gain_db", gain, "dB", input_type=input_type, factor=factor,
                                            image=sample.name, backend=r["backend"], psnr_db=round(p_up, 3),
                                            bicubic_psnr_db=round(p_bic, 3),
                                            ssim=round(quality.ssim(up, sample.pixels), 4),
                                            bicubic_ssim=round(quality.ssim(bicubic, sample.pixels), 4))
                    if gains:
                        ctx.recorder.record("upscale_psnr_gain_by_input_type_db", statistics.fmean(gains), "dB",
                                            input_type=input_type, factor=factor, images=len(gains))
            ledger.unlink_all()
    finally:
        ledger.unlink_all()
    ctx.recorder.note("protocol", f"references {px} px, downscaled by the factor (bicubic), upscaled back; "
                                  "gain = PSNR(upscaled) - PSNR(bicubic of the same input), both against the "
                                  "reference")


def _enhance(client: Any, ledger: ShmLedger, pixels: Any, level: str) -> dict[str, Any]:
    return client.request("postprocess.enhance", {"image": shm_input(ledger, pixels), "level": level}, timeout=600)


def enhancement_quality(ctx: RunnerContext) -> None:
    p = ctx.params
    levels, types, per_type = list(p["levels"]), list(p["input_types"]), int(p["images_per_type"])
    px, degradations = int(p["image_px"]), list(p["degradations"])
    note_model(ctx)
    ledger = ShmLedger()
    try:
        with pp_worker(ctx) as client:
            for input_type in types:
                for n, sample in enumerate(samples.by_type(input_type, per_type, px)):
                    ref = sample.pixels
                    for kind in degradations:
                        degraded = quality.degrade(ref, kind, seed=n)
                        p_in, s_in = quality.psnr(degraded, ref), quality.ssim(degraded, ref)
                        for level in levels:
                            try:
                                r = _enhance(client, ledger, degraded, level)
                            except WorkerError as exc:
                                ctx.recorder.note(f"failed_{level}_{kind}_{sample.name}", str(exc)[:300])
                                continue
                            out = take_output(r).pixels
                            p_out, s_out = quality.psnr(out, ref), quality.ssim(out, ref)
                            labels = {"input_type": input_type, "image": sample.name, "degradation": kind,
                                      "level": level, "backend": r["backend"],
                                      "steps": ",".join(r["stages"][0]["steps"])}
                            ctx.recorder.record("enhancement_improved", float(p_out > p_in and s_out > s_in), "ratio",
                                                **labels)
                            ctx.recorder.record("enhancement_psnr_gain_db", p_out - p_in, "dB", **labels)
                            ctx.recorder.record("enhancement_ssim_gain", s_out - s_in, "ratio", **labels)
                    ledger.unlink_all()
    finally:
        ledger.unlink_all()
    ctx.recorder.note("degradations", f"blur: Gaussian sigma {quality.BLUR_SIGMA}; noise: Gaussian sigma "
                                      f"{quality.NOISE_SIGMA}; jpeg: quality {quality.JPEG_QUALITY}; one sample per "
                                      "(image, degradation, level)")


RUNNERS = {
    "postprocessing.upscaling_quality": (frozenset({"upscale_psnr_gain_db", "upscale_psnr_gain_by_input_type_db"}),
                                         upscaling_quality),
    "postprocessing.enhancement_quality": (frozenset({"enhancement_improved", "enhancement_psnr_gain_db",
                                                      "enhancement_ssim_gain"}), enhancement_quality),
}
