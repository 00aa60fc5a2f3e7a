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
    """Planned runners, replaced by the written ones: every module of this package (not
    ``planned``) that defines ``RUNNERS = {name: (metrics, fn)}``."""
    import importlib
    import pkgutil

    from hybrid_assets.runners.planned import planned_runners

    specs = {name: RunnerSpec(name, metrics, None) for name, metrics in planned_runners().items()}
    written: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, (metrics, fn) in getattr(module, "RUNNERS", {}).items():
            if name in written:
                raise RuntimeError(f"runner {name!r} written twice: in {written[name]} and {info.name}")
            written[name] = info.name
            specs[name] = RunnerSpec(name, frozenset(metrics), fn)
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
