"""Device registry, health assessment, failure prediction and the host's router, without processes."""

from __future__ import annotations

from typing import Any

import pytest

from workers.host.devices import DeviceRouter
from workers.host.errors import WorkerError
from workers.protocol.messages import ErrorCode, Event
from workers.protocol.ops_devices import SimulatedDeviceSpec
from workers.runtime.context import OperationError
from workers.runtime.health import FailurePredictor, assess
from workers.runtime.simdevices import DeviceRegistry, DeviceState

MiB = 1 << 20


def _registry() -> tuple[DeviceRegistry, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    reg = DeviceRegistry(announce=events.append, backing_exists=lambda name: name == "cpu")
    return reg, events


def test_configuration_is_validated_as_a_whole_and_names_the_bad_entry() -> None:
    reg, events = _registry()
    reg.configure([SimulatedDeviceSpec("sim:a", MiB)])
    bad = [
        ([SimulatedDeviceSpec("x", MiB), SimulatedDeviceSpec("x", MiB)], "duplicate device name 'x'"),
        ([SimulatedDeviceSpec("y", 0)], "memory_bytes must be > 0, got 0"),
        ([SimulatedDeviceSpec("y", -5)], "memory_bytes must be > 0, got -5"),
        ([SimulatedDeviceSpec("z", MiB, backing="cuda:3")], "backing device 'cuda:3' does not exist"),
        ([SimulatedDeviceSpec("cuda:0", MiB)], "a real device's name"),
        ([SimulatedDeviceSpec("bad name", MiB)], "name must be"),
    ]
    for specs, message in bad:
        with pytest.raises(ValueError, match=message):
            reg.configure(specs)
    assert reg.names() == ["sim:a"]  # a refused configuration changed nothing
    with pytest.raises(ValueError, match="duplicate device name 'sim:a'"):
        reg.add(SimulatedDeviceSpec("sim:a", MiB))
    with pytest.raises(KeyError, match="unknown simulated device 'ghost'"):
        reg.remove("ghost")
    assert [e["change"] for e in events] == ["added"]


def test_changes_are_numbered_and_lost_devices_stop_admitted_work() -> None:
    reg, events = _registry()
    dev, _ = reg.add(SimulatedDeviceSpec("sim:a", MiB))
    generation = dev.generation
    reg.require_usable("sim:a", generation)  # admitted work may go on
    reg.disconnect("sim:a", "power_failure")
    with pytest.raises(OperationError) as lost:
        reg.require_usable("sim:a", generation)
    assert lost.value.code == ErrorCode.DEVICE_LOST and "power_failure" in lost.value.message
    with pytest.raises(ValueError, match="already powered_off"):
        reg.disconnect("sim:a", "driver_failure")
    reg.reconnect("sim:a")
    with pytest.raises(OperationError):  # work admitted before the loss stays lost after reconnection
        reg.require_usable("sim:a", generation)
    reg.require_usable("sim:a")
    assert reg.set_draining("sim:a", True, ["hot"]) is not None
    assert reg.set_draining("sim:a", True, ["hot"]) is None  # once per entry: no flapping events
    with pytest.raises(OperationError) as draining:
        reg.require_usable("sim:a")
    assert draining.value.code == ErrorCode.DEVICE_UNAVAILABLE
    reg.remove("sim:a")
    assert [(e["change"], e["seq"]) for e in events] == [
        ("added", 1), ("disconnected", 2), ("reconnected", 3), ("draining", 4), ("removed", 5)]
    assert events[1]["mode"] == "power_failure" and events[1]["state"] == str(DeviceState.POWERED_OFF)


def test_health_assessment_against_limits() -> None:
    assert assess({"temperature_c": 60}, 0.5) == ("healthy", [])
    assert assess({"temperature_c": 85}, 0.5)[0] == "warning"
    status, reasons = assess({"temperature_c": 91, "ecc_uncorrectable": 2}, 0.96)
    assert status == "critical" and len(reasons) == 3


def test_failure_prediction_from_trends() -> None:
    p = FailurePredictor()
    rising = [60 + 2.5 * i for i in range(8)]  # 77.5 C at the end, rising 2.5 C per reading
    assert [p.observe("a", {"temperature_c": t})[0] for t in rising][-1] is True
    steady = [70 + (1 if i % 2 else -1) for i in range(20)]  # noisy but flat
    assert not any(p.observe("b", {"temperature_c": t})[0] for t in steady)
    ecc = [p.observe("c", {"temperature_c": 50, "ecc_correctable": 2 * i})[0] for i in range(8)]
    assert ecc[-1] is True and not any(ecc[:-1])  # needs a full window first


class _FakeClient:
    """Answers device.run from a script: device -> list of outcomes (an error code or 'ok')."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script
        self.listeners: list[Any] = []
        self.sent: list[str] = []

    def on_status(self, listener: Any) -> None:
        self.listeners.append(listener)

    def emit(self, **data: Any) -> None:
        for listener in self.listeners:
            listener(Event(event="status", data={"domain": "device", "kind": "change", **data}))

    def request(self, op: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        device = params["device"]
        self.sent.append(device)
        outcome = self.script.get(device, ["ok"]).pop(0) if self.script.get(device) else "ok"
        if outcome != "ok":
            raise WorkerError(outcome, f"{device}: {outcome}", retryable=True)
        return {"device": device}


def test_router_fails_over_degrades_to_cpu_and_takes_devices_back() -> None:
    client = _FakeClient({"g0": [ErrorCode.DEVICE_LOST]})
    router = DeviceRouter(client, ["g0", "g1"])  # type: ignore[arg-type]
    first = router.run({}, device="g0")
    assert first.device == "g1" and first.attempts == [("g0", ErrorCode.DEVICE_LOST)] and not first.degraded
    assert router.view("g0").state == "lost" and router.view("g0").lost_via == ErrorCode.DEVICE_LOST
    client.emit(change="disconnected", device="g1")
    only_cpu = router.run({})
    assert only_cpu.device == "cpu" and only_cpu.degraded  # CPU-only degradation, not failure
    client.emit(change="reconnected", device="g0")
    assert router.run({}).device == "g0"  # reintegrated
    client.script["g0"] = [ErrorCode.INVALID_PARAMS]
    with pytest.raises(WorkerError, match="INVALID_PARAMS"):  # not a device failure: no failover
        router.run({})
    with pytest.raises(ValueError, match="at least one device"):
        DeviceRouter(client, [])  # type: ignore[arg-type]
