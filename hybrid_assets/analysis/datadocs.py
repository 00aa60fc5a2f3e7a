"""Great Expectations Data Docs for one run: every case's suite and its validation result as
GX's static HTML site, rebuilt from the store.

How (GX 1.24):

- A file-backed context rooted in ``out_dir`` (``gx.get_context(mode="file", ...)``): suites,
  validation results and the ``local_site`` live under ``out_dir/gx``. Analytics are switched
  off in the context's own config (``enable_analytics(False)``; this GX build sends nothing
  either way), never through ``os.environ``.
- Each case's samples frame (``metric``, ``value``: the rows of the metrics its suite judges,
  as ``execute_case`` validated them) is rebuilt from the store's ``samples`` table and
  validated with ``Batch.validate``. ``ValidationDefinition.run`` and a checkpoint would store
  the result themselves, but their store's JSON encoder fails on the numpy booleans GX 1.24
  leaves in each expectation result's ``success`` ("Object of type bool is not JSON
  serializable"); and a checkpoint's ``UpdateDataDocsAction`` rebuilds the whole site after
  every case (quadratic over a run of 259 cases). So the results are made JSON-clean here,
  stored with ``validation_results_store.store_validation_results`` under the run's id and
  start time, and the site is built once at the end (``build_data_docs``).
- Each expectation carries a ``description`` (rendered in place of GX's own sentence): the
  check's name, the spec line and the verdict the store holds for it. GX judges the raw
  statistic only; the store's verdict adds the evidence rule (a PASS needs enough samples,
  else INVALID), so the two can differ and the page shows both.
- The site is built in a temporary folder inside ``out_dir`` and swapped in whole when done:
  a failure leaves an earlier site of that folder as it was.

Suites come from the catalog's case -> suite mapping and ``expectations/*.json`` as they are
now; a case whose suite changed since the run is validated against today's suite (its page
says so through the store's verdicts next to GX's). Cases no longer in the catalog are left
out with a warning.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pandas as pd

from hybrid_assets.analysis.common import AnyStore, read_only, require_run
from hybrid_assets.catalog import load_catalog
from hybrid_assets.gx_suites import ExpectationSpec, SuiteError, load_suite

log = logging.getLogger(__name__)

_NO_SAMPLES = pd.DataFrame({"metric": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
SITE_INDEX = Path("gx", "uncommitted", "data_docs", "local_site", "index.html")


@dataclass(frozen=True)
class DataDocsTiming:
    cases: int
    skipped: tuple[str, ...]
    setup_s: float  # GX import and context
    validate_s: float  # all cases: suites, validation, storing results
    site_s: float  # building the HTML site

    @property
    def per_case_s(self) -> float:
        return self.validate_s / self.cases if self.cases else 0.0


def build_data_docs(store: AnyStore, run_id: str, out_dir: Union[str, Path]) -> Path:
    """Build the Data Docs of ``run_id`` under ``out_dir`` and return the site's index.html
    (``out_dir/gx/uncommitted/data_docs/local_site/index.html``). Raises ``UnknownRunError``
    (naming the latest runs) before anything is written."""
    return build_data_docs_timed(store, run_id, out_dir)[0]


def build_data_docs_timed(store: AnyStore, run_id: str, out_dir: Union[str, Path]) -> tuple[Path, DataDocsTiming]:
    """``build_data_docs`` and where its time went."""
    t0 = time.perf_counter()
    with read_only(store) as con:
        require_run(con, store, run_id)
        started_at, build_id, testbed_id, profile = con.execute(
            "SELECT started_at, build_id, testbed_id, profile FROM runs WHERE run_id = ?", [run_id]).fetchone()
        cases = con.execute("SELECT case_id, verdict FROM case_results WHERE run_id = ? ORDER BY case_id",
                            [run_id]).fetchall()
        lines = con.execute(
            "SELECT case_id, check_name, spec_text, metric, statistic, comparison, threshold, unit, verdict, detail "
            "FROM expectation_results WHERE run_id = ?", [run_id]).df()
        samples = con.execute("SELECT case_id, metric, value FROM samples WHERE run_id = ? ORDER BY case_id, seq",
                              [run_id]).df()
    suites = {c.id: c.suite for c in load_catalog()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gx-build-", dir=out))
    try:
        ctx, batch_definition, ids = _context(staging)
        run_ident = ids.RunIdentifier(run_name=run_id.replace("/", "_"),
                                      run_time=(started_at or dt.datetime(1970, 1, 1)).replace(tzinfo=dt.UTC))
        t_setup = time.perf_counter()
        stored = {(r.case_id, r.check_name): r for r in lines.itertuples()}
        by_case = {case_id: frame for case_id, frame in samples.groupby("case_id", sort=False)}
        skipped = []
        for case_id, case_verdict in cases:
            if case_id not in suites:
                log.warning("data docs for run %s: case %s is not in the catalog any more; left out", run_id, case_id)
                skipped.append(case_id)
                continue
            try:
                suite = load_suite(suites[case_id])
            except SuiteError as exc:
                log.warning("data docs for run %s: case %s left out: %s", run_id, case_id, exc)
                skipped.append(case_id)
                continue
            gx_suite = ctx.suites.add(_described_suite(suite.name, suite.expectations, case_id, stored))
            rows = by_case.get(case_id, _NO_SAMPLES)
            frame = rows[rows.metric.isin(suite.metrics)][["metric", "value"]].reset_index(drop=True)
            result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
                gx_suite, result_format="SUMMARY")
            _json_clean(result)
            result.meta.update({"run_id": run_ident, "validation_time": run_ident.run_time,
                                "hybrid": {"run_id": run_id, "build_id": build_id, "testbed_id": testbed_id,
                                           "profile": profile, "case_id": case_id, "case_verdict": case_verdict}})
            suite_ident = ids.ExpectationSuiteIdentifier(name=suite.name)
            ctx.validation_results_store.store_validation_results(
                result, ids.ValidationResultIdentifier(suite_ident, run_ident, case_id), suite_ident)
        t_validated = time.perf_counter()
        ctx.build_data_docs()
        t_site = time.perf_counter()
        if not (staging / SITE_INDEX).is_file():
            raise RuntimeError(f"Great Expectations built no site index at {staging / SITE_INDEX}")
        _swap_in(staging / "gx", out / "gx")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    done = len(cases) - len(skipped)
    timing = DataDocsTiming(done, tuple(skipped), t_setup - t0, t_validated - t_setup, t_site - t_validated)
    log.info("data docs for run %s: %d cases in %.1f s (%.3f s per case, site %.1f s)", run_id, done,
             time.perf_counter() - t0, timing.per_case_s, timing.site_s)
    return out / SITE_INDEX, timing


class _Ids:
    """GX's identifier classes, imported with GX (a 2-3 s import, paid only when used)."""

    def __init__(self) -> None:
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        self.RunIdentifier = RunIdentifier
        self.ExpectationSuiteIdentifier = ExpectationSuiteIdentifier
        self.ValidationResultIdentifier = ValidationResultIdentifier


