"""Running one runner in a test, as the pipeline would, without Dagster: a RunnerContext around a fresh
Recorder; what the runner recorded (samples and skips) must be among the metrics it declares."""

from __future__ import annotations

import logging
from typing import Any

from hybrid_assets.harness.results import Recorder
from hybrid_assets.runners import RunnerContext, runner_spec


def run_runner(runner: str, params: dict[str, Any], worker_argv: list[str], *, profile: str = "smoke") -> Recorder:
    spec = runner_spec(runner)
    assert spec.fn is not None, f"{runner} is not written"
    rec = Recorder()
    ctx = RunnerContext(f"test-{runner}", profile, params, None, worker_argv, rec,  # type: ignore[arg-type]
                        logging.getLogger("test"))
    spec.fn(ctx)
    produced = {s.metric for s in rec.samples} | set(rec.skips)
    assert produced <= spec.metrics, f"{runner} recorded undeclared metrics {sorted(produced - spec.metrics)}"
    return rec


def values(rec: Recorder, metric: str, **labels: Any) -> list[float]:
    """The values of ``metric`` whose labels include ``labels``, in recording order."""
    return [s.value for s in rec.samples
            if s.metric == metric and all(s.labels.get(k) == v for k, v in labels.items())]
