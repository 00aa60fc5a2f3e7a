"""Great Expectations 1.x suites: the spec's thresholds as data, and their validation.

Suites live in ``expectations/<name>.json`` in GX's own JSON (``ExpectationSuite.to_json_dict``).
Each expectation's ``meta`` names the Dagster check (``check``), the metric it judges
(``metric``), the spec section and the spec's own wording. dagster-ge requires GX < 1.0,
so GX is called directly; its SQL datasource fails on DuckDB, so samples are validated as
a pandas DataFrame.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pandas as pd

ENV_EXPECTATIONS_DIR = "HYBRID_EXPECTATIONS_DIR"
REQUIRED_META = ("check", "metric", "spec_section", "spec_text")
SUPPORTED_TYPES = (
    "expect_column_quantile_values_to_be_between",
    "expect_column_max_to_be_between",
    "expect_column_min_to_be_between",
    "expect_column_mean_to_be_between",
)
_CHECK_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class SuiteError(ValueError):
    """A suite file is missing, unreadable or not a valid suite."""


def expectations_dir() -> Path:
    configured = os.environ.get(ENV_EXPECTATIONS_DIR)
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "expectations"


@dataclass(frozen=True)
class ExpectationSpec:
    type: str
    kwargs: dict[str, Any]
    meta: dict[str, Any]

    @property
    def check(self) -> str:
        return str(self.meta["check"])

    @property
    def metric(self) -> str:
        return str(self.meta["metric"])


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    expectations: tuple[ExpectationSpec, ...]

    @property
    def metrics(self) -> set[str]:
        return {e.metric for e in self.expectations}


def load_suite(name: str, directory: Union[Path, None] = None) -> Suite:
    path = (directory or expectations_dir()) / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SuiteError(f"expectation suite {name!r} not found at {path}") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise SuiteError(f"expectation suite {path} is unreadable: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("name") != name or not isinstance(raw.get("expectations"), list):
        raise SuiteError(f"{path}: expected a GX suite object named {name!r} with an 'expectations' list")
    specs = []
    seen: set[str] = set()
    for i, e in enumerate(raw["expectations"]):
        where = f"{path} expectation #{i}"
        if not isinstance(e, dict) or e.get("type") not in SUPPORTED_TYPES:
            raise SuiteError(f"{where}: type must be one of {SUPPORTED_TYPES}, got {e.get('type')!r}")
        meta = e.get("meta") or {}
        missing = [k for k in REQUIRED_META if not meta.get(k)]
        if missing:
            raise SuiteError(f"{where}: meta lacks {missing}")
        if not _CHECK_NAME.match(str(meta["check"])) or meta["check"] in seen:
            raise SuiteError(f"{where}: check name {meta['check']!r} must be unique and [A-Za-z0-9_]+")
        seen.add(meta["check"])
        specs.append(ExpectationSpec(e["type"], dict(e.get("kwargs") or {}), dict(meta)))
    # Structure only: GX itself (a 3 s import) judges the configuration when the suite first
    # runs, and in the tests (``verify_with_gx``), not while Dagster loads definitions.
    return Suite(name, path, tuple(specs))


def verify_with_gx(suite: Suite) -> None:
    """Raise ``SuiteError`` if Great Expectations would not run this suite."""
    _gx_suite(suite.name, list(suite.expectations), suite.path)


def _gx_suite(name: str, specs: list[ExpectationSpec], path: Path) -> Any:
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    try:
        return gx.ExpectationSuite(name=name, expectations=[
            ExpectationConfiguration(type=s.type, kwargs=s.kwargs, meta=s.meta).to_domain_obj() for s in specs
        ])
    except Exception as exc:  # GX raises many types for a bad configuration
        raise SuiteError(f"{path}: Great Expectations rejects the suite: {exc}") from exc


@dataclass(frozen=True)
class GxResult:
    check: str
    success: bool
    observed: Union[float, None]
    exception: Union[str, None]


class GxValidator:
    """One ephemeral GX context per process (GX import and set-up take seconds)."""

    _lock = threading.RLock()
    _batch_definition: Any = None

    @classmethod
    def _batch_def(cls) -> Any:
        with cls._lock:
            if cls._batch_definition is None:
                import great_expectations as gx
                from great_expectations.data_context.types.base import ProgressBarsConfig

                ctx = gx.get_context(mode="ephemeral")
                ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
                asset = ctx.data_sources.add_pandas("hybrid_samples").add_dataframe_asset("case_samples")
                cls._batch_definition = asset.add_batch_definition_whole_dataframe("whole")
            return cls._batch_definition

    def validate(self, suite: Suite, samples: pd.DataFrame) -> dict[str, GxResult]:
        """GX's verdict per check on a frame with ``metric`` and ``value`` columns."""
        gx_suite = _gx_suite(suite.name, list(suite.expectations), suite.path)
        with self._lock:
            # ValidationDefinition.run would store results and trips over numpy booleans
            # in GX 1.24; Batch.validate stores nothing.
            batch = self._batch_def().get_batch(batch_parameters={"dataframe": samples})
            result = batch.validate(gx_suite, result_format="SUMMARY")
        out: dict[str, GxResult] = {}
        for r in result.results:
            check = str(r.expectation_config.meta["check"])
            exc = None
            if r.exception_info and r.exception_info.get("raised_exception"):
                exc = str(r.exception_info.get("exception_message"))
            out[check] = GxResult(check, bool(r.success), _observed(r.result.get("observed_value")), exc)
        return out


def _observed(value: Any) -> Union[float, None]:
    if isinstance(value, dict):  # quantile expectations: {"quantiles": [...], "values": [...]}
        values = value.get("values") or []
        value = values[0] if values else None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN: nothing observed
