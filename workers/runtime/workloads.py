"""The compute a device runs for ``device.run``: real matmuls and real weight writes.

These stand in for inference and model loading until the model domain runs diffusers
pipelines on devices; what matters here is that they occupy the device for a measurable time,
hold memory through its manager, and stop cleanly when the device goes away between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

from workers.protocol.ops_devices import DeviceRunParams
from workers.runtime.context import RequestContext
from workers.runtime.imports import import_torch

LOAD_CHUNKS = 8


def run_inference(ctx: RequestContext, p: DeviceRunParams, backing: str, manager: Any,
                  check: Callable[[], None]) -> float:
    if p.iterations <= 0 or p.matrix_n <= 0:
        raise ValueError(f"iterations and matrix_n must be > 0, got {p.iterations} and {p.matrix_n}")
    if p.working_set_bytes < 0:
        raise ValueError(f"working_set_bytes must be >= 0, got {p.working_set_bytes}")
    torch = import_torch()
    held = None
    if p.working_set_bytes and manager is not None:
        held = manager.allocate(p.working_set_bytes, tag=f"run:{ctx.id}")
    try:
        gen = torch.Generator(device="cpu").manual_seed(p.matrix_n)
        a = torch.randn(p.matrix_n, p.matrix_n, generator=gen).to(backing)
        b = torch.randn(p.matrix_n, p.matrix_n, generator=gen).to(backing)
        c = a
        for _ in range(p.iterations):
            check()
            ctx.check()
            c = (a @ b) * (1.0 / p.matrix_n)
        return float(c.sum().item())
    finally:
        if held is not None:
            _release([held.id], manager)


def run_load(ctx: RequestContext, p: DeviceRunParams, backing: str, manager: Any, models: dict[str, Any],
             check: Callable[[], None]) -> float:
    """Write ``weights_bytes`` in chunks; on any failure free what was written (no half-loaded model)."""
    if p.weights_bytes <= 0:
        raise ValueError(f"weights_bytes must be > 0 for a load, got {p.weights_bytes}")
    torch = import_torch()
    chunk = max(1, p.weights_bytes // LOAD_CHUNKS)
    sizes = [chunk] * (p.weights_bytes // chunk) + ([p.weights_bytes % chunk] if p.weights_bytes % chunk else [])
    parts: list[Union[int, Any]] = []  # allocation ids (managed) or tensors (unmanaged)
    checksum = 0.0
    try:
        for k, size in enumerate(sizes):
            check()
            ctx.check()
            if manager is not None:
                alloc = manager.allocate(size, tag=f"model:{p.model}")
                parts.append(alloc.id)
                t = manager.tensor(alloc.id)
            else:
                t = torch.empty(size, dtype=torch.uint8, device=backing)
                parts.append(t)
            t.fill_((k * 37 + 11) % 251)
            checksum += float(t[:64].sum().item())
        check()
    except BaseException:
        _release(parts, manager)
        raise
    old = models.pop(p.model, None)
    if old is not None:
        _release(old, manager)
    models[p.model] = parts
    return checksum


def _release(parts: list[Any], manager: Any) -> None:
    for part in parts:
        if manager is not None and isinstance(part, int):
            try:
                manager.free(part)
            except KeyError:
                pass  # the device's memory was already released with the device
    parts.clear()
