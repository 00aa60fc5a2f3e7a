"""Two-sample comparison of raw samples: is the current build worse than the baseline?

Pure functions on numpy arrays. Two pieces of evidence are combined by the caller
(``hybrid_assets.regress.detect``):

* a one-sided Mann-Whitney U test in the "worse" direction (distribution-free, works on the
  raw samples, robust to the heavy right tails latency data has);
* a percentile-bootstrap confidence interval of the ratio current/baseline of a location
  statistic (the median by default; the quantile or mean an expectation judges when it asks).
  The interval is two-sided at ``confidence`` (default 99 %: the 0.5 % and 99.5 % points of
  the bootstrap distribution), so a decision on one of its bounds is made at 99.5 %.

The bootstrap is seeded (reproducible) and vectorised. Up to ``PLAIN_BOOTSTRAP_MAX_N`` samples
a side it is the textbook one: ``resamples`` draws with replacement, statistic of each. Above
that, drawing ``resamples x n`` values costs seconds, so the same bootstrap distribution is
sampled without materialising resamples: a resample's k-th order statistic is the sample's
j-th with P(j <= i) = P(Binomial(n, i/n) >= k), which gives the bootstrap quantile exactly
(as the order statistic ceil(q n)); the bootstrap mean at such sizes is normal to within
sampling error (CLT), so it is drawn from N(mean, s^2/n).

Non-finite values (NaN, +-inf) are dropped and counted; fewer than ``min_samples`` finite
values on either side makes the comparison undecidable (never a pass for lack of data).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union

import numpy as np
from scipy import stats as sps

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.99
DEFAULT_MIN_SAMPLES = 5
PLAIN_BOOTSTRAP_MAX_N = 5000
_CHUNK_ELEMENTS = 1_000_000  # resamples are drawn in chunks of about this many values (memory)

# What a comparison is made on: a quantile in (0, 1), or "mean".
Location = Union[float, str]


def location_for(statistic: str) -> Location:
    """The location statistic that stands for an expectation's ``statistic``.

    ``pNN`` -> quantile NN/100 and ``mean`` -> mean (the claim is about them); ``median``/``p50``
    -> 0.5. Extremes (``max``, ``min``) and anything else -> the median: a bootstrap of an
    extreme is degenerate (it is the sample maximum most of the time), so the comparison is
    made on the distribution's centre instead.
    """
    s = statistic.strip().lower()
    if s == "mean":
        return "mean"
    m = re.fullmatch(r"p(\d{1,2}(?:\.\d+)?)", s)
    if m and 0 < float(m.group(1)) < 100:
        return float(m.group(1)) / 100.0
    return 0.5


def location_name(location: Location) -> str:
    """``0.5`` -> ``p50``, ``0.9`` -> ``p90``, ``"mean"`` -> ``mean``."""
    if location == "mean":
        return "mean"
    pct = float(location) * 100
    return f"p{pct:g}"


def _check_location(location: Location) -> None:
    if location == "mean":
        return
    if isinstance(location, str) or not 0.0 < float(location) < 1.0:
        raise ValueError(f"location must be a quantile in (0, 1) or 'mean', got {location!r}")


def finite(values: object) -> tuple[np.ndarray, int]:
    """(the finite values as float64, how many were dropped as NaN or infinite)."""
    arr = np.asarray(values, dtype=float).ravel()
    keep = np.isfinite(arr)
    return arr[keep], int(arr.size - keep.sum())


def statistic(values: np.ndarray, location: Location) -> float:
    _check_location(location)
    if values.size == 0:
        raise ValueError("statistic of an empty sample")
    if location == "mean":
        return float(values.mean())
    return float(np.quantile(values, float(location)))


def mann_whitney_worse(baseline: np.ndarray, current: np.ndarray, *, lower_is_better: bool) -> float:
    """One-sided Mann-Whitney U p-value for "current is worse than baseline"
    (stochastically greater when lower is better, smaller when higher is better).
    Identical constant samples give 1.0 (no evidence of any shift)."""
    if baseline.size == 0 or current.size == 0:
        raise ValueError("Mann-Whitney U needs at least one value on each side")
    alternative = "greater" if lower_is_better else "less"
    p = float(sps.mannwhitneyu(current, baseline, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p) else p


def bootstrap_statistic(values: np.ndarray, location: Location, resamples: int,
                        rng: np.random.Generator) -> np.ndarray:
    """``resamples`` draws of the statistic's bootstrap distribution (see the module doc)."""
    _check_location(location)
    n = values.size
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if n <= PLAIN_BOOTSTRAP_MAX_N:
        out = np.empty(resamples)
        rows = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, resamples, rows):
            stop = min(resamples, start + rows)
            draw = values[rng.integers(0, n, size=(stop - start, n))]
            out[start:stop] = draw.mean(axis=1) if location == "mean" else np.quantile(draw, float(location), axis=1)
        return out
    if location == "mean":
        sd = float(values.std(ddof=1)) / math.sqrt(n)
        return rng.normal(float(values.mean()), sd, size=resamples)
    ordered = np.sort(values)
    k = max(1, math.ceil(float(location) * n))  # the resample's k-th smallest value is its quantile
    # cdf[i-1] = P(resample's k-th smallest <= ordered[i-1]) = P(Binomial(n, i/n) >= k)
    cdf = sps.binom.sf(k - 1, n, np.arange(1, n + 1) / n)
    idx = np.searchsorted(cdf, rng.random(resamples), side="left")
    return ordered[np.minimum(idx, n - 1)]


