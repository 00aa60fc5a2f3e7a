"""The 4.3 model loading runners and the 2.3 concurrent-loading and rapid-switching runners: their
pure parts (sizes, traces, switch orders, page-cache eviction) against hand-computed values, and
each runner against a real worker on a private model root with 1-2 MiB checkpoints."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import RunnerContext, runner_spec
from hybrid_assets.runners.model_loading import (
    CpuSampler,
    case_sizes_mib,
    configured_budget_mib,
    drop_page_cache,
    popularity_trace,
    resident_bytes,
    synthetic_set,
)
from hybrid_assets.runners.model_support import ENV_MODEL_ROOT, model_root
from hybrid_assets.runners.model_switching import switch_order
from workers.models import generate
from workers.models.store import ModelStore

MIB_AS_GIB = 1 / 1024
LEAK_TOLERANCE_MIB = 1.0  # below the smallest checkpoint (1 MiB): a leaked copy of any model exceeds it
RSS_TOLERANCE_MIB = 32.0  # RSS is not allocator accounting: glibc keeps freed pages; 32 MiB as in test_models_worker


# ---- pure parts -------------------------------------------------------------------------------------
def test_case_sizes_read_every_form_the_cases_use() -> None:
    assert case_sizes_mib({"model_gib": [0.0625, 0.25, 0.9]}) == [64, 256, 922]
    assert case_sizes_mib({"model_gib": 1}) == [1024]
    assert case_sizes_mib({"model_sizes_gb": [1, 2, 5, 10]}) == [1024, 2048, 5120, 10240]
    assert case_sizes_mib({"model_gib": [1, 2, 5, 10]}, 0.0009765625) == [1, 2, 5, 10]
    assert case_sizes_mib({"model_sizes_mb": [1, 2, 5, 10]}) == [1, 2, 5, 10]
    with pytest.raises(ValueError, match="no model size"):
        case_sizes_mib({"loads": 3})


def test_synthetic_sets_are_distinct_and_rotate_sizes() -> None:
    specs = synthetic_set([1, 2], 5)
    assert [s.name for s in specs] == ["synthetic-1m", "synthetic-2m", "synthetic-1m-v1", "synthetic-2m-v1",
                                       "synthetic-1m-v2"]
    assert specs[0] == generate.synthetic(1)  # the profile's own checkpoint is reused
    assert [s.source["mib"] for s in specs] == [1, 2, 1, 2, 1]
    assert len({s.source["seed"] for s in specs}) == 5  # different bytes, not copies


def test_popularity_trace_is_seeded_and_follows_one_over_rank() -> None:
    a, b = popularity_trace(50, 20000, seed=3), popularity_trace(50, 20000, seed=3)
    assert a == b and popularity_trace(50, 200, seed=4) != a[:200]
    counts = np.bincount(a, minlength=50) / len(a)
    harmonic = sum(1 / r for r in range(1, 51))
    assert counts.max() == pytest.approx(1 / harmonic, abs=0.02)  # rank 1 draws 1/H_50 = 22 %
    assert sorted(counts)[-2] == pytest.approx(0.5 / harmonic, abs=0.02)  # rank 2 half as often


def test_switch_orders_per_pattern() -> None:
    assert switch_order("cyclic_switching", 3, 7) == [0, 1, 2, 0, 1, 2, 0]
    for pattern in ("random_switching", "popularity_based_switching"):
        order = switch_order(pattern, 5, 2000, seed=1)
        assert order == switch_order(pattern, 5, 2000, seed=1)
        assert all(x != y for x, y in itertools.pairwise(order))  # every switch changes the model
        assert set(order) == set(range(5))
    random_counts = np.bincount(switch_order("random_switching", 5, 5000, seed=2), minlength=5)
    popular_counts = np.bincount(switch_order("popularity_based_switching", 5, 5000, seed=2), minlength=5)
    assert random_counts.max() / random_counts.min() < 1.25
    assert popular_counts.max() / popular_counts.min() > 2.5  # 1/rank: the favourite far above the last
    with pytest.raises(ValueError, match="switching_pattern"):
        switch_order("round_robin", 5, 3)
    with pytest.raises(ValueError, match="at least 2"):
        switch_order("cyclic_switching", 1, 3)


def test_cache_budget_configured_is_the_runtime_default_scaled() -> None:
    assert configured_budget_mib({"cache_budget": "configured"}, 1 / 1024)[0] == 4.0
    assert configured_budget_mib({}, 1.0)[0] == 4096.0
    assert configured_budget_mib({"cache_budget": 8}, 0.5)[0] == 4096.0


def test_page_cache_drop_leaves_nothing_resident(tmp_path: Path) -> None:
    generate.build(tmp_path, [generate.synthetic(4)])
    store = ModelStore(tmp_path)
    path = store.file_path("synthetic-4m", "model.safetensors")
    path.read_bytes()
    size = path.stat().st_size
    assert resident_bytes(path) >= size - os.sysconf("SC_PAGE_SIZE")  # just read: cached
    assert drop_page_cache(store, "synthetic-4m") == 0
    assert resident_bytes(path) == 0


def test_cpu_sampler_gives_a_short_phase_one_sample() -> None:
    with CpuSampler() as cpu:
        sum(range(10000))
    assert len(cpu.samples) == 1 and 0.0 <= cpu.samples[0] <= 1.0


# ---- runners against a real worker ------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's model root linked file by file (no copying), its manifest copied: runners add
    checkpoints here, never to the shared root."""
    src, dest = model_root(), tmp_path_factory.mktemp("models") / "root"
    if (src / "manifest.json").exists():
        shutil.copytree(src, dest, copy_function=os.link, ignore=shutil.ignore_patterns("manifest.json", ".*"))
        shutil.copy2(src / "manifest.json", dest / "manifest.json")
    return dest


