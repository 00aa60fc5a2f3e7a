"""Trend plots for a run's report: the cases worth a look (not PASS, or flagged against the
baseline), one plot each, beside the report (``trends/``)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from hybrid_assets.harness.baseline import trend_plots
from hybrid_assets.regress.detect import Finding
from hybrid_assets.report.model import RunReport
from hybrid_assets.store import MetricsStore

log = logging.getLogger(__name__)
MAX_PLOTTED_CASES = 40  # a plot costs ~0.1 s; a whole failing catalog should not cost minutes


def _findings(report: RunReport, case_id: str) -> list[Finding]:
    """The case's flagged findings (at most two metrics), as Finding objects."""
    rows = report.flagged[report.flagged.case_id == case_id].head(2) if len(report.flagged) else []
    fields = {f.name for f in dataclasses.fields(Finding)}
    return [Finding(**{k: v for k, v in row.items() if k in fields}) for row in
            (rows.to_dict("records") if len(rows) else [])]


def with_trends(report: RunReport, store: MetricsStore, directory: Path) -> RunReport:
    flagged = set(report.flagged.case_id) if len(report.flagged) else set()
    wanted = [c for c in report.verdicts.case_id if c in flagged]
    wanted += [v.case_id for v in report.verdicts.itertuples() if v.verdict != "PASS" and v.case_id not in flagged]
    trends: dict[str, list[str]] = {}
    for case_id in wanted[:MAX_PLOTTED_CASES]:
        paths = trend_plots(store, report.run["run_id"], case_id, directory / "trends", _findings(report, case_id), log)
        if paths:
            trends[case_id] = [str(p.relative_to(directory)) for p in paths]
    return dataclasses.replace(report, trends=trends)
