"""Runners: the code that drives workers for a test case and records what it measured.

A runner receives a ``RunnerContext`` and writes samples into ``ctx.recorder``; it never
judges (the suite does). Registry: name (as the catalog says it) -> function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def _registry() -> dict[str, Runner]:
    from hybrid_assets.runners import device_discovery

    return {"device.cold_start_discovery": device_discovery.cold_start_discovery}


def get_runner(name: str) -> Runner:
    runners = _registry()
    if name not in runners:
        raise KeyError(f"no runner named {name!r}; known: {sorted(runners)}")
    return runners[name]


def runner_names() -> set[str]:
    return set(_registry())
