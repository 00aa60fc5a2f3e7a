"""Regression detection across builds, per metric and testbed (issue 7, item 3).

``detect_case``/``detect_run`` compare a run's raw samples with a baseline build's on the same
testbed and profile (Mann-Whitney U, bootstrap CI of the ratio, relative threshold) and look
for slow drift over the history (L1 step detection); ``summarize_findings`` reduces a case's
findings to one verdict for an asset check.
"""

from hybrid_assets.regress.detect import (
    Change,
    Finding,
    RegressionConfig,
    compare,
    detect_case,
    detect_run,
    summarize_findings,
)
from hybrid_assets.regress.queries import UnknownRunError

__all__ = ["Change", "Finding", "RegressionConfig", "UnknownRunError", "compare", "detect_case", "detect_run",
           "summarize_findings"]