def _ratio(current: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """current/baseline, with 0/0 read as 1 (no change) and x/0 as +inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(current, dtype=float) / np.asarray(baseline, dtype=float)
    both_zero = (np.asarray(current) == 0) & (np.asarray(baseline) == 0)
    return np.where(both_zero, 1.0, r)


def bootstrap_ratio_ci(baseline: np.ndarray, current: np.ndarray, *, location: Location = 0.5,
                       confidence: float = DEFAULT_CONFIDENCE, resamples: int = DEFAULT_RESAMPLES,
                       seed: int = 0) -> tuple[float, float, float]:
    """(point ratio, low, high): percentile-bootstrap interval of statistic(current)/statistic(baseline)
    at ``confidence`` (two-sided), each side resampled independently from one seeded generator."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    base_rng, cur_rng = rng.spawn(2)
    point = float(_ratio(np.array(statistic(current, location)), np.array(statistic(baseline, location))))
    ratios = _ratio(bootstrap_statistic(current, location, resamples, cur_rng),
                    bootstrap_statistic(baseline, location, resamples, base_rng))
    tail = (1.0 - confidence) / 2
    # inverted_cdf picks actual draws: no interpolation between a finite ratio and +inf.
    low, high = np.quantile(ratios, [tail, 1.0 - tail], method="inverted_cdf")
    return point, float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """Baseline vs current on one metric. ``decidable`` False means too little (or unusable)
    data: ``reason`` says why and the figures that could not be computed are None."""

    decidable: bool
    reason: str
    location: Location
    baseline_n: int
    current_n: int
    baseline_dropped: int
    current_dropped: int
    baseline_value: Union[float, None] = None
    current_value: Union[float, None] = None
    ratio: Union[float, None] = None
    ci_low: Union[float, None] = None
    ci_high: Union[float, None] = None
    p_worse: Union[float, None] = None  # one-sided Mann-Whitney: current worse than baseline
    p_better: Union[float, None] = None  # the mirror test: current better than baseline


def compare_samples(baseline: object, current: object, *, lower_is_better: bool, location: Location = 0.5,
                    confidence: float = DEFAULT_CONFIDENCE, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    min_samples: int = DEFAULT_MIN_SAMPLES) -> Comparison:
    """Everything the verdict needs: counts, statistic values, ratio with its CI, both
    one-sided p-values. Ratios need non-negative samples: a negative value makes it undecidable."""
    _check_location(location)
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    base, base_dropped = finite(baseline)
    cur, cur_dropped = finite(current)
    counts = {"location": location, "baseline_n": int(base.size), "current_n": int(cur.size),
              "baseline_dropped": base_dropped, "current_dropped": cur_dropped}
    short = [f"{side} has {n} finite samples" for side, n in (("baseline", base.size), ("current", cur.size))
             if n < min_samples]
    if short:
        return Comparison(False, f"{' and '.join(short)}, at least {min_samples} needed", **counts)
    base_value, cur_value = statistic(base, location), statistic(cur, location)
    if base.min() < 0 or cur.min() < 0:
        # A ratio needs values of one sign: a resample's statistic could cross zero and flip it.
        return Comparison(False, "samples include negative values: a ratio of the two means nothing", **counts,
                          baseline_value=base_value, current_value=cur_value)
    ratio, low, high = bootstrap_ratio_ci(base, cur, location=location, confidence=confidence,
                                          resamples=resamples, seed=seed)
    p_worse = mann_whitney_worse(base, cur, lower_is_better=lower_is_better)
    p_better = mann_whitney_worse(base, cur, lower_is_better=not lower_is_better)
    return Comparison(True, "", **counts, baseline_value=base_value, current_value=cur_value, ratio=ratio,
                      ci_low=low, ci_high=high, p_worse=p_worse, p_better=p_better)
