"""Run one case end to end: runner -> samples -> statistics -> GX -> verdict -> store.

Dagster-free: the asset calls ``execute_case``; so can a script or a test.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from dataclasses import dataclass

import pandas as pd

from hybrid_assets.catalog import Case
from hybrid_assets.gx_suites import GxValidator, Suite, SuiteError, load_suite
from hybrid_assets.harness.judge import case_verdict, judge_suite, not_measured, values_by_metric
from hybrid_assets.harness.results import CaseOutcome, Recorder, Verdict
from hybrid_assets.harness.stats import summarize
from hybrid_assets.run_info import RunInfo
from hybrid_assets.runners import RunnerContext, RunnerNotImplemented, get_runner
from hybrid_assets.store import MetricsStore, WriteReceipt, case_payload
from workers.host.pool import WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutedCase:
    outcome: CaseOutcome
    receipt: WriteReceipt
    suite: Suite


def execute_case(case: Case, run: RunInfo, pool: WorkerPool, store: MetricsStore,
                 logger: logging.Logger = log) -> ExecutedCase:
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    t0 = time.monotonic()
    recorder = Recorder()
    error = None
    not_implemented = False
    suite = load_suite(case.suite)
    try:
        runner = get_runner(case.runner)
        ctx = RunnerContext(case.id, run.profile, case.params_for(run.profile), pool,
                            list(run.worker_cmd), recorder, logger)
        runner(ctx)
    except RunnerNotImplemented as exc:  # planned, not written: ERROR, never a fake result
        error, not_implemented = f"not implemented: {exc}", True
    except Exception as exc:  # the harness failed: record ERROR, keep every sample so far
        error = f"{type(exc).__name__}: {exc}"
        logger.error("case %s: runner failed: %s\n%s", case.id, error, traceback.format_exc())
    duration = time.monotonic() - t0
    values, units = values_by_metric(recorder.samples)
    if not_implemented:
        expectations = [not_measured(spec, "not implemented: the case's runner is planned, not written")
                        for spec in suite.expectations]
    else:
        try:
            frame = pd.DataFrame({"metric": [s.metric for s in recorder.samples if s.metric in suite.metrics],
                                  "value": [s.value for s in recorder.samples if s.metric in suite.metrics]})
            gx_results = GxValidator().validate(suite, frame)
            expectations = judge_suite(suite, gx_results, values, recorder.skips, units)
        except SuiteError as exc:
            error = error or str(exc)
            expectations = []
    if error is not None:
        verdict, reason = Verdict.ERROR, error
    else:
        verdict, reason = case_verdict(expectations)
    outcome = CaseOutcome(case.id, verdict, reason, started, duration, recorder.samples,
                          summarize(recorder.samples), expectations, dict(recorder.skips),
                          dict(recorder.notes), error)
    receipt = store.write_case(case_payload(run, case, outcome))
    logger.info("case %s: %s (%s) in %.1f s; store: %s", case.id, verdict, reason, duration, receipt.status)
    return ExecutedCase(outcome, receipt, suite)
