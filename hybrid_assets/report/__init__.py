"""Run reports: Markdown and HTML for people, JUnit XML for CI, from the store."""

import os
from pathlib import Path

from hybrid_assets.report.model import RunReport, build_report
from hybrid_assets.report.render import to_html, to_junit, to_markdown, write_reports

__all__ = ["RunReport", "build_report", "to_html", "to_junit", "to_markdown", "write_reports"]

ENV_REPORTS_DIR = "HYBRID_REPORTS_DIR"
DEFAULT_REPORTS_DIR = "var/reports"


def reports_root() -> Path:
    """Where reports go: $HYBRID_REPORTS_DIR, else var/reports (one folder per run id)."""
    return Path(os.environ.get(ENV_REPORTS_DIR) or DEFAULT_REPORTS_DIR)