def _run(runner: str, params: dict[str, Any], worker_argv: list[str], root: Path,
         monkeypatch: pytest.MonkeyPatch) -> Recorder:
    monkeypatch.setenv(ENV_MODEL_ROOT, str(root))
    spec = runner_spec(runner)
    assert spec.fn is not None
    rec = Recorder()
    spec.fn(RunnerContext(f"test-{runner}", "smoke", params, None, worker_argv, rec,  # type: ignore[arg-type]
                          logging.getLogger("test")))
    produced = {s.metric for s in rec.samples}
    assert produced <= spec.metrics, produced - spec.metrics
    return rec


def _values(rec: Recorder, metric: str) -> list[float]:
    return rec.values(metric)


@pytest.mark.subprocess
def test_cold_hit_and_miss_runners(worker_argv: list[str], private_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _run("model.cold_loading", {"model_gib": [MIB_AS_GIB, 2 * MIB_AS_GIB], "loads": 4}, worker_argv,
               private_root, monkeypatch)
    assert _values(rec, "load_failed") == [0.0] * 4
    cold = [s for s in rec.samples if s.metric == "cold_load_time_s"]
    assert [s.labels["size_mib"] for s in cold] == [1.0, 2.0, 1.0, 2.0]
    assert all(s.labels["source"] == "disk" and 0 < s.value < 30 for s in cold)
    assert "max 0 bytes still resident" in rec.notes["page_cache_drop"]

    rec = _run("model.cache_hit_latency", {"model_gib": [MIB_AS_GIB], "models": 2, "accesses": 4}, worker_argv,
               private_root, monkeypatch)  # the runner itself refuses anything but a hit served from shm
    hits = [s for s in rec.samples if s.metric == "cache_hit_latency_s"]
    assert [s.labels["model"] for s in hits] == ["synthetic-1m", "synthetic-1m-v1"] * 2
    assert all(0 < s.value < 30 for s in hits)

    rec = _run("model.cache_miss_handling", {"model_gib": [MIB_AS_GIB], "misses": 3}, worker_argv, private_root,
               monkeypatch)
    assert _values(rec, "cache_miss_failed") == [0.0] * 3
    assert len(_values(rec, "cache_miss_load_s")) == 3


@pytest.mark.subprocess
def test_cache_efficiency_counts_hits_against_the_budget(worker_argv: list[str], private_root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A 4 MiB budget (4 GiB scaled by 1/1024) over 1 and 2 MiB checkpoints: each fits.
    params = {"model_pool": 4, "model_gib": [1, 2], "size_scale": 1 / 1024, "requests": 40, "seed": 5}
    rec = _run("model.cache_efficiency", params, worker_argv, private_root, monkeypatch)
    hits = _values(rec, "cache_hit")
    counters = rec.notes["host_cache_counters"]
    assert len(hits) == 40 and sum(hits) == counters["hits"] and 40 - sum(hits) == counters["misses"]
    assert counters["misses"] >= 3  # at least the first request of each model drawn
    assert all(s.labels["fits"] for s in rec.samples if s.metric == "cache_hit")


@pytest.mark.subprocess
def test_concurrent_loading_both_parts(worker_argv: list[str], private_root: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _run("model.concurrent_loading", {"concurrency": [1, 2], "model_gib": MIB_AS_GIB, "repeats": 1},
               worker_argv, private_root, monkeypatch)
    assert _values(rec, "load_failed") == [0.0] * 3
    assert len(_values(rec, "concurrent_load_throughput_ratio")) == 1
    assert _values(rec, "peak_concurrent_loads_count")[0] <= 1

    params = {"concurrent_model_count": 3, "model_sizes_mb": [1, 2], "model_types": ["diffusion_models", "lora_models"],
              "target_devices": ["single_device", "multiple_devices"], "rounds": 2}
    rec = _run("model.concurrent_loading", params, worker_argv, private_root, monkeypatch)
    assert _values(rec, "load_error") == [0.0] * 6
    mib = [s for s in rec.samples if s.metric == "bytes_read_mb"]
    assert [round(s.value) for s in mib] == [1, 2, 1, 1, 2, 1]  # a pool of 3 (1, 2, 1 MiB), walked per round
    assert [s.labels["model_type"] for s in mib] == ["diffusion_models", "lora_models"] * 3  # types rotate on
    # A sampled peak (model.list polled during the round): at most the 3 loads; it can miss loads of a
    # MiB or two that finish between two polls (it read 0 on a quiet machine), so no lower bound.
    assert all(0 <= v <= 3 for v in _values(rec, "peak_concurrent_loads_count"))
    assert all(0.5 < v < 1.5 for v in _values(rec, "memory_efficiency_ratio"))  # weights are most of what loading kept
    assert len(_values(rec, "concurrent_over_sequential_bandwidth_ratio")) == 2
    assert len(_values(rec, "sequential_load_s")) == 6
    assert _values(rec, "cpu_utilization_ratio") and all(0 <= v <= 1 for v in _values(rec, "cpu_utilization_ratio"))
    assert "not run" in rec.notes["target_multiple_devices"]


@pytest.mark.subprocess
def test_priority_loading_serves_the_high_priority_load_first(worker_argv: list[str], private_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # One loader: the queue runs strictly by priority, so the high-priority load ends before the
    # normal one in every trial, whichever was submitted first.
    # 32 MiB loads: each load must take longer than the few milliseconds between the two submissions,
    # or the ratio measures the submission order, not the service order (it did under load at 2 MiB).
    params = {"background_loads": 2, "model_gib": 32 * MIB_AS_GIB, "trials": 4, "loaders": 1}
    rec = _run("model.priority_loading", params, worker_argv, private_root, monkeypatch)
    assert _values(rec, "load_failed") == [0.0] * 16
    ratios = _values(rec, "priority_load_time_ratio")
    assert len(ratios) == 4 and all(0 < r < 1 for r in ratios)


@pytest.mark.subprocess
@pytest.mark.parametrize("models", [None, pytest.param(["tiny-sd-a", "tiny-sd-b"], marks=pytest.mark.slow)],
                         ids=["synthetic", "pipelines"])
def test_fifty_switches_leave_memory_at_baseline(worker_argv: list[str], private_root: Path,
                                                 monkeypatch: pytest.MonkeyPatch, models: list[str] | None) -> None:
    params: dict[str, Any] = {"switching_pattern": "cyclic_switching", "model_pool_size": 4, "model_sizes_mb": [1, 2],
                              "switch_interval_s": 0.01, "duration_s": 0.5}
    if models:
        params["models"] = models
    rec = _run("model.rapid_switching", params, worker_argv, private_root, monkeypatch)
    pool = len(models or range(4))
    assert _values(rec, "switch_error") == [0.0] * 50
    assert len(_values(rec, "switch_latency_s")) == 50
    # Cyclic over a pool that fits the host cache: only each model's first request misses.
    assert _values(rec, "cache_hit_ok") == [0.0] * pool + [1.0] * (50 - pool)
    growth = _values(rec, "memory_growth_mb")
    assert max(growth) <= LEAK_TOLERANCE_MIB, f"allocator growth beyond resident models: {max(growth):.3f} MiB"
    assert rec.notes["idle_allocator_growth_mib"] <= LEAK_TOLERANCE_MIB
    rss = _values(rec, "worker_rss_mb")
    assert rss[-1] - rss[0] <= RSS_TOLERANCE_MIB, f"worker RSS grew {rss[-1] - rss[0]:.1f} MiB over 50 switches"
