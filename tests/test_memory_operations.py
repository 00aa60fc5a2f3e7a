"""Memory operations over the protocol: real allocations, pressure announced as status events,
out-of-memory as an explicit per-allocation error, bad requests named."""

from __future__ import annotations

import pytest

from workers.host import WorkerClient, WorkerError

pytestmark = pytest.mark.subprocess

MiB = 1 << 20


def test_allocations_pressure_events_and_oom(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("memory.configure", {"device": "cpu", "budget_bytes": 20 * MiB})
        r = c.request("memory.allocate", {"sizes": [4 * MiB] * 4 + [2 * MiB], "free": False, "tag": "fill"})
        assert [a["bytes"] for a in r["allocations"]] == [4 * MiB] * 4 + [2 * MiB]
        assert all(a["latency_s"] > 0 and "id" in a for a in r["allocations"])
        assert r["stats"]["utilisation"] == pytest.approx(0.9) and r["stats"]["pressure"] == "DEGRADED"
        refused = c.request("memory.allocate", {"sizes": [MiB], "free": False, "critical": False})
        assert refused["allocations"][0]["error"].startswith("DegradedModeError")  # degraded mode at 90 %
        over = c.request("memory.allocate", {"sizes": [4 * MiB], "free": False})
        assert over["allocations"][0]["error"].startswith("OutOfMemoryError")
        assert over["stats"]["used_bytes"] == 18 * MiB  # the failed allocation left nothing
        c.request("ping")  # events travel before later answers
        levels = [e.data["level"] for e in c.status_events]
        assert levels == ["WARNING", "DEGRADED"]
        stats = c.request("memory.free", {"tag": "fill"})["stats"]
        assert stats["used_bytes"] == 0 and stats["pressure"] == "NORMAL"  # back to baseline
        timed = c.request("memory.allocate", {"sizes": [MiB] * 3, "baseline": True})
        assert all(a["free_latency_s"] > 0 and a["baseline_s"] > 0 for a in timed["allocations"])
        with pytest.raises(WorkerError, match=r"memory\.configure first") as info:
            c.request("memory.stats", {"device": "cuda:7"})
        assert info.value.code == "INVALID_PARAMS"
        with pytest.raises(WorkerError, match=r"does not exist|unknown device"):
            c.request("memory.configure", {"device": "cuda:7"})
        with pytest.raises(WorkerError, match="still holds 1 allocations"):
            c.request("memory.allocate", {"sizes": [MiB], "free": False})
            c.request("memory.configure", {"device": "cpu", "budget_bytes": MiB})
        assert c.request("ping") == {"payload": ""}  # and it keeps serving


def test_gc_workload_times_collections_and_frees_its_garbage(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        r = c.request("memory.gc_workload", {"duration_s": 1.0, "garbage_mib_per_s": 32}, timeout=30)
        assert len(r["recovered"]) >= 2 and min(r["recovered"]) >= 0.95  # full collections free the cycles
        assert r["pauses"] and all(p >= 0 for _, p in r["pauses"])
        assert r["freed_bytes"] == r["made_bytes"] > 0  # nothing it made outlives the final collection
        assert r["gc_frozen"] > 10000  # torch's import-time objects are out of the collector's way
        with pytest.raises(WorkerError, match="must be > 0"):
            c.request("memory.gc_workload", {"duration_s": 0})
