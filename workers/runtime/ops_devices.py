"""Handlers of the device operations (see workers/protocol/ops_devices.py).

``DeviceRuntime`` joins the registry (state), one executor per device (work), the memory manager
per device (budget) and health monitoring (assessment, prediction, intervention). Changes are
control operations, answered on the reader thread, because they must land while devices are busy:
a disconnection during inference is the case the spec asks about.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import msgspec
import psutil

from workers.protocol.messages import ErrorCode, Event, Request
from workers.protocol.ops_devices import (
    DeviceChangeResult,
    DeviceListResult,
    DeviceNameParams,
    DeviceRunParams,
    DeviceRunResult,
    DevicesConfigureParams,
    DevicesConfigureResult,
    DisconnectParams,
    HealthParams,
    MonitorParams,
    MonitorResult,
    NoParams,
    SimulatedDeviceSpec,
)
from workers.runtime import workloads
from workers.runtime.context import OperationError, RequestContext
from workers.runtime.devexec import DeviceExecutor
from workers.runtime.health import FailurePredictor, HealthMonitor, assess
from workers.runtime.memory import MemoryManager
from workers.runtime.pressure import PressureLevel
from workers.runtime.simdevices import DeviceRegistry, DeviceState, SimulatedDevice

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


def real_device_exists(name: str) -> bool:
    """'cpu' always; 'cuda:N' when torch sees it (torch is imported only to answer that)."""
    if name == "cpu":
        return True
    if name.startswith("cuda:") and name[5:].isdigit():
        from workers.runtime.imports import import_torch

        torch = import_torch()
        return bool(torch.cuda.is_available() and int(name[5:]) < torch.cuda.device_count())
    return False


class DeviceRuntime:
    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.registry = DeviceRegistry(announce=self._announce, backing_exists=real_device_exists)
        self.registry.on_lost.append(self._on_lost)
        self.registry.on_online.append(self._on_online)
        self.executors: dict[str, DeviceExecutor] = {}
        self.monitor = HealthMonitor(self._sample, self._announce)
        self.predictor = FailurePredictor()
        self._health: dict[str, tuple[str, bool]] = {}  # device -> (last status, failure predicted)
        server.stop_hooks.append(self._stop)

    def _announce(self, data: dict[str, Any]) -> None:
        self.server.send(Event(event="status", data=data))

    # ---- device lifecycle hooks --------------------------------------------------------------
    def _on_online(self, dev: SimulatedDevice) -> None:
        name = dev.name

        def announce(old: PressureLevel, new: PressureLevel, utilisation: float) -> None:
            self._announce({"domain": "memory", "device": name, "previous": str(old), "level": str(new),
                            "utilisation": round(utilisation, 4)})

        self.server.memory[name] = MemoryManager(dev.spec.backing, dev.spec.memory_bytes, on_pressure=announce)
        self._health.pop(name, None)
        self.predictor.forget(name)

    def _on_lost(self, dev: SimulatedDevice, reason: str) -> dict[str, int]:
        released = {"released_allocations": 0, "released_bytes": 0, "failed_requests": 0}
        executor = self.executors.get(dev.name)
        if executor is not None:
            released["failed_requests"] = executor.fail_all(f"device {dev.name!r} lost: {reason}")
            executor.models.clear()
            if reason == "removed":
                executor.close(drain=False, timeout=0.0)  # its thread ends once the running item fails
                del self.executors[dev.name]
        manager = self.server.memory.pop(dev.name, None)
        if manager is not None:
            stats = manager.stats()
            released["released_allocations"] = stats["live_allocations"]
            released["released_bytes"] = stats["used_bytes"]
            manager.free_all()
        self.predictor.forget(dev.name)
        return released

    def _stop(self, drain: bool) -> None:
        self.monitor.stop()
        for executor in list(self.executors.values()):
            executor.close(drain=drain)

    # ---- health -------------------------------------------------------------------------------
    def _memory_utilisation(self, name: str) -> float:
        m = self.server.memory.get(name)
        return m.used / m.budget if m is not None else 0.0

    def observe(self, dev: SimulatedDevice, predict: bool) -> dict[str, Any]:
        """Assess one device now; alert on entering critical and drain it (the automatic
        intervention), restore it when healthy again; predict from the trend on sensor updates."""
        name = dev.name
        status, reasons = assess(dev.health, self._memory_utilisation(name))
        prev_status, prev_predicted = self._health.get(name, ("healthy", False))
        predicted, why = self.predictor.observe(name, dev.health) if predict else (prev_predicted, [])
        if status == "critical" and prev_status != "critical":
            self._announce({"domain": "device", "kind": "alert", "level": "critical", "device": name,
                            "reasons": reasons})
            self.registry.set_draining(name, True, reasons)
        elif status != "critical" and prev_status == "critical":
            self.registry.set_draining(name, False, [])
        if predicted and not prev_predicted:
            self._announce({"domain": "device", "kind": "prediction", "device": name, "reasons": why})
        self._health[name] = (status, predicted)
        return {"status": status, "reasons": reasons, "failure_predicted": predicted}

    def _sample(self) -> list[dict[str, Any]]:
        vm = psutil.virtual_memory()
        out: list[dict[str, Any]] = [{"id": "cpu", "state": "online", "status": "healthy",
                                      "utilisation": psutil.cpu_percent(None) / 100,
                                      "memory_utilisation": vm.percent / 100}]
        for dev in self.registry.devices():
            if dev.state in (DeviceState.DISCONNECTED, DeviceState.POWERED_OFF):
                continue  # unreachable: no readings, which is itself what the host notices
            entry = {"id": dev.name, "state": str(dev.state), **dev.health,
                     "memory_utilisation": round(self._memory_utilisation(dev.name), 4)}
            entry.update(self.observe(dev, predict=False))
            out.append(entry)
        return out

    # ---- descriptions ---------------------------------------------------------------------------
    def describe(self, dev: SimulatedDevice) -> dict[str, Any]:
        m = self.server.memory.get(dev.name)
        ex = self.executors.get(dev.name)
        queued, running = ex.depth() if ex is not None else (0, False)
        status, predicted = self._health.get(dev.name, ("healthy", False))
        return {"id": dev.name, "kind": "simulated", "backing": dev.spec.backing, "state": str(dev.state),
                "memory_total": dev.spec.memory_bytes,
                "memory_used": m.used if m is not None else 0, "dtypes": list(dev.spec.dtypes),
                "compute_units": dev.spec.compute_units, "health": dict(dev.health), "health_status": status,
                "failure_predicted": predicted, "queued": queued, "running": running,
                "completed": ex.completed if ex is not None else 0,
                "models": sorted(ex.models) if ex is not None else []}

    def describe_real(self) -> list[dict[str, Any]]:
        out = []
        for name in ["cpu"] + [n for n in self.executors if n.startswith("cuda:")]:
            ex = self.executors.get(name)
            queued, running = ex.depth() if ex is not None else (0, False)
            out.append({"id": name, "kind": "cpu" if name == "cpu" else "cuda", "state": "online",
                        "queued": queued, "running": running, "completed": ex.completed if ex is not None else 0,
                        "models": sorted(ex.models) if ex is not None else []})
        return out

    # ---- work -------------------------------------------------------------------------------------
    def route(self, req: Request, p: DeviceRunParams) -> None:
        """Admit ``device.run`` to its device's executor (reader thread: must not block)."""
        try:
            sim = self.registry.find(p.device)
            if sim is not None:
                self.registry.require_usable(p.device)
                generation, backing = sim.generation, sim.spec.backing
            elif real_device_exists(p.device):
                generation, backing = None, p.device
            else:
                raise ValueError(f"unknown device {p.device!r}: 'cpu', 'cuda:N' or a simulated device; "
                                 f"simulated: {self.registry.names()[:20]}")
        except OperationError as exc:
            self.server.fail(req.id, exc.code, exc.message, exc.retryable)
            return
        except ValueError as exc:
            self.server.fail(req.id, ErrorCode.INVALID_PARAMS, f"device.run: {exc}")
            return
        executor = self.executors.get(p.device)
        if executor is None:
            executor = self.executors[p.device] = DeviceExecutor(p.device, self.server.execute, self.server.fail,
                                                                 self._run, self.server.untrack_routed)
        ctx = RequestContext(self.server, req.id, req.deadline_ms)
        self.server.track_routed(req.id, ctx)  # so `cancel` reaches it, queued or running
        executor.submit(req.id, ctx, (p, generation, backing))

    def _run(self, ctx: RequestContext, item: tuple[DeviceRunParams, Union[int, None], str]) -> DeviceRunResult:
        p, generation, backing = item
        if generation is not None:
            def check() -> None:
                self.registry.require_usable(p.device, generation)
        else:
            def check() -> None:
                return None
        check()
        manager = self.server.memory.get(p.device)
        executor = self.executors[p.device]
        t0 = time.perf_counter()
        if p.workload == "load":
            checksum = workloads.run_load(ctx, p, backing, manager, executor.models, check)
            iterations = 1
        else:
            checksum = workloads.run_inference(ctx, p, backing, manager, check)
            iterations = p.iterations
        return DeviceRunResult(p.device, p.workload, iterations, getattr(ctx, "queued_s", 0.0),
                               time.perf_counter() - t0, checksum)


