"""After a case is stored: compare it with its baseline build, and draw its trend.

Dagster-free (the asset turns the evidence into an asset check and metadata). Never fatal to
the case: whatever happens here, the case's own results are already stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from hybrid_assets.analysis.common import NoHistoryError
from hybrid_assets.analysis.plots import case_trend_pngs
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


def trend_plot(store: MetricsStore, run_id: str, case_id: str, out_dir: Path,
               logger: logging.Logger = log) -> Union[Path, None]:
    """The trend of the case's most telling judged metric over builds (a failing line first)."""
    try:
        paths = case_trend_pngs(store, run_id, case_id, out_dir, max_plots=1)
    except NoHistoryError as exc:
        logger.info("case %s: no trend to draw: %s", case_id, exc)
        return None
    return paths[0] if paths else None
