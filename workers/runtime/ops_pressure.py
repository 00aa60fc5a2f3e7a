"""Handlers of pressure operations (see workers/protocol/ops_pressure.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.protocol.messages import Event
from workers.protocol.ops_pressure import (
    BalloonParams,
    BalloonResult,
    CacheFillParams,
    CacheFillResult,
    PressureConfigureParams,
    PressureDeviceParams,
    PressureStateResult,
    ProbeParams,
    ProbeResult,
)
from workers.runtime.context import RequestContext
from workers.runtime.memory import DegradedModeError, MemoryManager, TensorCache
from workers.runtime.pressure import PressureLevel, PressureThresholds

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


@dataclass
class DevicePressure:
    manager: MemoryManager
    caches: dict[str, TensorCache]
    balloons: dict[str, list[int]] = field(default_factory=dict)  # tag -> allocation ids, oldest first
    keys: int = 0  # next cache key

    def balloon_bytes(self, tag: str) -> int:
        return sum(self.manager._live[i][0].reserved for i in self.balloons.get(tag, []))

    def state(self) -> dict[str, Any]:
        m = self.manager
        with m._lock:
            balloons = {tag: self.balloon_bytes(tag) for tag in self.balloons}
            return {
                "device": m.device, "budget_bytes": m.budget, "used_bytes": m.used,
                "utilisation": m.used / m.budget, "level": str(m.pressure.level),
                "own_bytes": m.used - sum(balloons.values()),  # what the runtime itself holds
                "balloons": balloons, "live_allocations": len(m._live), "oom_count": m.oom_count,
                "responses": len(m.responses),
                "caches": {name: c.stats() for name, c in self.caches.items()},
            }


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        import torch

        if torch.cuda.is_available() and int(device[5:]) < torch.cuda.device_count():
            return
        raise ValueError(f"device {device!r} does not exist on this machine")
    raise ValueError(f"unknown device {device!r}: 'cpu' or 'cuda:N'")


def _thresholds(p: PressureConfigureParams) -> PressureThresholds:
    d = PressureThresholds()
    return PressureThresholds(
        warning=d.warning if p.warning is None else p.warning,
        degraded=d.degraded if p.degraded is None else p.degraded,
        emergency=d.emergency if p.emergency is None else p.emergency,
        hysteresis=d.hysteresis if p.hysteresis is None else p.hysteresis,
    )


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    devices: dict[str, DevicePressure] = {}

    def _get(device: str) -> DevicePressure:
        d = devices.get(device)
        # memory.configure may have replaced the manager since: its caches would be someone else's
        if d is None or server.memory.get(device) is not d.manager:
            raise KeyError(f"no pressure state on {device!r}: send pressure.configure first")
        return d

    def configure(ctx: RequestContext, p: PressureConfigureParams) -> PressureStateResult:
        _check_device(p.device)
        if p.budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {p.budget_bytes}")
        current = server.memory.get(p.device)
        if current is not None and current.stats()["live_allocations"]:
            raise ValueError(f"device {p.device!r} still holds {current.stats()['live_allocations']} allocations: "
                             "send pressure.reset or memory.free first")
        thresholds = _thresholds(p)

        def on_level(old: PressureLevel, new: PressureLevel, utilisation: float) -> None:
            server.send(Event(event="status", data={
                "domain": "memory", "kind": "level", "device": p.device, "previous": str(old), "level": str(new),
                "utilisation": round(utilisation, 4)}))

        def on_response(action: str, freed: int, before: float, after: float) -> None:
            server.send(Event(event="status", data={
                "domain": "memory", "kind": "response", "device": p.device, "response": action,
                "freed_bytes": freed, "utilisation_before": round(before, 4), "utilisation": round(after, 4),
                "level": str(manager.pressure.level)}))

        manager = MemoryManager(p.device, p.budget_bytes, thresholds=thresholds, on_pressure=on_level,
                                on_response=on_response)
        # Cheap-to-rebuild latents go first, from WARNING; idle models are unloaded from DEGRADED, as far as
        # the degraded response needs (and all of them in an emergency, or before an out-of-memory failure).
        caches = {"latents": TensorCache(manager, "latents", PressureLevel.WARNING),
                  "models": TensorCache(manager, "models", PressureLevel.DEGRADED)}
        server.memory[p.device] = manager
        devices[p.device] = DevicePressure(manager, caches)
        return PressureStateResult(devices[p.device].state())

    def cache_fill(ctx: RequestContext, p: CacheFillParams) -> CacheFillResult:
        import torch

        d = _get(p.device)
        if p.entries <= 0 or p.entry_bytes <= 0:
            raise ValueError(f"entries and entry_bytes must be > 0, got {p.entries} and {p.entry_bytes}")
        if p.entry_bytes > d.manager.budget:
            raise ValueError(f"entry_bytes {p.entry_bytes} exceeds the {d.manager.budget}-byte budget")
        cache, inserted, refused = d.caches[p.cache], 0, None
        for _ in range(p.entries):
            ctx.check()
            try:
                cache.put(f"{p.cache}-{d.keys}", p.entry_bytes, critical=p.critical)
            except (DegradedModeError, torch.OutOfMemoryError) as exc:
                refused = f"{type(exc).__name__}: {exc}"
                break
            d.keys += 1
            inserted += 1
        return CacheFillResult(inserted, refused, d.state())

    def balloon(ctx: RequestContext, p: BalloonParams) -> BalloonResult:
        import torch

        d = _get(p.device)
        m = d.manager
        if (p.size_bytes is None) == (p.target_utilisation is None):
            raise ValueError("give exactly one of size_bytes and target_utilisation")
        if p.chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {p.chunk_bytes}")
        if p.size_bytes is not None and not 0 <= p.size_bytes <= m.budget:
            raise ValueError(f"size_bytes must be in [0, {m.budget}] (the budget), got {p.size_bytes}")
        if p.target_utilisation is not None and not 0 <= p.target_utilisation <= 1:
            raise ValueError(f"target_utilisation must be in [0, 1], got {p.target_utilisation}")
        ids = d.balloons.setdefault(p.tag, [])

        def short() -> int:  # bytes still to add (> 0) or that may go (< 0)
            if p.size_bytes is not None:
                return p.size_bytes - d.balloon_bytes(p.tag)
            return int(p.target_utilisation * m.budget) - m.used  # type: ignore[operator]

        oom, error = False, None
        with m._lock:
            while (need := short()) > 0:
                ctx.check()
                try:
                    alloc = m.allocate(min(p.chunk_bytes, need), tag=f"balloon:{p.tag}", critical=True)
                except torch.OutOfMemoryError as exc:
                    oom, error = True, f"OutOfMemoryError: {exc}"
                    break
                m.tensor(alloc.id).fill_(1)  # resident pages: the pressure is real memory
                ids.append(alloc.id)
            # Shrink without going under the goal (a target is a floor the pressure holds).
            while ids and short() + m._live[ids[-1]][0].reserved <= 0:
                m.free(ids.pop())
            if not ids:
                d.balloons.pop(p.tag, None)
            return BalloonResult(p.tag, d.balloon_bytes(p.tag), len(ids), oom, error, d.state())

    def probe(ctx: RequestContext, p: ProbeParams) -> ProbeResult:
        import torch

        d = _get(p.device)
        m = d.manager
        if p.min_work_bytes <= 0 or p.work_bytes < p.min_work_bytes:
            raise ValueError(f"need 0 < min_work_bytes <= work_bytes, got {p.min_work_bytes} and {p.work_bytes}")
        if p.work_bytes > m.budget:
            raise ValueError(f"work_bytes {p.work_bytes} exceeds the {m.budget}-byte budget of {p.device}")
        if p.passes <= 0:
            raise ValueError(f"passes must be > 0, got {p.passes}")
        t0 = time.perf_counter()
        work, reason = p.work_bytes, None
        if p.kind == "interactive" and m.pressure.level >= PressureLevel.DEGRADED:
            work, reason = p.min_work_bytes, "degraded_mode"  # reduced quality, still served
        attempts = 0
        while True:
            attempts += 1
            ctx.check()
            try:
                alloc = m.allocate(work, tag="probe", critical=p.kind != "background")
            except DegradedModeError as exc:
                return ProbeResult("refused", "degraded_mode", 0, attempts, time.perf_counter() - t0, False,
                                   str(exc), d.state())
            except torch.OutOfMemoryError as exc:
                if work > p.min_work_bytes:  # the cleanup already ran in the manager: retry smaller
                    work, reason = max(p.min_work_bytes, work // 2), "out_of_memory_retry"
                    continue
                return ProbeResult("failed", "out_of_memory", 0, attempts, time.perf_counter() - t0, False,
                                   f"OutOfMemoryError: {exc}", d.state())
            break
        try:
            n = work // 4
            x = m.tensor(alloc.id)[:n * 4].view(torch.float32)
            x.fill_(1.0)
            for _ in range(p.passes):
                x.mul_(1.5).sub_(0.5)  # stays 1.0 exactly: the checksum is n
            checksum_ok = int(x.sum().item()) == n
        finally:
            m.free(alloc.id)  # nothing of the probe stays allocated, whatever happened
        status = "ok" if reason is None else "downgraded"
        return ProbeResult(status, reason, work, attempts, time.perf_counter() - t0, checksum_ok, None, d.state())

    def state(ctx: RequestContext, p: PressureDeviceParams) -> PressureStateResult:
        return PressureStateResult(_get(p.device).state())

    def reset(ctx: RequestContext, p: PressureDeviceParams) -> PressureStateResult:
        d = _get(p.device)
        with d.manager._lock:
            for ids in d.balloons.values():
                for i in ids:
                    d.manager.free(i)
            d.balloons.clear()
            for cache in d.caches.values():
                cache.clear()
        return PressureStateResult(d.state())

    return {
        "pressure.configure": configure,
        "pressure.cache_fill": cache_fill,
        "pressure.balloon": balloon,
        "pressure.probe": probe,
        "pressure.state": state,
        "pressure.reset": reset,
    }