def runtime(server: WorkerServer) -> DeviceRuntime:
    rt = getattr(server, "devices", None)
    if rt is None:
        rt = server.devices = DeviceRuntime(server)  # type: ignore[attr-defined]
    return rt


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    return {}


def routed_handlers(server: WorkerServer) -> dict[str, Callable[[Request, Any], None]]:
    return {"device.run": runtime(server).route}


def control_handlers(server: WorkerServer) -> dict[str, Callable[[Any], Any]]:
    rt = runtime(server)
    reg = rt.registry

    def configure(p: DevicesConfigureParams) -> DevicesConfigureResult:
        removed, added = reg.configure(p.devices)
        return DevicesConfigureResult([rt.describe(d) for d in added], removed)

    def add(p: SimulatedDeviceSpec) -> DeviceChangeResult:
        dev, seq = reg.add(p)
        return DeviceChangeResult(dev.name, "added", seq)

    def remove(p: DeviceNameParams) -> DeviceChangeResult:
        seq, released = reg.remove(p.name)
        return DeviceChangeResult(p.name, "removed", seq, **released)

    def disconnect(p: DisconnectParams) -> DeviceChangeResult:
        seq, released = reg.disconnect(p.name, p.mode)
        return DeviceChangeResult(p.name, "disconnected", seq, **released)

    def reconnect(p: DeviceNameParams) -> DeviceChangeResult:
        return DeviceChangeResult(p.name, "reconnected", reg.reconnect(p.name))

    def set_health(p: HealthParams) -> DeviceChangeResult:
        rt.observe(reg.set_health(p.name, p.readings), predict=True)
        return DeviceChangeResult(p.name, "health", reg.change_seq)

    def list_devices(p: NoParams) -> DeviceListResult:
        devices = rt.describe_real() + [rt.describe(d) for d in reg.devices()]
        return DeviceListResult(devices, sorted(server.memory), reg.change_seq)

    def monitor(p: MonitorParams) -> MonitorResult:
        rt.monitor.configure(p.enabled, p.interval_s)
        return MonitorResult(rt.monitor.enabled, rt.monitor.interval_s, rt.monitor.samples, rt.monitor.mean_cost_ms())

    return {"devices.configure": configure, "devices.add": add, "devices.remove": remove,
            "devices.disconnect": disconnect, "devices.reconnect": reconnect, "devices.set_health": set_health,
            "devices.list": list_devices, "devices.monitor": monitor}


