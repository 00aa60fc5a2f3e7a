"""What analysts need beyond the views: Parquet export of a run, trend plots over builds and
Great Expectations Data Docs per run (docs/analysts.md). Import the modules themselves:
``plots`` loads matplotlib and ``datadocs`` Great Expectations (seconds), so nothing heavy is
imported here."""

from hybrid_assets.analysis.common import NoHistoryError, UnknownCaseError, UnknownRunError

__all__ = ["NoHistoryError", "UnknownCaseError", "UnknownRunError"]
