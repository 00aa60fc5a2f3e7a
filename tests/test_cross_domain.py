"""Cross-domain recovery (1.5) and the cross-domain runners: a broken pipe, damaged frames both ways,
a corrupted model served through its fallback, a lost device's worker replaced by the standby; and the
1.1 / 1.5 / 1.6 / 2.6 / 4.4 runners against real workers with tiny params."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import pytest

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import RunnerContext, runner_spec
from hybrid_assets.runners.cross_domain_link import INBOUND_DAMAGE, OUTBOUND_DAMAGE, settled_status
from hybrid_assets.runners.model_support import ensure_models
from tests.runner_harness import run_runner, values
from workers.host import WorkerClient
from workers.host.errors import WorkerError
from workers.host.failover import ModelFallback, Timeline, WorkerFailover
from workers.host.models import ModelHost
from workers.host.pool import PoolConfig, WorkerPool

FAULTS = "--allow-fault-injection"
REQUEST = {"width": 64, "height": 64, "steps": 2, "output": "digest", "progress": False}


def test_timeline_first_after() -> None:
    tl = Timeline()
    a = tl.mark("x")
    time.sleep(0.001)
    b = tl.mark("x")
    assert tl.first("x") == a and tl.first("x", after=a + 1e-9) == b and tl.first("y") is None


def test_fallback_refuses_itself_as_its_own_fallback() -> None:
    with pytest.raises(ValueError, match="another model"):
        ModelFallback(None, "m", "m")  # type: ignore[arg-type]


# ---- the link ----------------------------------------------------------------------------------------
@pytest.mark.subprocess
def test_broken_pipe_is_detected_and_every_idempotent_request_is_answered_once(worker_argv: list[str]) -> None:
    events: list[Any] = []
    config = PoolConfig(size=1, backoff_initial_s=0.05, retries_for_idempotent=2)
    with WorkerPool([*worker_argv, FAULTS], config) as pool:
        pool.subscribe(events.append)
        assert pool.wait_ready(60)
        client = pool.clients[0]
        answers: dict[int, Any] = {}

        def send(i: int) -> None:
            answers[i] = pool.request("echo", {"payload": f"r{i}"}, timeout=60)

        client.submit("fault.sleep", {"seconds": 0.4, "steps": 2})
        threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while client.in_flight < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        t0 = time.monotonic()
        client.break_pipe()
        for t in threads:
            t.join(60)
        lost = [e for e in events if e.kind == "lost"]
        assert lost and lost[0].at - t0 < 3.0
        assert "pipe broke" in lost[0].detail
        assert answers == {i: {"payload": f"r{i}"} for i in range(5)}
        assert pool.request("ping", {"payload": "after"}, timeout=30) == {"payload": "after"}


@pytest.mark.subprocess
def test_damaged_frames_either_way_are_refused_and_the_link_resyncs(worker_argv: list[str]) -> None:
    with WorkerClient([*worker_argv, FAULTS]).start() as client:
        before = client.request("status")
        for line in INBOUND_DAMAGE:
            client.write_raw(line)
        assert client.request("echo", {"payload": "in"}) == {"payload": "in"}
        after = settled_status(client, before["handled"] + 1)
        assert after["protocol_errors"] - before["protocol_errors"] == len(INBOUND_DAMAGE)
        assert after["handled"] - before["handled"] == 1  # the echo alone: nothing damaged was run
        errors = client.protocol_errors
        pending = client.submit("echo", {"payload": "mine"})
        client.request("fault.corrupt_output", {"chunks": list(OUTBOUND_DAMAGE)})
        assert pending.wait(30) and pending.result() == {"payload": "mine"}
        assert client.protocol_errors - errors == len(OUTBOUND_DAMAGE)
        assert client.request("echo", {"payload": "out"}) == {"payload": "out"}


# ---- models: corruption and device loss ----------------------------------------------------------
@pytest.mark.subprocess
def test_corrupted_model_is_served_by_its_fallback_then_repaired(worker_argv: list[str]) -> None:
    store = ensure_models(profile="smoke")
    with WorkerClient([*worker_argv, FAULTS]).start() as client:
        host = ModelHost(client, store)
        host.configure(cache_mib=512, inference_slots=2)
        with ModelFallback(host, "tiny-sd-a", "tiny-sd-b", verify_interval_s=0.1) as guard:
            assert guard.generate({**REQUEST, "seed": 1})["model"] == "tiny-sd-a"
            t0 = time.monotonic()
            client.request("fault.model_corrupt_resident", {"name": "tiny-sd-a", "seed": 3})
            deadline = time.monotonic() + 60
            while guard.timeline.first("primary_restored", t0) is None and time.monotonic() < deadline:
                guard.generate({**REQUEST, "seed": 2})  # never an error for the user
            detected = guard.timeline.first("corrupt_detected", t0)
            assert detected is not None and detected - t0 < 5.0
            assert guard.timeline.first("primary_restored", t0) is not None
            assert guard.active == "tiny-sd-a"
            assert client.request("model.verify", {"name": "tiny-sd-a"})["intact"]


@pytest.mark.subprocess
def test_lost_primary_worker_hands_its_models_to_the_standby(worker_argv: list[str]) -> None:
    store = ensure_models(profile="smoke")
    with WorkerClient(worker_argv, name="primary").start() as a, WorkerClient(worker_argv, name="standby").start() as b:
        primary, standby = ModelHost(a, store), ModelHost(b, store)
        primary.configure(cache_mib=256)
        standby.configure(cache_mib=256)
        primary.load("tiny-sd-a")
        failover = WorkerFailover(primary, standby, ["tiny-sd-a"])
        assert failover.generate({**REQUEST, "model": "tiny-sd-a"})[0] == "primary"
        assert a.pid is not None
        os.kill(a.pid, signal.SIGKILL)
        served, result = failover.generate({**REQUEST, "model": "tiny-sd-a", "seed": 4})
        assert served == "standby" and result["model"] == "tiny-sd-a"
        kinds = [k for k, _, _ in failover.timeline.events]
        assert kinds[:2] == ["primary_lost", "takeover_started"] and "standby_active" in kinds


# ---- the runners with tiny params ----------------------------------------------------------------
_run, _values = run_runner, values


@pytest.mark.subprocess
@pytest.mark.slow
def test_link_runner_measures_each_break_and_each_damaged_frame(worker_argv: list[str]) -> None:
    rec = _run("cross_domain.communication_failure_recovery",
               {"failure_type": "stdin_stdout_pipe_break", "failures": 2, "in_flight_requests": 3}, worker_argv)
    assert len(_values(rec, "pipe_break_detection_s")) == 2 and _values(rec, "request_lost_count") == [0, 0]
    assert all(0 < v < 15 for v in _values(rec, "pipe_reestablishment_s"))
    rec = _run("cross_domain.communication_failure_recovery",
               {"failure_type": "json_serialization_corruption", "failures": 1, "corrupted_messages_per_failure": 3},
               worker_argv)
    assert _values(rec, "corrupted_message_accepted_detected") == [0.0] * 6
    assert _values(rec, "protocol_fallback_ok") == [1.0]
    with pytest.raises(ValueError, match="unknown failure_type"):
        _run("cross_domain.communication_failure_recovery", {"failure_type": "smoke_signals"}, worker_argv)


@pytest.mark.subprocess
@pytest.mark.slow
def test_multi_user_runner_compares_every_output_with_the_request_alone(worker_argv: list[str]) -> None:
    rec = _run("cross_domain.multi_user_inference",
               {"concurrent_users": [1, 5], "operations_per_user": [1], "operation_types": ["identical_operations"]},
               worker_argv)
    assert len(_values(rec, "output_mismatch_detected")) == 6
    assert _values(rec, "output_mismatch_detected") == [0.0] * 6
    eff = _values(rec, "throughput_scaling_efficiency_ratio")
    # one point (5 users); its value depends on the machine (a one-request single-user baseline is
    # noisy under load), so only its presence and sign are asserted here
    assert len(eff) == 1 and eff[0] > 0
    with pytest.raises(ValueError, match="unknown operation type"):
        _run("cross_domain.multi_user_inference", {"concurrent_users": 1, "operation_types": ["chaos"]}, worker_argv)


@pytest.mark.subprocess
@pytest.mark.slow
def test_pipeline_runner_builds_on_fresh_workers_and_checks_state(worker_argv: list[str]) -> None:
    rec = _run("cross_domain.device_to_inference_pipeline", {"pipeline_runs": 2, "requests": 2}, worker_argv)
    assert len(_values(rec, "pipeline_latency_s")) == 2
    assert _values(rec, "cross_domain_state_mismatch_detected") == [0.0, 0.0]
    stages = {s.labels["stage"] for s in rec.samples if s.metric == "stage_latency_s"}
    assert stages == {"discovery", "pool_allocation", "placement_and_load", "first_inference"}
    domains = {s.labels["domain"] for s in rec.samples if s.metric == "domain_resource_utilization_ratio"}
    assert domains == {"device", "worker", "model", "memory"}
    assert _values(rec, "pipeline_request_error") == [0.0] * 4  # 2 workflows + 2 x 1 request


def test_runners_refuse_unknown_variants_by_name() -> None:
    for runner, params, match in (
        ("cross_domain.cascade_failure_recovery", {"initial_failure": "meteor"}, "unknown initial_failure"),
        ("processing.workflow_latency", {"workflow": "dance", "runs": 1}, "unknown workflow"),
    ):
        spec = runner_spec(runner)
        assert spec.fn is not None
        ctx = RunnerContext("t", "smoke", params, None, ["false"], Recorder(),  # type: ignore[arg-type]
                            logging.getLogger("test"))
        with pytest.raises((ValueError, WorkerError), match=match):
            spec.fn(ctx)


@pytest.mark.subprocess
@pytest.mark.slow
def test_mixed_operations_are_judged_from_the_workers_dispatch_trace(worker_argv: list[str]) -> None:
    rec = _run("cross_domain.mixed_operation_concurrency",
               {"operation_mix": {"inference_operations": 0.5, "model_loading_operations": 0.2,
                                  "postprocessing_operations": 0.2, "system_maintenance_operations": 0.1},
                "concurrent_users": [3], "operations": 12}, worker_argv)
    assert len(_values(rec, "cross_operation_interference_detected")) == 12
    assert _values(rec, "resource_conflict_error") == [0.0] * 12
    # one dispatch decision per job the worker ran in the level
    assert len(_values(rec, "priority_inversion_detected")) == 12
    with pytest.raises(ValueError, match="unknown kinds"):
        _run("cross_domain.mixed_operation_concurrency", {"operation_mix": {"gardening": 1.0}}, worker_argv)
