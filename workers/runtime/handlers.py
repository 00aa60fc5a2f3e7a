"""Handlers of the work operations (the ones that run on the executor thread)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.protocol.messages import DiscoverParams, PingParams, PingResult
from workers.protocol.operations import (
    CrashParams,
    Empty,
    FreezeParams,
    NoiseParams,
    NoiseResult,
    SleepParams,
    SleepResult,
)
from workers.runtime import devices
from workers.runtime.context import RequestContext

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    def echo(ctx: RequestContext, p: PingParams) -> PingResult:
        return PingResult(payload=p.payload)

    def discover_devices(ctx: RequestContext, p: DiscoverParams) -> Any:
        return devices.discover(probe_dtypes=p.probe_dtypes)

    def sleep(ctx: RequestContext, p: SleepParams) -> SleepResult:
        t0 = time.monotonic()
        steps = max(1, p.steps)
        for step in range(1, steps + 1):
            ctx.wait(p.seconds / steps)
            ctx.progress(step, steps)
        return SleepResult(slept_s=time.monotonic() - t0)

    def crash(ctx: RequestContext, p: CrashParams) -> Empty:
        if p.mode == "abort":
            os.kill(os.getpid(), signal.SIGABRT)
        os._exit(p.exit_code)

    def freeze(ctx: RequestContext, p: FreezeParams) -> Empty:
        # Holding the freeze lock stops heartbeats and the reader; the executor sleeps.
        with server.freeze_lock:
            threading.Event().wait(p.seconds)
        return Empty()

    def stdout_noise(ctx: RequestContext, p: NoiseParams) -> NoiseResult:
        data = p.text.encode()
        print(p.text, end="", flush=True)  # Python-level stdout
        return NoiseResult(written=os.write(1, data))  # fd-level, as native code does

    return {
        "echo": echo,
        "discover_devices": discover_devices,
        "fault.sleep": sleep,
        "fault.crash": crash,
        "fault.freeze": freeze,
        "fault.stdout_noise": stdout_noise,
    }
