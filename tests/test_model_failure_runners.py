"""The Part 3 model and inference failure runners (3.3 cache and VRAM corruption, 3.5 execution and batch
timeouts): their corruption plans against the integrity checker, the private model root they corrupt, the
sizing and throttling helpers, and each runner against a real worker with tiny params."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time

import psutil
import pytest

from hybrid_assets.runners import inference_timeouts as it
from hybrid_assets.runners import model_corruption as mc
from hybrid_assets.runners.model_support import ensure_models
from tests.runner_harness import run_runner as _run
from tests.runner_harness import values as _values
from workers.models.integrity import check_bytes

SEVERITIES = ["minor_corruption", "significant_corruption", "complete_corruption"]
TYPES = ["partial_file_corruption", "metadata_corruption", "checksum_mismatch"]


# ---- corruption plans and the private root -----------------------------------------------------------------


@pytest.mark.parametrize("ctype", TYPES)
def test_every_plan_damages_its_file_and_only_the_minor_ones_pass_the_structure_check(ctype: str) -> None:
    store = ensure_models(profile="smoke")
    seen = set()
    for severity in SEVERITIES:
        rel, how = mc.plan(store, "tiny-sd-a", ctype, severity)
        seen.add((rel, how))
        f = store.entry("tiny-sd-a").files[rel]
        data = store.file_path("tiny-sd-a", rel).read_bytes()
        bad = mc.damage_bytes(data, rel, how, seed=3)
        assert bad != data and mc.damage_bytes(data, rel, how, seed=3) == bad  # seeded: repeatable
        full = check_bytes(bad, rel, f.sha256, f.bytes)
        assert not full.ok, (severity, how)
        if severity == "minor_corruption" and how == "flip_bit":
            # one bit of tensor data: the structure is intact, only the hash catches it
            assert check_bytes(bad, rel, f.sha256, f.bytes, verify_hash=False).ok
        if severity == "minor_corruption":
            assert sum(a != b for a, b in zip(data, bad, strict=True)) == 1
    assert len(seen) == 3  # three different corruptions per type
    if ctype == "metadata_corruption":
        assert {how for _, how in seen} == {"header_bit", "header", "all_bytes"}
        assert ("unet/config.json", "all_bytes") in seen
    else:
        assert all(rel == "unet/diffusion_pytorch_model.safetensors" for rel, _ in seen)


def test_header_damage_on_disk_equals_the_buffer_version_and_never_touches_the_shared_root() -> None:
    store = ensure_models(profile="smoke")
    rel = "unet/diffusion_pytorch_model.safetensors"
    original = store.file_path("tiny-sd-a", rel).read_bytes()
    with mc.private_root(store, ["tiny-controlnet-a"]) as priv:
        assert priv.root != store.root and sorted(priv.names()) == sorted(store.names())
        assert (priv.model_dir("tiny-sd-a")).is_dir()  # the dependency came along
        for how in ("header_bit", "header_all"):
            path = priv.file_path("tiny-sd-a", rel)
            path.write_bytes(original)
            mc.damage_file(path, rel, how, seed=5)
            assert path.read_bytes() == mc.damage_bytes(original, rel, how, seed=5) != original
        tmp = priv.root
    assert not tmp.exists()
    assert hashlib.sha256(store.file_path("tiny-sd-a", rel).read_bytes()).hexdigest() == \
        store.entry("tiny-sd-a").files[rel].sha256


def test_model_sizes_map_to_pipelines_or_synthetic_weights() -> None:
    assert mc.model_for_size("tiny") == ("tiny-sd-a", None)
    assert mc.model_for_size("2gb") == ("synthetic-2048m", 2048)
    with pytest.raises(ValueError, match="'huge'"):
        mc.model_for_size("huge")


# ---- timeout helpers ---------------------------------------------------------------------------------------


def test_sizing_reaches_the_wanted_duration_and_spills_into_the_batch_past_the_step_limit() -> None:
    params = {"model": "m", "width": 64}
    got = it.sized(params, (0.1, 0.02), 1.0)
    assert got["steps"] == 45 and got["batch"] == 1 and got["width"] == 64
    assert it.sized(params, (0.1, 0.02), 0.05)["steps"] == 1
    big = it.sized(params, (0.0, 0.01), 25.0)  # 2,500 steps: 1,000 steps x 3 images
    assert big["steps"] == it.MAX_STEPS and big["batch"] == 3


def test_the_timeout_message_must_name_the_threshold() -> None:
    assert it._names_threshold("deadline of 600 ms exceeded by 12.5 ms", 0.6)
    assert it._names_threshold("timed out after 30 s", 30.0)
    assert not it._names_threshold("deadline exceeded", 0.6)
    assert not it._names_threshold("deadline of 900 ms exceeded", 0.6)


def test_throttle_stops_the_process_on_a_duty_cycle_and_always_continues_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(child.pid)
        begin = threading.Event()
        with it.Throttle(child.pid, stopped=0.6, period_s=0.05, begin=begin):
            waiting = []
            for _ in range(30):  # nothing happens before ``begin``
                waiting.append(proc.status())
                time.sleep(0.005)
            assert psutil.STATUS_STOPPED not in waiting
            begin.set()
            states = []
            end = time.monotonic() + 0.6
            while time.monotonic() < end:
                states.append(proc.status())
                time.sleep(0.003)
        assert states.count(psutil.STATUS_STOPPED) > len(states) * 0.3
        assert any(s != psutil.STATUS_STOPPED for s in states)
        time.sleep(0.05)
        assert proc.status() != psutil.STATUS_STOPPED
    finally:
        child.kill()
        child.wait()


# ---- runners against a real worker ---------------------------------------------------------------------------


@pytest.mark.subprocess
def test_disk_corruption_is_caught_at_load_and_repaired_from_backup_then_from_the_recipe(
        worker_argv: list[str]) -> None:
    store = ensure_models(profile="smoke")
    before = {rel: f.sha256 for rel, f in store.entry("tiny-sd-a").files.items()}
    rec = _run("model.cache_corruption_recovery", {
        "corruption_type": "checksum_mismatch", "corruption_timing": "during_loading",
        "corruption_severities": ["significant_corruption", "complete_corruption"], "model_sizes": ["tiny"],
        "injections_per_severity": 1}, worker_argv)
    assert _values(rec, "significant_corruption_detected") == [1.0, 1.0]
    assert [s.labels["repaired"] for s in rec.samples if s.metric == "significant_corruption_detected"] == \
        ["backup", "rebuild"]  # injection 0 had a backup, injection 1 none
    assert _values(rec, "fallback_failed_requests_count") == [0.0, 0.0]
    assert _values(rec, "cache_rebuilt_ok") == [1.0, 1.0]
    assert _values(rec, "integrity_verified_before_use_ok") == [1.0, 1.0]
    assert all(0 < v < 60 for v in _values(rec, "major_corruption_detection_s"))
    assert {rel: hashlib.sha256(store.file_path("tiny-sd-a", rel).read_bytes()).hexdigest()
            for rel in before} == before  # the shared root was never touched


@pytest.mark.subprocess
def test_host_copy_corrupted_in_transfer_is_never_served_and_clean_checks_flag_nothing(
        worker_argv: list[str]) -> None:
    rec = _run("model.cache_corruption_recovery", {
        "corruption_type": "partial_file_corruption", "corruption_timing": "during_transfer",
        "corruption_severities": ["minor_corruption"], "model_sizes": ["tiny"], "injections_per_severity": 1},
        worker_argv)
    assert _values(rec, "minor_corruption_detected", host_copy_corrupt=True) == [1.0]
    assert _values(rec, "fallback_failed_requests_count") == [0.0]
    assert _values(rec, "integrity_verified_before_use_ok") == [1.0]
    assert len(_values(rec, "cache_rebuilt_ok")) == 1
    clean = _run("model.cache_corruption_recovery", {
        "corruption_timings": ["during_loading", "during_storage", "during_transfer"], "corruption_severities": [],
        "model_sizes": ["tiny"], "clean_checks": 9}, worker_argv)
    flags = _values(clean, "clean_model_corruption_detected")
    assert len(flags) == 9 and set(flags) == {0.0}
    assert {s.labels["model"] for s in clean.samples} == {"tiny-sd-a", "tiny-sd-b"}


@pytest.mark.subprocess
def test_a_bit_flip_in_device_memory_is_found_by_verification_and_reloaded_clean_from_the_cache(
        worker_argv: list[str]) -> None:
    rec = _run("model.vram_corruption_recovery", {
        "vram_corruption_type": "memory_bit_flip", "detection_methods": ["checksum_verification", "cross_validation"],
        "resident_models": 2, "model_sizes": ["tiny"], "injections_per_method": 1}, worker_argv)
    assert len(_values(rec, "vram_corruption_detection_s", method="checksum_verification")) == 1
    assert _values(rec, "served_from_corrupted_count") == [0.0]
    assert _values(rec, "resumed_without_verification_count") == [0.0]
    reload = [s for s in rec.samples if s.metric == "reloaded_from_clean_cache_ok"]
    assert [s.value for s in reload] == [1.0] and reload[0].labels["reload_source"] == "shm"
    other = _values(rec, "other_model_request_error")
    assert other and set(other) == {0.0}
    assert "skipped_cross_validation" in rec.notes
    assert not [s for s in rec.samples if s.labels.get("method") == "cross_validation"]


@pytest.mark.subprocess
def test_an_overrunning_inference_times_out_after_its_deadline_and_leaves_nothing_running(
        worker_argv: list[str]) -> None:
    rec = _run("inference.execution_timeout", {
        "timeout_threshold_s": 30, "timeout_cause": "complex_prompts", "operation_complexity": "simple_inference",
        "timeouts": 1, "time_scale": 0.02}, worker_argv)
    delays = _values(rec, "timeout_detection_delay_s")
    assert len(delays) == 1 and 0 <= delays[0] < 30
    assert _values(rec, "premature_timeout_error") == [0.0]
    note = next(s for s in rec.samples if s.metric == "timeout_notification_ok")
    assert note.value == 1.0 and note.labels["code"] == "DEADLINE_EXCEEDED" and "600 ms" in note.labels["message"]
    assert _values(rec, "orphan_operation_count") == [0.0]
    assert _values(rec, "leaked_resource_count") == [0.0]
    retry = next(s for s in rec.samples if s.metric == "reduced_retry_ok")
    assert retry.value == 0.0 and retry.labels["system_retry"] is False


@pytest.mark.subprocess
def test_a_batch_past_its_deadline_keeps_completed_outputs_and_restarts_after_them(worker_argv: list[str]) -> None:
    rec = _run("inference.batch_timeout_recovery", {
        "timeout_point": "batch_completion_timeout", "partial_completion": True, "batch_sizes": [8],
        "batches_per_size": 1}, worker_argv)
    assert _values(rec, "completed_items_lost_count") == [0.0]
    assert _values(rec, "orphan_batch_item_count") == [0.0]
    assert _values(rec, "items_reprocessed_count") == [0.0]
    restart = next(s for s in rec.samples if s.metric == "restart_from_last_completed_ok")
    assert restart.value == 1.0
    done = restart.labels["completed_before_timeout"]
    assert 0 <= done < 8 and restart.labels["restarted"] == 8 - done and restart.labels["first_restarted"] == done
