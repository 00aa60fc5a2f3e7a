"""The queue and batch runners: their analysis on hand-made traces (inversions, idle slots, starvation, late
rejections, aggregation disagreements, burst schedules), then each runner against a real worker with tiny
params, producing only its declared metrics, with nothing lost."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest

from hybrid_assets.runners.batch_scheduling import (
    aggregation_errors,
    analyse_dispatch,
    batch_priorities,
    expected_digest,
    starved_batches,
)
from hybrid_assets.runners.batch_support import BatchCall
from hybrid_assets.runners.queue_burst import schedule
from hybrid_assets.runners.queue_overflow import HIGH, NORMAL, _inversions, _late_rejections
from tests.runner_harness import run_runner, values


def _entry(key: str, prio: int, enq: float, start: float | None, end: float, slot: int = 0,
           outcome: str = "ok") -> dict[str, Any]:
    return {"key": key, "priority": prio, "enqueued_s": enq, "started_s": start, "ended_s": end, "slot": slot,
            "outcome": outcome}


def test_dispatch_analysis_finds_an_inversion_and_an_idle_slot() -> None:
    entries = [_entry("a", 5, 0.0, 0.0, 1.0), _entry("b", 5, 0.1, 1.0, 2.0), _entry("c", 1, 0.5, 2.0, 3.0),
               _entry("d", 5, 2.5, 3.5, 4.0)]
    out = {d["key"]: d for d in analyse_dispatch(entries, {}, tolerance=0.02)}
    assert out["b"]["inversion"] and not out["c"]["inversion"]  # c (priority 1) waited while b ran first
    assert out["d"]["idle"] and out["d"]["idle_gap_s"] == pytest.approx(0.5)  # slot free at 3.0, d waited since 2.5
    assert not out["a"]["idle"] and not out["b"]["idle"]


def test_batch_items_wait_from_the_batch_admission() -> None:
    # batch x (priority 1) admitted at 0.0 but its item only fed at 1.5; y's item (priority 5) ran at 1.0
    entries = [_entry("y/0", 5, 0.2, 1.0, 2.0), _entry("x/0", 1, 1.5, 2.0, 3.0)]
    without = {d["key"]: d for d in analyse_dispatch(entries, {}, 0.02)}
    with_batch = {d["key"]: d for d in analyse_dispatch(entries, {"x/0": 0.0, "y/0": 0.1}, 0.02)}
    assert not without["y/0"]["inversion"] and with_batch["y/0"]["inversion"]


def test_starvation_needs_a_later_batch_of_same_or_lower_priority_finishing_first() -> None:
    entries = [_entry("2/0", 5, 0.0, 0.1, 1.0), _entry("1/0", 5, 0.0, 1.0, 2.0), _entry("3/0", 1, 0.0, 2.0, 3.0)]
    batches = {"1": (5, 0.0), "2": (5, 0.05), "3": (1, 0.1)}
    assert starved_batches(entries, batches) == {"1": True, "2": False, "3": False}


def test_batch_priorities_are_distinct_and_named_beyond_ten() -> None:
    assert batch_priorities(3) == [1, 2, 3] and batch_priorities(10) == list(range(10))
    with pytest.raises(ValueError, match="at most 10"):
        batch_priorities(11)


class _Pending:
    def __init__(self, result: Any = None, error: Any = None) -> None:
        self.done = True
        self._r, self._e = result, error

    def result(self) -> Any:
        if self._e is not None:
            raise self._e
        return self._r


def _sent(i: int, answered: float, *, ok: bool = True, prio: int = NORMAL, seq: int = 0, started: float = 0.0) -> Any:
    from hybrid_assets.runners.queue_support import Sent
    from workers.host.errors import WorkerError

    result = {"job": {"seq": seq, "started_s": started}} if ok else None
    error = None if ok else WorkerError("QUEUE_FULL", "full", True, i, "job.run", 0.5)
    return Sent(i, "job.run", "simple", prio, 0.0, 0.0, _Pending(result, error), answered)  # type: ignore[arg-type]


def test_a_rejection_answered_after_a_later_request_completed_is_late() -> None:
    sents = [_sent(0, 1.0, ok=False), _sent(1, 0.5), _sent(2, 0.2, ok=False)]
    assert _late_rejections(sents) == {0: True, 2: False}


def test_inversions_count_later_normal_requests_started_first() -> None:
    high = _sent(0, 1.0, prio=HIGH, seq=0, started=2.0)
    done = [(high, high.pending.result()), *[(s, s.pending.result()) for s in
            (_sent(1, 1.0, seq=1, started=1.0), _sent(2, 1.0, seq=2, started=3.0))]]
    assert [n for _, n in _inversions(done)] == [1]


def _finished_call(size: int, tamper: str = "") -> BatchCall:
    call = BatchCall(5, size)
    call.seed_base = 100
    call.sent_items = [{"op": "inference.run", "params": {"model": "m", "steps": 1}, "key": f"k{i}"}
                       for i in range(size)]
    items = [{"index": i, "key": f"k{i}", "op": "inference.run", "status": "ok", "seed": 100 + i, "model": "m",
              "params_sha256": expected_digest({"model": "m", "steps": 1}, 100 + i), "sha256": [f"d{i}"]}
             for i in range(size)]
    call.events = [dict(it) for it in items]
    if tamper == "seed":
        items[1]["seed"] = 7
    if tamper == "duplicate":
        items[2] = dict(items[1])
    res = {"total": size, "ok": size, "failed": 0, "cancelled": 0, "not_run": 0, "complete": True, "pending": [],
           "items": items}
    res["aggregate_sha256"] = hashlib.sha256(msgspec.json.encode(
        [[it["index"], it["status"], it["sha256"]] for it in items])).hexdigest()
    if tamper == "count":
        res["ok"] = size - 1
    call.result = res
    return call


def test_aggregation_check_names_each_disagreement() -> None:
    assert aggregation_errors(_finished_call(4))[:2] == (0, 0)
    assert aggregation_errors(_finished_call(4, "seed"))[2] == ["seed[1]"]
    assert "status_counts" in aggregation_errors(_finished_call(4, "count"))[2]
    lost, _, what = aggregation_errors(_finished_call(4, "duplicate"))
    assert lost == 2 and "order" in what  # index 2 missing and index 1 twice


def test_burst_schedule_spaces_onsets_by_the_interval() -> None:
    arrivals, bursts = schedule(10, 5, [1, 2], 3, warm_s=2)
    assert [(b.onset, b.end) for b in bursts] == [(2, 3), (5, 7)]
    in_burst = [t for t, b in arrivals if b == 0]
    assert len(in_burst) == 50 and sum(1 for _, b in arrivals if b == -1) == 20 + 20
    with pytest.raises(ValueError, match="unknown step"):
        _run("processing.batch_workflow_scaling", {"batch_sizes": [2], "step": "nope", "image_px": 64}, [])


# ---- against real workers ---------------------------------------------------------------------------------

_run, _values = run_runner, values


@pytest.mark.subprocess
def test_queue_overflow_runner_rejects_explicitly_and_normalises(worker_argv: list[str]) -> None:
    rec = _run("processing.queue_overflow", {"queue_capacity": 3, "injection_rates_rps": [200],
                                             "request_complexity": "simple_inference", "step_duration_s": 0.2,
                                             "inference_steps": 1, "calibration_requests": 1}, worker_argv)
    lost = _values(rec, "request_lost_error")
    assert len(lost) == 40 and max(lost) == 0.0
    [count] = [s for s in rec.samples if s.metric == "rejected_count"]
    # Capacity 3, one at a time, 40 sent in 0.2 s: most are refused (29 on a quiet machine, more when loaded);
    # every request is either refused or completed.
    assert count.value >= 20 and count.value + count.labels["completed"] == count.labels["sent"] == 40
    assert max(_values(rec, "rejection_malformed_error")) == 0.0
    assert _values(rec, "queue_normalized_ok") == [1.0]
    assert max(_values(rec, "priority_inversion_count"), default=0.0) == 0.0
    assert len(_values(rec, "memory_high_water_growth_mb")) == 1
    # One bound ratio per completed request, labelled with its position: jobs ahead at admission and
    # later-admitted jobs that overtook it (the bound counts both).
    ratios = [s for s in rec.samples if s.metric == "response_time_over_queue_bound_ratio"]
    assert len(ratios) == len(_values(rec, "response_time_s")) > 0
    assert all(s.labels["overtaken_by"] >= 0 and s.labels["depth_at_admission"] >= 0 and s.value > 0 for s in ratios)


@pytest.mark.subprocess
def test_batch_runners_prepare_schedule_and_aggregate(worker_argv: list[str]) -> None:
    rec = _run("processing.batch_preparation", {"batch_size": 3, "concurrent_batches": [2],
                                                "inference_types": ["text_to_image", "controlnet"]}, worker_argv)
    assert len(_values(rec, "batch_preparation_s")) == 4
    rec = _run("processing.concurrent_batch_scheduling", {"concurrent_batches": 2, "batch_sizes": [2],
                                                          "inference_types": ["text_to_image"], "rounds": 1,
                                                          "probe_interval_s": 0.05}, worker_argv)
    assert max(_values(rec, "priority_inversion_detected")) == 0.0
    assert len(_values(rec, "batch_starved_detected")) == 2
    rec = _run("processing.batch_aggregation", {"batch_sizes": [2], "concurrent_batches": [2],
                                                "inference_types": ["text_to_image"]}, worker_argv)
    assert _values(rec, "batch_results_lost_count") == [0.0, 0.0]
    assert _values(rec, "aggregation_error_count") == [0.0, 0.0]


@pytest.mark.subprocess
def test_batch_workflow_runners_measure_throughput_and_scaling(worker_argv: list[str]) -> None:
    rec = _run("processing.batch_workflow", {"batch_sizes": [2], "concurrent_batches": [2],
                                             "inference_types": ["text_to_image"], "min_items": 4}, worker_argv)
    assert len(_values(rec, "batch_item_error")) == 4 and max(_values(rec, "batch_item_error")) == 0.0
    assert _values(rec, "concurrent_batches_admitted_count") == [2.0]  # one run reaches min_items
    assert min(_values(rec, "batch_throughput_per_min")) > 0
    rec = _run("processing.batch_workflow_scaling", {"batch_sizes": [3], "step": "standard_enhancement",
                                                     "image_px": 32, "single_runs": 1}, worker_argv)
    assert len(_values(rec, "batch_scaling_efficiency_ratio")) == 1


@pytest.mark.subprocess
def test_burst_runner_watches_each_burst(worker_argv: list[str]) -> None:
    rec = _run("processing.burst_load", {"baseline_rps": 4, "burst_magnitude_x": 10, "burst_durations_s": [0.3],
                                         "burst_interval_s": 1, "inference_steps": 1, "warm_s": 1, "pairs": 2,
                                         "max_watch_s": 30}, worker_argv)
    assert len(_values(rec, "scaling_response_s")) == 1 and len(_values(rec, "baseline_recovery_s")) == 1
    assert max(_values(rec, "request_lost_error")) == 0.0
    assert max(_values(rec, "output_mismatch_error")) == 0.0
