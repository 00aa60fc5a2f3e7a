"""Run reports: Markdown and HTML for people, JUnit XML for CI, from the store."""

from hybrid_assets.report.model import RunReport, build_report
from hybrid_assets.report.render import to_html, to_junit, to_markdown, write_reports

__all__ = ["RunReport", "build_report", "to_html", "to_junit", "to_markdown", "write_reports"]
