"""The postprocessing runners against a real worker with tiny params: every registered metric they record is
declared, each sample carries what its catalog line says, and nothing is left in shared memory."""

from __future__ import annotations

import os
from typing import Any

import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import runner_spec
from hybrid_assets.runners.planned import planned_runners
from tests.runner_harness import run_runner

pytestmark = pytest.mark.subprocess

RUNNERS = ["postprocessing.upscaling_latency", "postprocessing.upscaling_quality", "postprocessing.enhancement_latency",
           "postprocessing.batch_enhancement", "postprocessing.enhancement_quality",
           "postprocessing.enhancement_failure_recovery", "postprocessing.inference_handoff"]


def _run(runner: str, params: dict[str, Any], worker_argv: list[str]) -> Recorder:
    before = _segments()
    rec = run_runner(runner, params, worker_argv)
    assert _segments() - before == set()  # every segment published or delivered was released
    return rec


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("hv-")}


def _values(rec: Recorder, metric: str) -> list[float]:
    return [s.value for s in rec.samples if s.metric == metric]


def test_every_postprocessing_runner_declares_its_planned_metrics() -> None:
    planned = planned_runners()
    for name in RUNNERS:
        spec = runner_spec(name)
        assert spec.fn is not None, name
        assert planned[name] <= spec.metrics, name


def test_upscaling_latency_and_quality(worker_argv: list[str]) -> None:
    rec = _run("postprocessing.upscaling_latency",
               {"input_px": 32, "factor": 4, "quality": "standard", "model": "tiny-random", "samples": 3}, worker_argv)
    lat = [s for s in rec.samples if s.metric == "upscale_latency_s"]
    assert len(lat) == 3 and all(0 < s.value < 60 and s.labels["output_px"] == 128 for s in lat)
    assert _values(rec, "upscale_failed") == [0, 0, 0] and "not applied" in rec.notes["model_param"]
    assert lat[0].labels["backend"] == f"{rec.notes['upscaler_auto']} x4 standard"

    rec = _run("postprocessing.upscaling_quality",
               {"input_px": 32, "factors": [2], "input_types": ["simple_images", "complex_images"],
                "images_per_type": 2, "model": "tiny-random"}, worker_argv)
    gains = [s for s in rec.samples if s.metric == "upscale_psnr_gain_db"]
    assert len(gains) == 4
    for s in gains:  # the gain is the difference of the two PSNRs it labels
        assert s.value == pytest.approx(s.labels["psnr_db"] - s.labels["bicubic_psnr_db"], abs=2e-3)
    by_type = [s for s in rec.samples if s.metric == "upscale_psnr_gain_by_input_type_db"]
    assert [s.labels["input_type"] for s in by_type] == ["simple_images", "complex_images"]
    assert by_type[0].value == pytest.approx(sum(s.value for s in gains[:2]) / 2)


def test_enhancement_latency_batch_and_quality(worker_argv: list[str]) -> None:
    rec = _run("postprocessing.enhancement_latency", {"level": "ai", "image_px": [32], "samples": 2}, worker_argv)
    assert len(_values(rec, "enhancement_latency_s")) == 2
    assert rec.samples[0].labels["backend"].startswith("ai")

    rec = _run("postprocessing.batch_enhancement",
               {"batch_sizes": [2, 4], "level": "standard", "image_px": 32, "repeats": 1}, worker_argv)
    ratios = [s for s in rec.samples if s.metric == "batch_enhancement_efficiency_ratio"]
    assert [s.labels["batch"] for s in ratios] == [2, 4]
    for s in ratios:
        # the labels carry t1 and tn rounded to 10 us: at a few ms each that is up to ~0.5 % of the ratio
        assert s.value == pytest.approx(s.labels["batch"] * s.labels["t1_s"] / s.labels["tn_s"], rel=1e-2)

    rec = _run("postprocessing.enhancement_quality",
               {"levels": ["standard"], "input_types": ["complex_images"], "images_per_type": 2, "image_px": 32,
                "degradations": ["noise", "jpeg"]}, worker_argv)
    improved = [s for s in rec.samples if s.metric == "enhancement_improved"]
    assert len(improved) == 4 and {s.value for s in improved} <= {0.0, 1.0}
    gains = [s for s in rec.samples if s.metric == "enhancement_psnr_gain_db"]
    noise = [s for s in gains if s.labels["degradation"] == "noise"]
    assert all(s.labels["steps"].startswith("denoise") for s in noise)  # the enhancer found the noise


@pytest.mark.parametrize("policy", ["fallback_to_original_image", "alternative_enhancement_algorithm"])
def test_enhancement_failure_recovery(worker_argv: list[str], policy: str) -> None:
    params = {"failure_recovery": policy, "enhancement_failures": ["upscaling_algorithm_failure",
                                                                   "format_conversion_error"],
              "image_size": "64x64", "items_per_failure": 1}
    rec = _run("postprocessing.enhancement_failure_recovery", params, worker_argv)
    assert _values(rec, "lost_requests_count") == [0, 0]
    assert _values(rec, "output_validated_ok") == [1, 1]
    assert _values(rec, "invalid_output_delivered_error") == [0, 0]
    assert _values(rec, "limitation_reported_ok") == [1, 1]
    served = [s.labels["served_by"] for s in rec.samples if s.metric == "fallback_psnr_gain_db"]
    if policy == "fallback_to_original_image":
        assert served == ["original", "original"] and _values(rec, "fallback_psnr_gain_db") == [0.0, 0.0]
    else:
        assert served == ["classical x2 standard", "png"]


def test_inference_handoff(worker_argv: list[str]) -> None:
    rec = _run("postprocessing.inference_handoff", {"items": 2, "upscale_factor": 2, "model": "tiny"}, worker_argv)
    assert _values(rec, "handoff_copy_detected") == [0, 0]
    assert _values(rec, "handoff_checksum_mismatch_detected") == [0, 0]
    assert _values(rec, "postprocessing_error") == [0, 0]
    assert len(_values(rec, "upscaling_psnr_gain_db")) == 2 and len(_values(rec, "handoff_latency_s")) == 2
    reads = [s.labels["read_from"] for s in rec.samples if s.metric == "handoff_copy_detected"]
    assert len(set(reads)) == 2 and all(r.startswith("hv-") for r in reads)  # each item's own inference segment