def _context(root: Path) -> tuple[Any, Any, _Ids]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.enable_analytics(False)  # saves the context's config, progress bars included
    asset = ctx.data_sources.add_pandas("hybrid_samples").add_dataframe_asset("case_samples")
    return ctx, asset.add_batch_definition_whole_dataframe("whole"), _Ids()


def _described_suite(name: str, specs: tuple[ExpectationSpec, ...], case_id: str,
                     stored: dict[tuple[str, str], Any]) -> Any:
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = []
    for spec in specs:
        line = stored.get((case_id, spec.check))
        if line is None:
            text = f"{spec.check} (spec {spec.meta['spec_text']}). Verdict in the store: none stored for this run"
        else:
            text = (f"{spec.check} (spec {line.spec_text}): {line.statistic}({line.metric}) {line.comparison} "
                    f"{line.threshold:g} {line.unit}. Verdict in the store: {line.verdict}"
                    + (f" ({line.detail})" if line.detail else ""))
        expectations.append(ExpectationConfiguration(
            type=spec.type, kwargs=spec.kwargs, meta=spec.meta,
            description=_template_text(text)).to_domain_obj())
    return gx.ExpectationSuite(name=name, expectations=expectations)


def _template_text(text: str) -> str:
    """GX puts a description into the page as raw HTML through a string template: a bare "<"
    starts a tag (and hid the rest of "p90 <= 5"), a bare "$" a template parameter."""
    text = text.replace("<=", "\u2264").replace(">=", "\u2265")
    return html.escape(text, quote=False).replace("$", "$$")


def _json_clean(result: Any) -> None:
    """GX 1.24 leaves numpy booleans (and may leave numpy numbers) in expectation results;
    its validation-results store cannot encode them."""
    from great_expectations.util import convert_to_json_serializable

    result.success = bool(result.success)
    for r in result.results:
        r.success = bool(r.success)
        r.result = convert_to_json_serializable(r.result)
    result.statistics = convert_to_json_serializable(result.statistics)


def _swap_in(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}-old-{time.monotonic_ns()}")
    if target.exists():
        target.replace(old)
    try:
        new.replace(target)
    except OSError:
        if old.exists():
            old.replace(target)  # put the earlier site back
        raise
    shutil.rmtree(old, ignore_errors=True)
