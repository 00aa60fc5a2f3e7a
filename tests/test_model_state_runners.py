"""The 4.3 model state runners and the Part 1 model workflows: helpers against hand-made inputs,
and the runners against a real worker with tiny params (each asserting values that would differ
if the measured system or the measurement were wrong)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners import model_state as ms
from hybrid_assets.runners.model_dependencies import RecordingClient, dependent_set
from hybrid_assets.runners.model_support import ensure_models
from hybrid_assets.runners.model_workflows import _graphs, graph_errors, model_dtypes, model_set, order_violations
from tests.runner_harness import run_runner as _run
from workers.host.models import SyncReport

# ---- helpers ------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert ms.percentile(values, 90) == 9.0
    assert ms.percentile(values, 50) == 5.0
    assert ms.percentile(values, 100) == 10.0
    assert ms.percentile([3.0], 90) == 3.0


def test_dependent_set_orders_bases_first_and_names_the_leaves() -> None:
    store = ensure_models(profile="smoke")
    ordered, leaves = dependent_set(store)
    assert ordered == ["tiny-sd-a", "tiny-controlnet-a", "tiny-lora-a"]
    assert leaves == ["tiny-controlnet-a", "tiny-lora-a"]
    graphs = _graphs(store, store.names())
    assert graphs[0] == ["tiny-controlnet-a", "tiny-lora-a"]  # a shared base
    assert ["tiny-sd-a"] not in graphs and ["tiny-sd-b"] in graphs and ["tiny-lora-a"] in graphs


def test_order_violations_count_early_and_repeated_loads() -> None:
    store = ensure_models(profile="smoke")
    assert order_violations(store, ["tiny-sd-a", "tiny-controlnet-a", "tiny-lora-a"]) == 0
    assert order_violations(store, ["tiny-controlnet-a", "tiny-sd-a"]) == 1  # before its base
    assert order_violations(store, ["tiny-sd-a", "tiny-lora-a", "tiny-sd-a", "tiny-controlnet-a"]) == 1  # twice
    assert order_violations(store, ["tiny-lora-a", "tiny-controlnet-a"]) == 2  # base never loaded


def test_graph_errors_compare_resolved_edges_with_the_manifests() -> None:
    store = ensure_models(profile="smoke")
    graph = ["tiny-controlnet-a", "tiny-lora-a"]
    good = {"tiny-sd-a": [], "tiny-controlnet-a": ["tiny-sd-a"], "tiny-lora-a": ["tiny-sd-a"]}
    loaded = ["tiny-sd-a", "tiny-controlnet-a", "tiny-lora-a"]
    assert graph_errors(store, graph, loaded, good) == 0
    assert graph_errors(store, graph, loaded, {**good, "tiny-lora-a": []}) == 1  # an edge missing
    assert graph_errors(store, graph, loaded, {**good, "tiny-lora-a": ["tiny-sd-a", "tiny-sd-b"]}) == 1  # extra
    missing_base = {k: v for k, v in good.items() if k != "tiny-sd-a"}
    assert graph_errors(store, graph, loaded, missing_base) == 1  # the base is not resident
    assert graph_errors(store, graph, [*loaded, "tiny-sd-b"], {**good, "tiny-sd-b": []}) == 1  # not needed


def test_model_dtypes_come_from_the_safetensors_headers() -> None:
    store = ensure_models(profile="smoke")
    assert model_dtypes(store, "synthetic-16m") == {"float16"}
    assert model_dtypes(store, "tiny-sd-a") == {"float32"}


def test_full_model_set_skips_every_metric_with_the_reason() -> None:
    rec = Recorder()
    ctx = RunnerContext("t", "spec", {"model_set": "full"}, None, [], rec, logging.getLogger("t"))  # type: ignore[arg-type]
    assert model_set(ctx, "model_set", frozenset({"a_s", "b_count"})) is None
    assert set(rec.skips) == {"a_s", "b_count"} and "not available offline" in rec.skips["a_s"]


class _FakeClient:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def request(self, op: str, params: Any = None, **kw: Any) -> dict[str, Any]:
        self.sent.append(op)
        return {"op": op, "steps": []}


def test_recording_client_keeps_model_loads_in_order_and_delegates() -> None:
    fake = _FakeClient()
    rc = RecordingClient(fake)  # type: ignore[arg-type]
    rc.request("model.list")
    rc.request("model.load", {"name": "a"})
    rc.request("model.load", {"name": "b"})
    assert fake.sent == ["model.list", "model.load", "model.load"]
    assert [r["op"] for r in rc.take_loads()] == ["model.load", "model.load"]
    assert rc.take_loads() == []
    assert rc.sent is fake.sent  # anything else goes to the real client


class _FakeHost:
    def __init__(self, reports: list[SyncReport]) -> None:
        self.reports = reports
        self.calls: list[str] = []

    def sync_state(self) -> SyncReport:
        return self.reports.pop(0) if self.reports else SyncReport(True)

    def adopt_worker_state(self) -> SyncReport:
        self.calls.append("adopt")
        return SyncReport(True)

    def unload(self, name: str) -> None:
        self.calls.append(f"unload {name}")

    def load(self, name: str) -> None:
        self.calls.append(f"load {name}")


def test_reconciler_reloads_corrupt_models_and_adopts_the_rest() -> None:
    host = _FakeHost([SyncReport(False, worker_only=["x"]), SyncReport(False, corrupt=["y"], host_only=["z"])])
    with ms.Reconciler(host, interval_s=0.01) as watcher:  # type: ignore[arg-type]
        deadline = time.monotonic() + 5.0
        while watcher.resolutions < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert host.calls == ["adopt", "unload y", "load y", "adopt"]
    assert watcher.errors == []


# ---- runners against a real worker -------------------------------------------------------------------


def _samples(rec: Recorder, metric: str) -> list[Any]:
    return [s for s in rec.samples if s.metric == metric]


@pytest.mark.subprocess
def test_conflicts_resolve_with_the_watcher_and_stay_open_without_it(worker_argv: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _run("model.state_conflict", {"conflicts": 3, "resolution_window_s": 10}, worker_argv)
    unresolved = _samples(rec, "conflict_unresolved")
    assert [s.labels["kind"] for s in unresolved] == ["unloaded_behind_back", "loaded_behind_back",
                                                      "evicted_by_untracked_load"]
    assert [s.value for s in unresolved] == [0.0, 0.0, 0.0]
    times = [s.value for s in _samples(rec, "conflict_resolution_s")]
    assert len(times) == 3 and all(0.0 <= t < 10.0 for t in times)

    class Idle:  # no watcher: nothing resolves the conflicts, and the runner must say so
        interval_s = 0.0
        resolutions = 0
        errors: list[str] = []

        def __init__(self, host: Any) -> None:
            pass

        def __enter__(self) -> Idle:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(ms, "Reconciler", Idle)
    rec = _run("model.state_conflict", {"conflicts": 2, "resolution_window_s": 0.5}, worker_argv)
    assert [s.value for s in _samples(rec, "conflict_unresolved")] == [1.0, 1.0]
    assert _samples(rec, "conflict_resolution_s") == []
    assert "host_only" in _samples(rec, "conflict_unresolved")[0].labels["open"]


@pytest.mark.subprocess
def test_unloading_is_complete_and_timed(worker_argv: list[str]) -> None:
    rec = _run("model.unloading", {"unloads": 3, "model_gib": [0.0156]}, worker_argv)
    complete = _samples(rec, "unload_complete")
    assert [s.value for s in complete] == [1.0, 1.0, 1.0]
    assert all(s.labels["model"] == "synthetic-16m" and s.labels["size_mib"] == pytest.approx(16, abs=0.01)
               for s in complete)
    times = [s.value for s in _samples(rec, "unload_time_s")]
    assert len(times) == 3 and all(0.0 < t < ms.AGREE_TIMEOUT_S for t in times)


@pytest.mark.subprocess
def test_state_consistency_checks_every_model_after_every_operation(worker_argv: list[str]) -> None:
    rec = _run("model.state_consistency", {"operations": 8, "models": 3, "model_gib": 0.0156, "seed": 5},
               worker_argv)
    samples = _samples(rec, "state_consistent")
    assert len(samples) == 8 * 3
    assert {s.labels["model"] for s in samples} == {"synthetic-16m", "synthetic-16m-v1", "synthetic-16m-v2"}
    assert all(s.value == 1.0 for s in samples)
    assert rec.notes["operations_done"]["restart"] == 1
    assert "operation_errors" not in rec.notes


@pytest.mark.subprocess
def test_placement_is_judged_against_the_hosts_ground_truth(worker_argv: list[str]) -> None:
    rec = _run("model.device_aware_placement", {"model_set": "tiny", "placements": 7, "simulated_devices": 2},
               worker_argv)
    pairs = {(s.labels["model"], s.labels["device"]): s for s in _samples(rec, "compatibility_assessment_error")}
    assert len(pairs) == 7 * 3  # every model against sim:gpu0, sim:gpu1 and the CPU
    # float16 weights on a float32-only device: never suitable, whatever memory it has
    assert pairs["synthetic-16m", "sim:gpu1"].labels["truth"] is False
    assert pairs["tiny-sd-a", "sim:gpu0"].labels["truth"] is True  # 9.6 MiB float32 on an empty 65 MiB device
    assert pairs["synthetic-64m", "sim:gpu1"].labels["truth"] is False  # 64 MiB cannot fit 32 MiB
    for s in pairs.values():  # the error is exactly a disagreement between verdict and truth
        assert s.value == float(s.labels["verdict"] != s.labels["truth"])
    placements = _samples(rec, "unsuitable_placement_detected")
    assert len(placements) == 7
    for s in placements:
        if "error" in s.labels or not s.labels["suitable"]:
            assert s.value == 1.0
