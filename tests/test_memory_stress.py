"""Memory stress and benchmark figures (2.2, 4.2): the statistics against hand-computed values,
and the stress operations against a real worker (allocations really held together, memory back
to baseline afterwards, bad parameters named while the worker keeps serving)."""

from __future__ import annotations

import time

import pytest

from hybrid_assets.runners.memory_stress import recovery_time
from workers.host import WorkerClient, WorkerError
from workers.runtime.memstats import (
    contention_added,
    external_fragmentation,
    fragmentation,
    free_chunks,
    idle_ratio,
    interleaved_baselines,
    scaling_efficiency,
    utilisation_efficiency,
    waste_ratio,
)

MiB = 1 << 20

# Two heaps as glibc's malloc_info reports them. Heap 0: bins of 160 B (one chunk) and up to
# 1056 B (two chunks, 2000 B), fast + rest = 2161 + 5000 -> its top is 7161 - 2161 = 5000 B.
# Heap 1: one chunk of 9000 B in the unsorted bin and nothing else -> top 0. The process-wide
# totals after the heaps are not bins and must not count twice.
MALLOC_INFO = """<malloc version="1">
<heap nr="0">
<sizes>
  <size from="161" to="161" total="161" count="1"/>
  <size from="900" to="1057" total="2000" count="2"/>
  <size from="2000" to="2000" total="0" count="0"/>
</sizes>
<total type="fast" count="1" size="161"/>
<total type="rest" count="3" size="7000"/>
<system type="current" size="100000"/>
</heap>
<heap nr="1">
<sizes>
  <unsorted from="9000" to="9000" total="9000" count="1"/>
</sizes>
<total type="fast" count="0" size="0"/>
<total type="rest" count="1" size="9000"/>
</heap>
<total type="fast" count="1" size="161"/>
<total type="rest" count="4" size="16000"/>
</malloc>
"""


# ---- statistics ------------------------------------------------------------------------------------
def test_idle_ratio_and_utilisation_efficiency() -> None:
    assert idle_ratio(1000, 900) == pytest.approx(0.1)
    assert utilisation_efficiency(1000, 900) == pytest.approx(0.9)
    assert idle_ratio(4096, 4096) == 0.0
    with pytest.raises(ValueError, match="held bytes"):
        idle_ratio(0, 0)
    with pytest.raises(ValueError, match="handed-out"):
        idle_ratio(100, 101)


def test_external_fragmentation() -> None:
    assert external_fragmentation([100, 300, 600]) == pytest.approx(0.4)  # 1 - 600/1000
    assert external_fragmentation([512]) == 0.0  # one hole: nothing scattered
    assert external_fragmentation([]) == 0.0
    assert fragmentation(250, 1000) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="largest free block"):
        fragmentation(2000, 1000)


