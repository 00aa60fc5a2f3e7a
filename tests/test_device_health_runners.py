"""The 4.1 device monitoring and health runners: the labelled trace generator and its scoring against
hand-computed fixtures, the event helper, and each runner against a real worker with tiny params."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from hybrid_assets.runners.device_events import DeviceEvents, Seen
from hybrid_assets.runners.device_monitoring import _intervals
from hybrid_assets.runners.device_traces import (
    CRITICAL_TEMPERATURE_C,
    FAILING_PATTERNS,
    Score,
    Trace,
    cut_at_failure,
    generate_traces,
    score,
    summarise,
)
from tests.runner_harness import run_runner as _run
from tests.runner_harness import values as _values
from workers.protocol.messages import Event

# ---- trace generator ------------------------------------------------------------------------


def test_traces_are_labelled_seeded_and_end_before_the_failure() -> None:
    traces = generate_traces(60, 0.5, seed=3)
    assert len(traces) == 60 and sum(t.failing for t in traces) == 30
    assert all(t.failing == (t.pattern in FAILING_PATTERNS) for t in traces)
    assert {t.pattern for t in traces} >= {"thermal_ramp", "ecc_accumulation", "stationary", "warm_spike"}
    again = generate_traces(60, 0.5, seed=3)
    assert [t.readings for t in again] == [t.readings for t in traces]  # replayable
    assert [t.readings for t in generate_traces(60, 0.5, seed=4)] != [t.readings for t in traces]
    for t in traces:
        temps = [r["temperature_c"] for r in t.readings]
        assert temps and max(temps) < CRITICAL_TEMPERATURE_C  # a prediction must come before the failure
        ecc = [r["ecc_correctable"] for r in t.readings]
        assert ecc == sorted(ecc)  # a counter
        assert all(r["ecc_uncorrectable"] == 0.0 for r in t.readings)
        assert set(t.readings[0]) == {"temperature_c", "power_w", "ecc_correctable", "ecc_uncorrectable", "fan_pct"}
        if not t.failing:
            assert len(t.readings) == 40


def test_failing_traces_show_their_precursor_and_healthy_ones_are_noisy() -> None:
    traces = generate_traces(200, 0.5, seed=11)
    for t in traces:
        temps = [r["temperature_c"] for r in t.readings]
        ecc = [r["ecc_correctable"] for r in t.readings]
        if t.pattern == "thermal_ramp":
            assert temps[-1] - min(temps[:8]) > 8.0  # heats towards the runaway
        elif t.pattern == "ecc_accumulation":
            assert ecc[-1] > ecc[0]
        elif t.pattern == "stationary":
            assert max(temps) - min(temps) > 0.5  # noise, not a flat line
            assert max(temps) - min(temps) < 15.0
        elif t.pattern == "warm_spike":
            assert abs(temps[-1] - temps[0]) < 8.0 and max(temps) - temps[0] > 3.0  # returns


def test_bad_generator_input_is_named() -> None:
    with pytest.raises(ValueError, match="failing_fraction"):
        generate_traces(10, 1.5, seed=1)
    with pytest.raises(ValueError, match="traces must be > 0"):
        generate_traces(0, 0.5, seed=1)


def test_cut_at_failure_keeps_the_readings_before_the_first_critical_one() -> None:
    readings = [{"temperature_c": t} for t in (80.0, 85.0, 90.0, 70.0)]
    assert cut_at_failure(readings) == readings[:2]
    assert cut_at_failure(readings[:2]) == readings[:2]


def test_scoring_against_hand_computed_outcomes() -> None:
    assert score(True, True) == Score(correct=True, false_alarm=False, missed=False)
    assert score(False, False) == Score(correct=True, false_alarm=False, missed=False)
    assert score(False, True) == Score(correct=False, false_alarm=True, missed=False)
    assert score(True, False) == Score(correct=False, false_alarm=False, missed=True)
    # 3 failing (2 predicted), 5 healthy (1 false alarm): 6 of 8 correct
    cases = [(True, True), (True, True), (True, False), (False, True)] + [(False, False)] * 4
    scored = [(Trace(i, f, "x"), score(f, p)) for i, (f, p) in enumerate(cases)]
    assert summarise(scored) == {"traces": 8, "accuracy": 0.75, "false_alarm_rate": 0.2, "miss_rate": 1 / 3,
                                 "failing": 3, "healthy": 5}


# ---- event helpers --------------------------------------------------------------------------


class _FakeClient:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def on_status(self, listener: Any) -> None:
        self.listeners.append(listener)

    def emit(self, data: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(Event(event="status", data=data))


def test_device_events_waits_for_a_match_and_times_out_without_one() -> None:
    client = _FakeClient()
    events = DeviceEvents(client, kinds={"alert"})  # type: ignore[arg-type]
    client.emit({"domain": "memory", "kind": "alert", "device": "a"})  # not a device event
    client.emit({"domain": "device", "kind": "health", "devices": []})  # not a kind asked for
    assert events.mark() == 0
    assert events.wait_for(0, lambda s: True, timeout=0.05) is None
    threading.Timer(0.05, client.emit, [{"domain": "device", "kind": "alert", "device": "b"}]).start()
    seen = events.wait_for(0, lambda s: s.data["device"] == "b", timeout=5.0)
    assert seen is not None and seen.kind == "alert"
    assert events.since(0, "alert") == [seen] and events.since(1) == []


def test_update_intervals_per_device_and_metric() -> None:
    ticks = [Seen(10.0, {"devices": [{"id": "cpu", "utilisation": 0.1}, {"id": "g", "temperature_c": 50}]}),
             Seen(11.0, {"devices": [{"id": "cpu", "utilisation": 0.2}]}),
             Seen(12.5, {"devices": [{"id": "cpu", "utilisation": 0.2}, {"id": "g", "temperature_c": 51}]})]
    found = _intervals(ticks, ("utilisation", "temperature_c"))
    assert found == {("cpu", "utilisation"): [1.0, 1.5], ("g", "temperature_c"): [2.5]}


# ---- runners against a real worker ------------------------------------------------------------


@pytest.mark.subprocess
def test_hot_refresh_and_incremental_discovery(worker_argv: list[str]) -> None:
    rec = _run("device.hot_discovery_refresh", {"warm_refreshes": 3, "simulated_devices": 2}, worker_argv)
    assert len(_values(rec, "refresh_latency_s")) == 3 and _values(rec, "refresh_error") == [0.0] * 3
    assert _values(rec, "refresh_device_count_match") == [1.0] * 3
    hits = [s for s in rec.samples if s.metric == "refresh_cache_hit"]
    assert len(hits) == 9 and {s.labels["device"] for s in hits} == {"cpu:0", "sim:gpu0", "sim:gpu1"}
    assert all(s.value == 1.0 for s in hits if s.labels["kind"] == "cpu")  # the worker says so for the CPU

    rec = _run("device.incremental_discovery", {"changes": 6, "changes_per_min": None,
                                                "change_kinds": ["add", "remove"], "detection_window_s": 10},
               worker_argv)
    assert _values(rec, "change_missed") == [0.0] * 6 and _values(rec, "spurious_change_detected") == [0.0] * 6
    assert len(_values(rec, "change_detection_s")) == 6 and rec.notes["inventory_matches_worker"] is True
    assert [s.labels["change"] for s in rec.samples if s.metric == "change_detection_s"] == ["added", "removed"] * 3


@pytest.mark.subprocess
def test_monitoring_runners_record_intervals_overhead_and_cadence(worker_argv: list[str]) -> None:
    rec = _run("device.monitoring_updates", {"observe_s": 1.2, "monitor_interval_s": 0.2, "simulated_devices": 1,
                                             "sensor_change_every_s": 0.5}, worker_argv)
    intervals = [s for s in rec.samples if s.metric == "critical_update_interval_s"]
    assert {s.labels["device"] for s in intervals} == {"cpu", "sim:gpu0"} and all(v.value > 0 for v in intervals)
    assert _values(rec, "update_delivery_latency_s")  # a changed sensor reached the host

    rec = _run("device.monitoring_overhead", {"pairs": 2, "workload": "text_to_image", "monitor_interval_s": 0.1,
                                              "simulated_devices": 1, "stand_in_target_s": 0.1,
                                              "stand_in_matrix_n": 64}, worker_argv)
    on, off, ratio = (_values(rec, m) for m in ("workload_monitored_s", "workload_unmonitored_s",
                                                "monitoring_overhead_ratio"))
    assert len(ratio) == 2 and ratio == pytest.approx([(a - b) / b for a, b in zip(on, off, strict=True)])
    assert "matmul stand-in" in rec.notes["reference_workload"]

    rec = _run("device.health_assessment_cadence", {"observe_s": 0.8, "simulated_devices": 3,
                                                    "monitor_interval_s": 0.2}, worker_argv)
    per_device = {s.labels["device"] for s in rec.samples if s.metric == "health_assessment_interval_s"}
    assert per_device == {"cpu", "sim:gpu0", "sim:gpu1", "sim:gpu2"} and _values(rec, "health_assessment_s")


@pytest.mark.subprocess
def test_alerting_and_intervention_see_every_injected_fault(worker_argv: list[str]) -> None:
    params = {"devices": 2, "monitor_interval_s": 0.1}
    rec = _run("device.critical_alerting", {"alerts": 4, **params}, worker_argv)
    assert _values(rec, "alert_missed") == [0.0] * 4 and _values(rec, "spurious_alert_detected") == [0.0] * 4
    kinds = [s.labels["kind"] for s in rec.samples if s.metric == "alert_latency_s"]
    assert sorted(kinds) == ["ecc_uncorrectable", "memory", "power", "temperature"]

    rec = _run("device.health_intervention", {"injections": 4, **params}, worker_argv)
    assert _values(rec, "intervention_missed") == [0.0] * 4 and len(_values(rec, "intervention_s")) == 4
    assert rec.notes["devices_not_restored_after_healing"] == 0


@pytest.mark.subprocess
def test_failure_prediction_scores_the_runtimes_own_predictions(worker_argv: list[str]) -> None:
    rec = _run("device.failure_prediction", {"traces": 12, "failing_fraction": 0.5, "playback": "accelerated",
                                             "seed": 5}, worker_argv)
    correct = [s for s in rec.samples if s.metric == "failure_prediction_correct"]
    assert len(correct) == 12
    assert len(_values(rec, "failure_prediction_missed")) == 6
    assert len(_values(rec, "failure_prediction_false_alarm")) == 6
    for s in correct:  # each 0/1 agrees with its label and the prediction the worker sent
        predicted = s.labels["predicted_at"] is not None
        assert s.value == float(predicted == (s.labels["label"] == "failing"))
        assert not s.labels["alerted"]  # the replay ends before the failure itself
    thermal = [s for s in correct if s.labels["pattern"] == "thermal_ramp"]
    assert all(s.labels["predicted_at"] is None or s.labels["predicted_at"] < s.labels["readings"] for s in thermal)
    assert rec.notes["prediction_summary"]["traces"] == 12


@pytest.mark.subprocess
def test_device_benchmark_reports_measured_figures() -> None:
    from workers.bench import devices as bench

    r = bench.run(devices=3, reps=1, pairs=2, run_s=0.05)
    assert r["discovery"]["found"] == 3 and all(v > 0 for v in r["discovery"]["median_s"].values())
    assert [m["interval_s"] for m in r["monitoring"]] == [1.0, 0.1]
    for m in r["monitoring"]:
        assert len(m["ratios"]) == 2 and m["median_on_s"] > 0
    assert "every 0.1 s: median ratio" in bench.render(r)
