"""Is there enough evidence for a percentile claim? MLPerf LoadGen's early-stopping rule.

A claim "the q-quantile of X is at most T" is a claim about the probability p = 1 - q that
one sample exceeds T. With n samples of which k exceed T:

- PASS is supported when seeing k or fewer exceedances would be unlikely (<= 1 - confidence)
  if the true exceedance rate were p: ``BinomCDF(k; n, p) <= 1 - confidence``;
- FAIL is supported when seeing k or more would be that unlikely: ``P(X >= k) <= 1 - confidence``;
- otherwise the evidence is insufficient: INVALID, with the number of samples that would
  support a PASS if no further sample exceeded T.

At confidence 0.99 and zero exceedances that is 44 samples for p90, 90 for p95 and 459 for p99.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from scipy.stats import binom

Decision = Literal["pass", "fail", "insufficient"]
DEFAULT_CONFIDENCE = 0.99


@dataclass(frozen=True)
class QuantileEvidence:
    decision: Decision
    n: int
    exceedances: int
    needed_n: Union[int, None]  # samples needed for a PASS at the same exceedance count


def samples_needed(quantile: float, exceedances: int = 0, confidence: float = DEFAULT_CONFIDENCE) -> int:
    p = 1.0 - quantile
    n = max(1, exceedances + 1)
    # Doubling then bisection: BinomCDF(k; n, p) decreases as n grows.
    hi = n
    while binom.cdf(exceedances, hi, p) > 1 - confidence:
        hi *= 2
        if hi > 1 << 40:
            raise ValueError("no feasible sample count")
    lo = max(n, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if binom.cdf(exceedances, mid, p) <= 1 - confidence:
            hi = mid
        else:
            lo = mid + 1
    return lo


def quantile_evidence(values: list[float], quantile: float, bound: float, upper: bool = True,
                      confidence: float = DEFAULT_CONFIDENCE) -> QuantileEvidence:
    """Evidence for "the ``quantile`` of values is <= bound" (``upper``) or ">= bound"."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    n = len(values)
    # For a lower bound on the q-quantile, the "bad" samples are those below it, and the
    # claim is about their rate q.
    p = 1.0 - quantile if upper else quantile
    k = sum(1 for v in values if (v > bound if upper else v < bound))
    if n and binom.cdf(k, n, p) <= 1 - confidence:
        return QuantileEvidence("pass", n, k, None)
    if n and k > 0 and binom.sf(k - 1, n, p) <= 1 - confidence:
        return QuantileEvidence("fail", n, k, None)
    needed = samples_needed(1.0 - p, k, confidence) if k < n * p or n == 0 else None
    return QuantileEvidence("insufficient", n, k, needed)
