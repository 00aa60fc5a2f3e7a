"""What a run concluded, read back from the store, against the spec's success criteria.

The spec's Phase 5.5 success criteria: 100% workflow coverage (Part 1), every stress test
passing (Part 2), 95%+ automatic recovery across failure scenarios (Part 3), every benchmark
met (Part 4); production readiness needs all four. A case of the catalog that did not run,
or did not PASS, counts against its part; SKIPPED cases are listed, never counted as passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from hybrid_assets.catalog import Case
from hybrid_assets.catalog.loader import PART_GROUPS
from hybrid_assets.store import MetricsStore

PART_TITLES = {1: "Workflow coverage", 2: "Stress tests", 3: "Failure scenarios", 4: "Performance benchmarks"}
SPEC_PROMISED = {1: 42, 2: 36, 3: 48, 4: 54}


@dataclass(frozen=True)
class Criterion:
    name: str
    part: int
    required: str
    passed: int
    measured: int
    in_catalog: int
    met: bool
    evidence: str


@dataclass(frozen=True)
class RunReport:
    run: dict[str, Any]
    verdicts: pd.DataFrame
    expectations: pd.DataFrame
    criteria: list[Criterion]
    regressions: pd.DataFrame = field(default_factory=pd.DataFrame)  # v_regressions rows of the run
    trends: dict[str, list[str]] = field(default_factory=dict)  # case id -> PNG paths, relative to the report

    @property
    def flagged(self) -> pd.DataFrame:
        """Findings worse than the baseline (REGRESSED or DRIFTED)."""
        r = self.regressions
        return r[r.verdict.isin(["REGRESSED", "DRIFTED"])] if len(r) else r

    @property
    def production_ready(self) -> bool:
        return all(c.met for c in self.criteria)

    @property
    def all_checks_passed(self) -> bool:
        """No FAIL, ERROR or INVALID among the cases that ran (SKIPPED is not a failure)."""
        return bool(len(self.verdicts)) and set(self.verdicts.verdict) <= {"PASS", "SKIPPED"}


def _criterion(part: int, cases: list[Case], verdicts: pd.DataFrame) -> Criterion:
    in_catalog = [c for c in cases if c.part == part]
    ran = verdicts[verdicts.part == part]
    passed = int((ran.verdict == "PASS").sum())
    measured = int((ran.verdict != "SKIPPED").sum())
    denominator = max(len(in_catalog), SPEC_PROMISED[part])
    if part == 3:
        required, met = "95% or more of the failure scenarios recover automatically", passed >= 0.95 * denominator
    else:
        required, met = "every case passes", passed == denominator
    evidence = (f"{passed} PASS of {denominator} ({len(in_catalog)} in the catalog, {len(ran)} ran in this run, "
                f"{SPEC_PROMISED[part]} promised by the spec)")
    return Criterion(PART_TITLES[part], part, required, passed, measured, len(in_catalog), met, evidence)


def build_report(store: MetricsStore, run_id: str, cases: list[Case]) -> RunReport:
    runs = store.query("SELECT * FROM v_runs WHERE run_id = ?", [run_id])
    if runs.empty:
        raise LookupError(f"run {run_id} is not in {store.path}")
    verdicts = store.query("SELECT * FROM v_verdicts WHERE run_id = ? ORDER BY part, spec_section, case_id", [run_id])
    expectations = store.query(
        "SELECT * FROM v_expectations WHERE run_id = ? ORDER BY case_id, spec_section, expectation", [run_id])
    criteria = [_criterion(part, cases, verdicts) for part in sorted(PART_GROUPS)]
    regressions = store.query("SELECT * FROM v_regressions WHERE run_id = ? ORDER BY verdict, case_id, metric",
                              [run_id])
    return RunReport(runs.iloc[0].to_dict(), verdicts, expectations, criteria, regressions)
