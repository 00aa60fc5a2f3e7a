"""After a case is stored: compare it with its baseline build, and draw its trend.

Dagster-free (the asset turns the evidence into an asset check and metadata). Never fatal to
the case: whatever happens here, the case's own results are already stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from hybrid_assets.analysis.common import NoHistoryError
from hybrid_assets.analysis.plots import case_trend_pngs, trend_png
from hybrid_assets.regress.detect import Change, Finding, detect_case, summarize_findings
from hybrid_assets.regress.queries import UnknownRunError
from hybrid_assets.store import MetricsStore

log = logging.getLogger(__name__)
CHECK_NAME = "no_regression_vs_baseline"


@dataclass(frozen=True)
class RegressionEvidence:
    verdict: str  # REGRESSED | DRIFTED | INVALID | UNCHANGED | IMPROVED
    reason: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict in (Change.UNCHANGED, Change.IMPROVED)

    @property
    def worst(self) -> Union[Finding, None]:
        """The finding the verdict is about (the largest change among those with the verdict)."""
        hits = [f for f in self.findings if f.verdict == self.verdict]
        return max(hits, key=lambda f: abs((f.change_ratio or 1.0) - 1.0)) if hits else None


def compare_with_baseline(store: MetricsStore, run_id: str, case_id: str,
                          logger: logging.Logger = log) -> RegressionEvidence:
    """Regression findings of one stored case against its baseline (written to the store)."""
    try:
        findings = detect_case(store, run_id, case_id)
    except UnknownRunError as exc:  # e.g. the case was staged because the file was locked
        return RegressionEvidence(Change.INVALID.value, f"not compared: {exc}")
    verdict, reason = summarize_findings(findings)
    logger.info("case %s: regression check %s: %s", case_id, verdict, reason)
    return RegressionEvidence(verdict, reason, findings)


def findings_table(findings: list[Finding]) -> str:
    lines = ["| metric | stat | baseline build | baseline | current | ratio | CI | p | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in findings:
        ci = f"{f.ci_low:.3g}-{f.ci_high:.3g}" if f.ci_low is not None and f.ci_high is not None else "-"
        lines.append(f"| {f.metric} | {f.statistic} | {f.baseline_build_id or '-'} | {_n(f.baseline_value)} | "
                     f"{_n(f.current_value)} | {_n(f.change_ratio)} | {ci} | {_n(f.p_value)} | {f.verdict} |")
    return "\n".join(lines)


def _n(v: Union[float, None]) -> str:
    return "-" if v is None else f"{v:.4g}"


def trend_plots(store: MetricsStore, run_id: str, case_id: str, out_dir: Path,
                flagged: Sequence[Finding] = (), logger: logging.Logger = log) -> list[Path]:
    """The trends of the case's most telling metrics over builds: those flagged against the
    baseline if any, else one line that did not pass (none when nothing has a history)."""
    try:
        if flagged:
            return [flagged_trend_png(store, f, out_dir) for f in flagged]
        return case_trend_pngs(store, run_id, case_id, out_dir, max_plots=1)
    except NoHistoryError as exc:
        logger.info("case %s: no trend to draw: %s", case_id, exc)
        return []


def flagged_trend_png(store: MetricsStore, f: Finding, out_dir: Path) -> Path:
    """The trend of a flagged metric at the statistic its spec line judges, with that line's
    threshold (the finding's own statistic when no line gives one)."""
    lines = store.query("SELECT statistic, threshold, comparison FROM v_expectations "
                        "WHERE run_id = ? AND case_id = ? AND metric = ? ORDER BY verdict = 'PASS' LIMIT 1",
                        [f.run_id, f.case_id, f.metric])
    statistic, threshold, comparison = (lines.iloc[0].statistic, float(lines.iloc[0].threshold),
                                        lines.iloc[0].comparison) if len(lines) else (f.statistic, None, None)
    png = trend_png(store, testbed_id=f.testbed_id, profile=f.profile, case_id=f.case_id, metric=f.metric,
                    statistic=statistic, threshold=threshold, comparison=comparison)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{f.case_id}__{f.metric}__{statistic}.png"
    path.write_bytes(png)
    return path