def simulated_discovery(server: WorkerServer, probe: Callable[[str, list[str]], list[str]],
                        cached: Callable[[str, list[str]], bool] = lambda backing, dtypes: False) -> list[Any]:
    """DeviceInfo-shaped entries for the enumerated simulated devices, dtypes verified by ``probe``;
    ``cached(backing, dtypes)`` says whether the verification was already known before this call."""
    rt = runtime(server)
    out = []
    for dev in rt.registry.devices():
        if not dev.state.enumerated:
            continue
        t0 = time.perf_counter()
        from_cache = cached(dev.spec.backing, list(dev.spec.dtypes))
        dtypes = probe(dev.spec.backing, list(dev.spec.dtypes))
        m = server.memory.get(dev.name)
        used = m.used if m is not None else 0
        out.append(msgspec.structs.replace(_SIM_TEMPLATE, id=dev.name, name=dev.name, backing=dev.spec.backing,
                                           memory_total=dev.spec.memory_bytes,
                                           memory_free=dev.spec.memory_bytes - used, dtypes=dtypes,
                                           cores=dev.spec.compute_units, state=str(dev.state), cached=from_cache,
                                           assessment_ms=(time.perf_counter() - t0) * 1e3))
    return out


def _template() -> Any:
    from workers.protocol.messages import DeviceInfo

    return DeviceInfo(id="", kind="simulated", name="", memory_total=0, memory_free=0, dtypes=[],
                      source="simulated", assessment_ms=0.0)


_SIM_TEMPLATE = _template()
