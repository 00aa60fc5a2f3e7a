"""Runners: the code that drives workers for a test case and records what it measured.

A runner receives a ``RunnerContext`` and writes samples into ``ctx.recorder``; it never
judges (the suite does). Each runner declares the metrics it produces, so a suite that
judges a metric nobody measures is refused when the catalog loads. A runner may be
*planned*: declared with its metrics, not written yet; its case records ERROR "not
implemented", never a fake result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from hybrid_assets.harness.results import Recorder
from workers.host.pool import WorkerPool


@dataclass
class RunnerContext:
    case_id: str
    profile: str
    params: dict[str, Any]
    pool: WorkerPool  # warm workers shared by the whole run
    worker_argv: list[str]  # to spawn fresh workers (cold starts, fault experiments)
    recorder: Recorder
    log: logging.Logger


Runner = Callable[[RunnerContext], None]


@dataclass(frozen=True)
class RunnerSpec:
    name: str
    metrics: frozenset[str]
    fn: Union[Runner, None]  # None: planned, not implemented yet


class RunnerNotImplemented(NotImplementedError):
    pass


def _registry() -> dict[str, RunnerSpec]:
    from hybrid_assets.runners import device_discovery, memory_allocation, memory_gc
    from hybrid_assets.runners.planned import planned_runners

    implemented = [
        RunnerSpec("device.cold_start_discovery", device_discovery.METRICS, device_discovery.cold_start_discovery),
        RunnerSpec("memory.allocation_latency", memory_allocation.METRICS, memory_allocation.allocation_latency),
        RunnerSpec("memory.gc_performance", memory_gc.METRICS, memory_gc.gc_performance),
    ]
    specs = {name: RunnerSpec(name, metrics, None) for name, metrics in planned_runners().items()}
    specs.update({s.name: s for s in implemented})  # written runners replace their plans
    return specs


def runner_spec(name: str) -> RunnerSpec:
    runners = _registry()
    if name not in runners:
        raise KeyError(f"no runner named {name!r}; known: {sorted(runners)}")
    return runners[name]


def get_runner(name: str) -> Runner:
    spec = runner_spec(name)
    if spec.fn is None:
        raise RunnerNotImplemented(f"runner {name!r} is planned but not implemented yet")
    return spec.fn


def runner_names() -> set[str]:
    return set(_registry())