def test_waste_scaling_and_contention() -> None:
    assert waste_ratio(1000, 950) == pytest.approx(0.05)
    assert waste_ratio(0, 0) == 0.0
    with pytest.raises(ValueError, match="granted"):
        waste_ratio(900, 950)
    assert scaling_efficiency(150.0, 2, 100.0) == pytest.approx(0.75)
    assert scaling_efficiency(1000.0, 10, 100.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one-thread"):
        scaling_efficiency(10.0, 2, 0.0)
    # median of the uncontended 1, 2, 3, 10 is 2.5
    assert contention_added([5.0, 6.0, 7.0], [1.0, 3.0, 2.0, 10.0]) == pytest.approx([2.5, 3.5, 4.5])
    with pytest.raises(ValueError, match="uncontended"):
        contention_added([1.0], [])


def test_interleaved_baselines_use_the_one_thread_runs_around_each_point() -> None:
    points = [(1, 100.0), (2, 150.0), (1, 120.0), (4, 200.0), (1, 80.0), (8, 90.0)]
    assert interleaved_baselines(points) == [(2, 150.0, 110.0), (4, 200.0, 100.0), (8, 90.0, 80.0)]
    with pytest.raises(ValueError, match="no one-thread run before"):
        interleaved_baselines([(2, 10.0), (1, 5.0)])


def test_free_chunks_counts_bins_and_each_heaps_top() -> None:
    largest, total = free_chunks(MALLOC_INFO)
    assert total == 7161 + 9000
    assert largest == 9000  # heap 1's unsorted chunk beats heap 0's 5000-byte top
    assert fragmentation(largest, total) == pytest.approx(1 - 9000 / 16161)
    with pytest.raises(ValueError, match="over its free total"):
        free_chunks(MALLOC_INFO.replace('size="7000"', 'size="100"'))


def test_recovery_time_needs_memory_and_a_run_of_fast_probes() -> None:
    memory = [(9.0, 500), (10.5, 300), (11.0, 90), (12.0, 95)]
    probes = [(9.5, 9.6, 0.1, ""), (10.1, 10.2, 0.01, ""), (10.2, 12.5, None, "TIMEOUT"),
              (10.3, 10.4, 0.01, ""), (10.4, 10.5, 0.01, ""), (10.6, 10.8, 0.01, "")]
    # memory back at 11.0; the first three good probes in a row after the timeout end at 10.8
    assert recovery_time(10.0, memory, probes, memory_mark=100, latency_mark=0.05) == pytest.approx(1.0)
    assert recovery_time(10.0, memory, probes, memory_mark=50, latency_mark=0.05) is None
    assert recovery_time(10.0, memory, probes[:4], memory_mark=100, latency_mark=0.05) is None


# ---- operations against a real worker -------------------------------------------------------------------
def _wait_ended(c: WorkerClient, limit_s: float = 60.0) -> dict:
    deadline = time.monotonic() + limit_s
    samples: list[dict] = []
    while time.monotonic() < deadline:
        r = c.request("memory.stress_poll", timeout=30.0)
        samples += r["samples"]
        if not r["running"]:
            r["samples"] = samples
            return r
        time.sleep(0.2)
    raise AssertionError("the workload did not end")


@pytest.mark.subprocess
def test_concurrent_clients_really_hold_their_allocations_together(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("memory.configure", {"device": "cpu", "budget_bytes": 64 * MiB})
        r = c.request("memory.concurrent_allocate", {"size_bytes": MiB, "clients": 24, "uncontended": 6},
                      timeout=60.0)
        assert r["held_together"] == 24 and r["errors"] == []
        assert len(r["latencies_s"]) == 24 and all(lat is not None and lat > 0 for lat in r["latencies_s"])
        assert len(r["uncontended_s"]) == 6
        assert r["used_before"] == r["used_after"] == 0
        # more clients than the budget holds: the ones left out fail as allocations, not as the request
        tight = c.request("memory.concurrent_allocate", {"size_bytes": 8 * MiB, "clients": 10}, timeout=60.0)
        assert tight["held_together"] == 8 and len(tight["errors"]) == 2
        assert all(e.startswith("OutOfMemoryError") for e in tight["errors"])
        assert c.request("memory.stats")["stats"]["used_bytes"] == 0


@pytest.mark.subprocess
def test_thrash_churns_in_the_background_and_releases_everything(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("memory.configure", {"device": "cpu", "budget_bytes": 128 * MiB})
        started = c.request("memory.thrash_start", {"duration_s": 1.5, "ops_per_s": 400, "size_max_bytes": MiB,
                                                    "max_live": 16, "sample_every_ops": 50}, timeout=60.0)
        assert started["kind"] == "thrash" and started["running"]
        assert c.request("echo", {"payload": "x"})["payload"] == "x"  # the work queue stays free meanwhile
        with pytest.raises(WorkerError, match="already running") as info:
            c.request("memory.pressure_start", {"duration_s": 1, "target_utilization": 0.5})
        assert info.value.code == "INVALID_PARAMS"
        r = _wait_ended(c)
        assert r["error"] is None and r["counters"]["allocations"] > 0 and r["counters"]["frees"] > 0
        metrics = {s["metric"] for s in r["samples"]}
        assert {"allocation_latency_s", "utilisation_efficiency", "external_fragmentation", "waste"} <= metrics
        assert r["stats"]["used_bytes"] == 0 and r["stats"]["live_allocations"] == 0  # back to baseline
        assert c.request("memory.stress_stop")["running"] is False


@pytest.mark.subprocess
def test_pressure_reaches_the_target_and_times_collections(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("memory.configure", {"device": "cpu", "budget_bytes": 8 * MiB})
        c.request("memory.pressure_start", {"duration_s": 1.5, "target_utilization": 0.9,
                                            "pattern": "fragmented_allocation", "sample_interval_s": 0.2},
                  timeout=60.0)
        r = _wait_ended(c)
        assert r["error"] is None
        reached = [s["value"] for s in r["samples"] if s["metric"] == "utilisation"]
        assert reached and max(reached) == pytest.approx(0.9, abs=0.005)
        assert r["counters"]["peak_utilisation_ppm"] >= 895_000
        assert any(s["metric"] == "gc_pause_s" for s in r["samples"])
        assert all(0 <= s["value"] <= 1 for s in r["samples"] if s["metric"] == "gc_recovery_ratio")
        assert r["stats"]["used_bytes"] == 0  # the workload freed what it held when it ended


@pytest.mark.subprocess
def test_throughput_gc_and_scale_points(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("memory.configure", {"device": "cpu", "budget_bytes": 32 * MiB})
        r = c.request("memory.allocation_throughput", {"threads": 3, "seconds": 0.3, "size_bytes": MiB},
                      timeout=60.0)
        assert len(r["per_thread"]) == 3 and all(n > 0 for n in r["per_thread"]) and r["ops"] == sum(r["per_thread"])
        assert c.request("memory.stats")["stats"]["used_bytes"] == 0
        off = c.request("memory.gc_throughput", {"seconds": 0.3, "gc_enabled": False}, timeout=60.0)
        on = c.request("memory.gc_throughput", {"seconds": 0.3, "gc_enabled": True}, timeout=60.0)
        assert off["collections"] == 0 and off["ops"] > 0
        assert on["collections"] > 0 and on["ops"] > 0
        point = c.request("memory.gc_scale_point", {"seconds": 0.5, "live_objects": 20_000}, timeout=60.0)
        assert point["live_tracked"] >= 20_000 and point["pauses"]
        pressured = c.request("memory.gc_scale_point", {"seconds": 0.5, "utilization": 0.8}, timeout=60.0)
        assert pressured["utilisation"] == pytest.approx(0.8, abs=0.001)
        assert c.request("memory.stats")["stats"]["used_bytes"] == 0


@pytest.mark.subprocess
def test_bad_parameters_are_named_and_the_worker_keeps_serving(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        with pytest.raises(WorkerError, match=r"memory\.configure first"):
            c.request("memory.concurrent_allocate", {"size_bytes": MiB})
        c.request("memory.configure", {"device": "cpu", "budget_bytes": 16 * MiB})
        cases = [
            ("memory.thrash_start", {"duration_s": 1, "size_min_bytes": 4096, "size_max_bytes": 1024},
             "size_max_bytes"),
            ("memory.thrash_start", {"duration_s": 0}, "duration_s"),
            ("memory.pressure_start", {"duration_s": 1, "target_utilization": 0.8, "pattern": "zigzag"}, "pattern"),
            ("memory.pressure_start", {"duration_s": 1, "target_utilization": 1.5}, "target_utilization"),
            ("memory.concurrent_allocate", {"size_bytes": MiB, "clients": 0}, "clients"),
            ("memory.allocation_throughput", {"threads": 2, "seconds": -1}, "seconds"),
            ("memory.gc_scale_point", {"seconds": 1, "utilization": 2}, "utilization"),
            ("memory.stress_poll", {}, "no memory stress workload"),
        ]
        for op, params, named in cases:
            with pytest.raises(WorkerError, match=named) as info:
                c.request(op, params)
            assert info.value.code == "INVALID_PARAMS", (op, info.value.message)
        assert c.request("echo", {"payload": "still here"})["payload"] == "still here"
        assert c.request("memory.stats")["stats"]["used_bytes"] == 0
