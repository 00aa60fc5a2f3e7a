"""Simulated devices in a real worker: hot add/removal, disconnection during work, failover through the
host router, memory released with the device, health monitoring and its alerts, bad input named."""

from __future__ import annotations

import time

import pytest

from workers.host import WorkerClient, WorkerError
from workers.host.devices import DeviceRouter
from workers.protocol.messages import ErrorCode

pytestmark = pytest.mark.subprocess

MiB = 1 << 20


def _sims(n: int, **extra: object) -> dict[str, object]:
    return {"devices": [{"name": f"sim:gpu{i}", "memory_bytes": 64 * MiB, **extra} for i in range(n)]}


def test_removal_and_disconnection_under_work_fail_explicitly_or_fail_over(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("devices.configure", _sims(3))
        long = c.submit("device.run", {"device": "sim:gpu0", "iterations": 10**7, "matrix_n": 32,
                                       "working_set_bytes": 8 * MiB})
        queued = c.submit("device.run", {"device": "sim:gpu0", "iterations": 1})
        deadline = time.monotonic() + 20
        while c.request("devices.list")["devices"][1]["memory_used"] == 0:  # wait until it runs and holds memory
            assert time.monotonic() < deadline
            time.sleep(0.01)
        change = c.request("devices.remove", {"name": "sim:gpu0"})
        assert change["failed_requests"] == 2 and change["released_allocations"] == 1
        for pending in (long, queued):
            assert pending.wait(10), "a request on a removed device must not hang"
            with pytest.raises(WorkerError) as lost:
                pending.result()
            assert lost.value.code == ErrorCode.DEVICE_LOST and lost.value.retryable
        listed = c.request("devices.list")
        assert "sim:gpu0" not in listed["memory_managers"]  # nothing stays bound to the removed device
        assert [d["id"] for d in listed["devices"] if d["kind"] == "simulated"] == ["sim:gpu1", "sim:gpu2"]

        # through the router the same loss is a failover, and a loss of everything is CPU-only work
        router = DeviceRouter(c, ["sim:gpu1", "sim:gpu2"])
        work = {"iterations": 2000, "matrix_n": 64}
        pending_result: list[object] = []
        import threading

        t = threading.Thread(target=lambda: pending_result.append(router.run(work, device="sim:gpu1")))
        t.start()
        time.sleep(0.05)
        c.request("devices.disconnect", {"name": "sim:gpu1", "mode": "hardware_disconnect"})
        t.join(30)
        routed = pending_result[0]
        assert routed.device in ("sim:gpu1", "sim:gpu2")  # finished before the loss, or failed over
        if routed.device == "sim:gpu2":
            assert routed.attempts == [("sim:gpu1", ErrorCode.DEVICE_LOST)]
        c.request("devices.disconnect", {"name": "sim:gpu2", "mode": "power_failure"})
        c.request("ping")  # the change event is read before this answer
        degraded = router.run({"iterations": 1})
        assert degraded.device == "cpu" and degraded.degraded
        c.request("devices.reconnect", {"name": "sim:gpu2"})
        c.request("ping")
        assert router.run({"iterations": 1}).device == "sim:gpu2"  # reintegrated
        changes = [(e.data["change"], e.data["device"]) for e in c.status_events if e.data.get("kind") == "change"]
        assert changes[-4:] == [("removed", "sim:gpu0"), ("disconnected", "sim:gpu1"),
                                ("disconnected", "sim:gpu2"), ("reconnected", "sim:gpu2")]


def test_loading_interrupted_leaves_no_half_loaded_model(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("devices.configure", _sims(1))
        done = c.request("device.run", {"device": "sim:gpu0", "workload": "load", "weights_bytes": 16 * MiB,
                                        "model": "a"})
        assert done["workload"] == "load"
        assert c.request("memory.stats", {"device": "sim:gpu0"})["stats"]["used_bytes"] == 16 * MiB
        with pytest.raises(WorkerError, match=r"OutOfMemoryError|out of memory|budget"):
            c.request("device.run", {"device": "sim:gpu0", "workload": "load", "weights_bytes": 80 * MiB,
                                     "model": "b"})
        stats = c.request("memory.stats", {"device": "sim:gpu0"})["stats"]
        assert stats["used_bytes"] == 16 * MiB  # the failed load released every chunk it had written
        c.request("devices.disconnect", {"name": "sim:gpu0", "mode": "driver_failure"})
        with pytest.raises(WorkerError) as gone:
            c.request("memory.stats", {"device": "sim:gpu0"})
        assert gone.value.code == ErrorCode.INVALID_PARAMS  # the device's memory went with it
        listed = next(d for d in c.request("devices.list")["devices"] if d["id"] == "sim:gpu0")
        assert listed["state"] == "driver_error" and listed["models"] == []


def test_discovery_health_monitoring_and_bad_input(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("devices.configure", _sims(5, dtypes=["float32", "bfloat16", "not_a_dtype"]))
        found = c.request("discover_devices", {}, timeout=120)
        sims = [d for d in found["devices"] if d["kind"] == "simulated"]
        assert len(sims) == 5 and all(d["dtypes"] == ["float32", "bfloat16"] for d in sims)  # claims verified
        again = c.request("discover_devices", {"use_cache": True})
        assert [d.get("cached", False) for d in again["devices"] if d["kind"] != "simulated"] == [True]

        c.request("devices.monitor", {"interval_s": 0.1})
        c.request("devices.set_health", {"name": "sim:gpu3", "readings": {"temperature_c": 96}})
        with pytest.raises(WorkerError) as drained:
            c.request("device.run", {"device": "sim:gpu3"})
        assert drained.value.code == ErrorCode.DEVICE_UNAVAILABLE
        time.sleep(0.35)
        c.request("devices.set_health", {"name": "sim:gpu3", "readings": {"temperature_c": 60}})
        c.request("device.run", {"device": "sim:gpu3", "iterations": 1})  # restored when healthy again
        monitor = c.request("devices.monitor", {"enabled": False})
        assert monitor["samples"] >= 2 and monitor["mean_cost_ms"] > 0
        kinds = [(e.data.get("kind"), e.data.get("change")) for e in c.status_events
                 if e.data.get("domain") == "device"]
        assert kinds.count(("alert", None)) == 1 and ("change", "draining") in kinds and ("change", "restored") in kinds
        health = [e.data for e in c.status_events if e.data.get("kind") == "health"]
        assert {d["id"] for d in health[-1]["devices"]} >= {"cpu", "sim:gpu0", "sim:gpu4"}

        for op, params, message in [
            ("devices.configure", {"devices": [{"name": "a", "memory_bytes": MiB}] * 2}, "duplicate device name"),
            ("devices.configure", {"devices": [{"name": "a", "memory_bytes": -1}]}, "must be > 0"),
            ("devices.configure", {"devices": [{"name": "a", "memory_bytes": 1, "backing": "cuda:9"}]},
             "backing device 'cuda:9' does not exist"),
            ("devices.remove", {"name": "sim:ghost"}, "unknown simulated device 'sim:ghost'"),
            ("devices.set_health", {"name": "sim:gpu0", "readings": {"voltage": 1}}, "unknown health readings"),
            ("memory.configure", {"device": "sim:gpu0", "budget_bytes": 128 * MiB}, "larger than device"),
            ("device.run", {"device": "sim:ghost"}, "unknown device 'sim:ghost'"),
            ("devices.monitor", {"interval_s": 0.001}, "interval_s must be >= 0.05"),
        ]:
            with pytest.raises(WorkerError, match=message) as bad:
                c.request(op, params)
            assert bad.value.code == ErrorCode.INVALID_PARAMS
        big = c.request("memory.allocate", {"device": "sim:gpu0", "sizes": [65 * MiB], "free": False})
        assert big["allocations"][0]["error"].startswith("OutOfMemoryError")  # larger than the device
        assert c.request("ping") == {"payload": ""}  # still serving



def test_device_run_is_cancellable_queued_or_running(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        running = c.submit("device.run", {"device": "cpu", "iterations": 10**8, "matrix_n": 64})
        queued = c.submit("device.run", {"device": "cpu", "iterations": 10**8, "matrix_n": 64})
        time.sleep(0.3)
        for pending, state in ((queued, "queued-cancelled"), (running, "running-cancel-requested")):
            assert c.request("cancel", {"target": pending.id})["state"] == state
            assert pending.wait(10), "a cancelled device.run must stop, not run to its end"
            with pytest.raises(WorkerError) as cancelled:
                pending.result()
            assert cancelled.value.code == ErrorCode.CANCELLED
        assert c.request("device.run", {"device": "cpu", "iterations": 1})["iterations"] == 1
