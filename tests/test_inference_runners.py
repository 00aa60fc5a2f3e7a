"""The inference runners: image comparison (bitwise, SSIM against hand-computed values), the step and window
arithmetic, the idle-while-queued measure, model resolution, and the runners themselves against real workers
with tiny params: outputs under load, across workers and after reloads are bit-identical to their references
on the CPU, and GPU-only lines are skipped with a reason, never recorded from a CPU."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import RunnerContext, runner_spec
from hybrid_assets.runners.inference_latency import (
    ENV_INFERENCE_MODEL,
    Job,
    Outcome,
    companion,
    compare,
    real_devices,
    request_steps_for,
    resolve_pipeline,
    ssim,
)
from hybrid_assets.runners.inference_throughput import arrivals, window_counts
from hybrid_assets.runners.inference_workflows import _coordination_devices, _idle_while_waiting, _mismatch
from hybrid_assets.runners.model_support import ensure_models
from workers.models.store import ModelStore

CPU_ONLY = pytest.mark.skipif(real_devices()[0].kind != "cpu", reason="bitwise CPU expectations")


def _ctx(runner: str, params: dict[str, Any], argv: list[str]) -> tuple[RunnerContext, Recorder]:
    rec = Recorder()
    return RunnerContext(f"test-{runner}", "smoke", params, None, argv, rec,  # type: ignore[arg-type]
                         logging.getLogger("test")), rec


def _run(runner: str, params: dict[str, Any], argv: list[str]) -> Recorder:
    spec = runner_spec(runner)
    assert spec.fn is not None
    ctx, rec = _ctx(runner, params, argv)
    spec.fn(ctx)
    produced = {s.metric for s in rec.samples} | set(rec.skips)
    assert produced <= spec.metrics, produced - spec.metrics
    return rec


def _values(rec: Recorder, metric: str) -> list[float]:
    return rec.values(metric)


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ensure_models(profile="smoke")


# ---- comparisons and arithmetic ---------------------------------------------------------------------------


def test_identical_images_compare_equal_and_one_changed_pixel_is_caught() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    same = compare(img, img.copy())
    assert [c.identical for c in same] == [True, True]
    assert [c.degradation for c in same] == [0.0, 0.0] and [c.mean_abs_diff for c in same] == [0.0, 0.0]
    changed = img.copy()
    changed[1, 5, 7, 2] ^= 0x10  # one channel of one pixel of the second image, by 16
    cmps = compare(img, changed)
    assert cmps[0].identical and not cmps[1].identical
    assert cmps[1].mean_abs_diff == pytest.approx(16 / 255 / (32 * 32 * 3))
    assert 0.0 < cmps[1].degradation < 0.01
    assert _mismatch(img, Outcome(Job("m"), 0.0, 1.0, changed)) == (1.0, cmps[1].mean_abs_diff)
    assert _mismatch(img, Outcome(Job("m"), 0.0, 1.0, img.copy()))[0] == 0.0
    # a wrong shape is the worst comparison, not an exception
    assert compare(img, img[:, :16])[0].degradation == 1.0


def test_ssim_against_hand_computed_values() -> None:
    a = np.full((16, 16, 3), 100, np.uint8)
    b = np.full((16, 16, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    # flat images: the contrast-structure term is C2 / C2 = 1, only luminance remains
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), rel=1e-9)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    y = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, y) == pytest.approx(ssim(y, x)) and ssim(x, y) < 0.1  # independent noise
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(x, y[:10])


def test_image_to_image_request_steps_run_exactly_the_points_steps() -> None:
    expected = {2: 3, 5: 7, 10: 14, 20: 27, 50: 67, 100: 134}
    for executed, request in expected.items():
        assert request_steps_for(executed, 0.75) == request
        assert int(request * 0.75) == executed and int((request - 1) * 0.75) < executed
    assert request_steps_for(7, 1.0) == 7


def test_ramp_arrivals_are_the_instants_within_the_step() -> None:
    # 25/min over 6 s: one every 2.4 s, at 0, 2.4 and 4.8 s
    assert [arrivals(r, 6.0) for r in (10, 25, 50, 100, 200, 500)] == [1, 3, 5, 10, 20, 50]
    assert arrivals(1, 6.0) == 1  # a step always sends something


def test_windows_count_full_windows_only() -> None:
    ends = [10.1, 10.9, 11.2, 12.5, 12.99, 13.0, 13.4, 9.9]
    assert window_counts(ends, 10.0, 1.0, 3) == [2, 1, 2]  # 13.0+ is the partial fourth window, 9.9 before


def test_idle_while_waiting_is_the_uncovered_part_of_the_wait() -> None:
    def out(started: float, gen_start: float, end: float) -> Outcome:
        return Outcome(Job("m"), started, end, np.zeros((1, 8, 8, 3), np.uint8), {"seconds": end - gen_start})

    waiting = out(0.0, 1.0, 1.5)  # sent at 0, generating from 1.0
    partly = out(0.0, 0.2, 0.7)  # another request generated from 0.2 to 0.7
    assert _idle_while_waiting(waiting, [waiting, partly]) == pytest.approx(0.5)
    covering = out(0.0, -0.5, 1.2)
    assert _idle_while_waiting(waiting, [waiting, partly, covering]) == pytest.approx(0.0)
    assert _idle_while_waiting(partly, [partly]) == pytest.approx(0.2)
    later = out(1.5, 1.6, 2.0)  # after the wait: no bearing on it
    assert _idle_while_waiting(waiting, [waiting, partly, later]) == pytest.approx(0.5)


@CPU_ONLY
def test_simulated_devices_are_cpu_workers_of_one_kind() -> None:
    sims = _coordination_devices(2)
    assert [(d.name, d.backing, d.kind) for d in sims] == [("sim:cpu0", "cpu", "cpu"), ("sim:cpu1", "cpu", "cpu")]
    assert [d.name for d in _coordination_devices(0)] == ["cpu"]


def test_model_names_resolve_or_are_refused_by_name(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _ = _ctx("resolve", {}, [])
    assert resolve_pipeline(ctx, store, "tiny-random") == "tiny-sd-a"
    assert resolve_pipeline(ctx, store, "small") == "tiny-sd-c"
    monkeypatch.setenv(ENV_INFERENCE_MODEL, "tiny-sd-b")
    assert resolve_pipeline(ctx, store, "configured") == "tiny-sd-b"
    with pytest.raises(ValueError, match=r"'no-such-model'.*does not hold"):
        resolve_pipeline(ctx, store, "no-such-model")
    with pytest.raises(ValueError, match="a controlnet, not an sd_pipeline"):
        resolve_pipeline(ctx, store, "tiny-controlnet-a")
    assert companion(store, "tiny-sd-a", "controlnet") == "tiny-controlnet-a"
    with pytest.raises(ValueError, match="no lora model built on 'tiny-sd-b'"):
        companion(store, "tiny-sd-b", "lora")


# ---- runners against real workers -------------------------------------------------------------------------


@pytest.mark.subprocess
def test_text_to_image_latency_records_every_sample(worker_argv: list[str], store: ModelStore) -> None:
    rec = _run("inference.text_to_image_latency",
               {"width_px": 64, "height_px": 64, "steps": 2, "model": "tiny-random", "samples": 3}, worker_argv)
    lat = _values(rec, "text_to_image_latency_s")
    assert len(lat) == 3 and all(0.0 < v < 60.0 for v in lat)
    assert _values(rec, "inference_failed") == [0.0, 0.0, 0.0]
    gen = [s.labels["generation_s"] for s in rec.samples if s.metric == "text_to_image_latency_s"]
    assert all(0.0 < g <= v for g, v in zip(gen, lat, strict=True))  # host time includes the worker's
    assert rec.notes["point"]["executed_steps"] == 2


@CPU_ONLY
@pytest.mark.subprocess
def test_sustained_throughput_is_bitwise_stable_under_load(worker_argv: list[str], store: ModelStore) -> None:
    rec = _run("inference.sustained_throughput",
               {"duration_s": 3, "window_s": 1, "inference_type": "text_to_image", "model": "tiny", "resolution": 64,
                "steps": 2, "reference_inputs": 2}, worker_argv)
    quality = _values(rec, "quality_degradation_ratio")
    assert len(quality) >= 2 and set(quality) == {0.0}  # same prompt and seed: the same bytes under load
    assert all(s.labels["identical"] for s in rec.samples if s.metric == "quality_degradation_ratio")
    assert set(_values(rec, "inference_error")) == {0.0}
    assert _values(rec, "worker_crash_count") == [0.0]
    per_min = _values(rec, "throughput_per_device_per_min")
    assert len(per_min) == 3  # full 1-s windows only; never more completions counted than answered
    assert sum(per_min) / 60.0 <= len(_values(rec, "inference_latency_s"))
    assert "inferences_per_h" in rec.skips and not _values(rec, "inferences_per_h")  # a GPU line on a CPU


@CPU_ONLY
@pytest.mark.subprocess
def test_two_simulated_devices_share_work_and_agree_bit_for_bit(worker_argv: list[str], store: ModelStore) -> None:
    rec = _run("inference.multi_device_coordination",
               {"runs": 2, "requests_per_run": 4, "simulated_devices": 2, "model": "tiny", "steps": 2}, worker_argv)
    assert _values(rec, "distributed_request_error") == [0.0] * 8
    assert _values(rec, "cross_device_output_mismatch_detected") == [0.0, 0.0]
    served = [s.labels["served"] for s in rec.samples if s.metric == "device_participation_ok"]
    assert _values(rec, "device_participation_ok") == [1.0, 1.0], served


@CPU_ONLY
@pytest.mark.subprocess
def test_first_inference_after_a_load_matches_a_clean_worker(worker_argv: list[str], store: ModelStore) -> None:
    rec = _run("inference.load_to_inference_transition",
               {"loads": 2, "requests_per_load": 2, "model": "tiny", "steps": 2}, worker_argv)
    assert _values(rec, "first_inference_not_ready_detected") == [0.0, 0.0]
    assert _values(rec, "output_mismatch_detected") == [0.0] * 4
    assert len(_values(rec, "first_inference_latency_s")) == 2


@CPU_ONLY
@pytest.mark.subprocess
def test_concurrent_lora_requests_match_their_solo_references(worker_argv: list[str], store: ModelStore) -> None:
    rec = _run("inference.multi_model_concurrent",
               {"inference_type": "lora", "concurrency_levels": [1, 2], "requests_per_level": 4, "model_set": "tiny",
                "steps": 2}, worker_argv)
    assert _values(rec, "concurrent_request_error") == [0.0] * 8
    assert _values(rec, "output_mismatch_detected") == [0.0] * 8
    assert len(_values(rec, "idle_device_while_queued_detected")) == 8
    assert rec.notes["models"] == ["tiny-lora-a"]


@CPU_ONLY
@pytest.mark.subprocess
def test_gpu_lines_are_skipped_on_a_cpu_testbed(worker_argv: list[str], store: ModelStore) -> None:
    rec = _run("inference.multi_gpu_scaling", {"gpu_counts": [1, 2], "width_px": 64, "height_px": 64, "steps": 2,
                                               "model": "tiny-random", "seconds_per_point": 1}, worker_argv)
    assert set(rec.skips) == {"gpu_scaling_efficiency_ratio", "inferences_per_h"} and not rec.samples
    rec = _run("inference.resource_utilization", {"width_px": 64, "height_px": 64, "steps": 2, "model": "tiny-random",
                                                  "inferences": 2, "sample_ms": 100}, worker_argv)
    assert set(rec.skips) == {"gpu_utilization_ratio", "vram_efficiency_ratio", "cpu_usage_ratio"}
    assert not rec.samples
    ratios = rec.notes["cpu_inference_cpu_usage_ratios"]
    assert len(ratios) == 2 and all(0.0 < r <= 1.5 for r in ratios)


@pytest.mark.slow
@pytest.mark.subprocess
def test_controlnet_pairs_are_timed_and_change_the_output(worker_argv: list[str], store: ModelStore) -> None:
    rec = _run("inference.controlnet_inference",
               {"points": [[64, 2]], "pairs_per_point": 2, "condition": "canny", "model": "tiny-random"}, worker_argv)
    assert len(_values(rec, "controlnet_overhead_ratio")) == 2
    base, cn = _values(rec, "base_latency_s"), _values(rec, "controlnet_latency_s")
    for ratio, b, c in zip(_values(rec, "controlnet_overhead_ratio"), base, cn, strict=True):
        assert ratio == pytest.approx(c / b - 1.0)
    assert "controlnet_quality_degradation_ratio" in rec.skips
    assert rec.notes["controlnet_changed_output_pairs"] == "2/2"  # the ControlNet was applied


@CPU_ONLY
@pytest.mark.slow
@pytest.mark.subprocess
def test_mixed_types_and_ramp_judge_every_output(worker_argv: list[str], store: ModelStore) -> None:
    rec = _run("inference.mixed_types",
               {"inference_mix": {"text_to_image": 0.5, "lora_inference": 0.5}, "resolutions": [64],
                "step_counts": [2], "batch_sizes": [1, 2], "concurrency": 2, "duration_s": 2, "model": "tiny",
                "reference_pool_per_type": 1}, worker_argv)
    assert set(_values(rec, "quality_degradation_ratio")) == {0.0}
    assert set(_values(rec, "inference_error")) == {0.0}
    assert {s.labels["type"] for s in rec.samples if s.metric == "throughput_per_min"} == {
        "text_to_image", "lora_inference", "all"}
    rec = _run("inference.throughput_ramp",
               {"scaling_steps_per_min": [30, 1200], "step_duration_s": 1, "inference_type": "text_to_image",
                "model": "tiny", "resolution": 64, "steps": 8, "reference_inputs": 2}, worker_argv)
    achieved = [s for s in rec.samples if s.metric == "achieved_throughput_per_min"]
    flags = [s.labels["sustained"] for s in achieved]
    # 20 requests 0.05 s apart at ~0.1 s each (more on a busy machine): never sustained, and the ramp stops there
    assert flags[-1] is False and all(flags[:-1]) and len(flags) <= 2
    if flags[0]:  # one request, its interval 2 s: 30 per minute if answered within it, less if later
        assert 0.0 < achieved[0].value <= 30.0 + 1e-9
        assert achieved[0].value == pytest.approx(60.0 / max(2.0, achieved[0].labels["span_s"]), rel=1e-2)
    best = [s.value for s in achieved if s.labels["sustained"]]
    assert _values(rec, "max_sustainable_throughput_per_min") == [best[-1] if best else 0.0]
    assert set(_values(rec, "quality_degradation_ratio")) == {0.0}
