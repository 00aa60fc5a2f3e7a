"""Step detection over a metric's history of per-build values, for slow drift.

As airspeed velocity's ``step_detect`` does, the history is fitted by a piecewise-constant
function minimising a robust L1 cost (each segment sits at its median; the cost is the sum of
absolute deviations) plus a penalty ``gamma`` per segment, solved exactly by dynamic
programming (O(n^2) on vectorised rows: about a millisecond for 100 builds).

The penalty differs from asv's on purpose. asv picks gamma by an information criterion
(beta = 4 ln(n)/n per breakpoint against the log of the fit's L1 cost); on a short, steady
ramp (4 % per build over 10 builds) that criterion prefers one segment, so the drift it is
meant to find goes unseen. Here gamma comes from the noise of the history itself:

    gamma = PENALTY_FACTOR * sigma * ln(n),   sigma = 1.4826 * MAD(diff(y)) / sqrt(2)

(the difference-MAD noise estimate: a steady trend shifts every difference alike and so does
not inflate it; a step moves one difference, which the MAD ignores). A split is made only if it
saves more than about 2 sigma ln(n) of absolute deviation: the L1 counterpart of BIC's
ln(n) per extra parameter for Laplace-distributed noise. sigma is floored at 0.1 % of the
history's median magnitude so that a noise-free history is not cut into single builds for
rounding-level changes, and at ``noise`` when the caller knows each value's standard error
(from the raw samples behind it): a short history's difference MAD is itself noisy and can
come out small by chance (5 builds of pure noise at 30 % per-sample spread: 4.5 % false
drifts without the floor, about 1 % with it).

A drift is reported, like asv's ``detect_regressions``, when the newest segment is worse
than the best earlier segment by more than the relative threshold and by more than either
segment's own spread (mean absolute deviation), and, so that a fit through noise does not
flag, by more than ``SIGNIFICANCE_Z`` standard errors of the difference of the two segments'
levels: z * sigma * sqrt(1/k_best + 1/k_newest), with sigma here the larger of the penalty's
and 1.4826 * median|diff(y)| / sqrt(2) (which a trend inflates: conservative, because the
difference MAD of a 4-build history is small by chance too often). Simulated histories of
pure noise (lognormal, 600 each) give false drifts at 10 % threshold: per-build noise 5 %:
2.0 % (4 builds), 1.0 % (10), 0 % (30); 10 %: 3.7 %, 2.7 %, 0.7 %; 20 %: 3.8 %, 3.0 %,
0.5 %. Noise as large as the threshold needs a larger threshold. Found: 4 %/build over 10
builds at 1.8 % noise 100 %, at 5 % noise 92 %; one 30 % step at the newest of 6 builds at 2 %
noise 99 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

PENALTY_FACTOR = 2.0
SIGNIFICANCE_Z = 3.0
_MAD_TO_SIGMA = 1.4826
_SIGMA_FLOOR = 1e-3  # relative to the history's median magnitude


@dataclass(frozen=True)
class Segment:
    start: int  # index of the first build in the segment
    end: int  # index of the last build (inclusive)
    value: float  # the segment's median
    spread: float  # mean absolute deviation of its builds from ``value``

    @property
    def size(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class DriftReport:
    segments: tuple[Segment, ...]
    penalty: float
    drifted: bool
    best: Union[Segment, None]  # the best segment before the newest one (None: one segment only)
    step_index: Union[int, None]  # first build after ``best``: where the worsening began
    ratio: Union[float, None]  # newest segment's value / best earlier segment's value
    margin: Union[float, None] = None  # the gap the noise alone could explain (z standard errors)


def noise_sigma(y: np.ndarray, noise: Union[float, None] = None) -> float:
    """Robust noise scale of a piecewise-constant-plus-noise series (difference MAD), at least
    ``noise`` (a known standard error of each value) when given."""
    y = np.asarray(y, dtype=float)
    floor = _SIGMA_FLOOR * max(float(np.median(np.abs(y))) if y.size else 0.0, 1e-12)
    if noise is not None and math.isfinite(noise):
        floor = max(floor, float(noise))
    if y.size < 3:
        return floor
    d = np.diff(y)
    mad = float(np.median(np.abs(d - np.median(d))))
    return max(_MAD_TO_SIGMA * mad / math.sqrt(2.0), floor)


def _cost_matrix(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cost[i, j] = sum |y[i..j] - median(y[i..j])| and med[i, j] = that median (j >= i; inf below)."""
    n = y.size
    cost = np.full((n, n), np.inf)
    med = np.full((n, n), np.nan)
    for length in range(1, n + 1):
        # Sorted windows: the median is the middle, and the absolute deviations from it sum to
        # (the top half's sum) - (the bottom half's sum).
        w = np.sort(np.lib.stride_tricks.sliding_window_view(y, length), axis=1)
        half = length // 2
        m = w[:, half] if length % 2 else 0.5 * (w[:, half - 1] + w[:, half])
        starts = np.arange(n - length + 1)
        cost[starts, starts + length - 1] = w[:, length - half:].sum(axis=1) - w[:, :half].sum(axis=1)
        med[starts, starts + length - 1] = m
    return cost, med


def fit_segments(y: object, penalty: Union[float, None] = None,
                 noise: Union[float, None] = None) -> tuple[tuple[Segment, ...], float]:
    """Optimal piecewise-constant L1 fit of ``y`` with ``penalty`` per segment (default: from the
    noise, see the module doc). Returns (segments in order, the penalty used)."""
    arr = np.asarray(y, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("step detection needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError("step detection needs finite values (drop NaN/inf builds first)")
    n = arr.size
    gamma = PENALTY_FACTOR * noise_sigma(arr, noise) * math.log(max(n, 2)) if penalty is None else float(penalty)
    if gamma < 0:
        raise ValueError(f"penalty must be >= 0, got {gamma}")
    cost, med = _cost_matrix(arr)
    best = np.zeros(n + 1)  # best[j]: optimal cost of y[:j]
    back = np.zeros(n + 1, dtype=int)
    for j in range(1, n + 1):
        total = best[:j] + cost[:j, j - 1]  # last segment y[i..j-1] for each start i
        i = int(np.argmin(total))
        best[j], back[j] = total[i] + gamma, i
    bounds: list[tuple[int, int]] = []
    j = n
    while j > 0:
        bounds.append((int(back[j]), j - 1))
        j = int(back[j])
    segs = tuple(Segment(s, e, float(med[s, e]), float(cost[s, e]) / (e - s + 1)) for s, e in reversed(bounds))
    return segs, gamma


def detect_drift(y: object, *, lower_is_better: bool = True, rel_threshold: float = 0.10,
                 penalty: Union[float, None] = None, noise: Union[float, None] = None) -> DriftReport:
    """Is the newest build's segment worse than the best earlier segment by more than
    ``rel_threshold`` (relative) and by more than either segment's spread?"""
    if rel_threshold < 0:
        raise ValueError(f"rel_threshold must be >= 0, got {rel_threshold}")
    segs, gamma = fit_segments(y, penalty, noise)
    if len(segs) < 2:
        return DriftReport(segs, gamma, False, None, None, None)
    newest, earlier = segs[-1], segs[:-1]
    pick = min if lower_is_better else max
    best = pick(earlier, key=lambda s: s.value)
    gap = newest.value - best.value if lower_is_better else best.value - newest.value
    ratio = newest.value / best.value if best.value != 0 else (1.0 if newest.value == 0 else math.inf)
    arr = np.asarray(y, dtype=float).ravel()
    sigma = max(noise_sigma(arr, noise), _MAD_TO_SIGMA * float(np.median(np.abs(np.diff(arr)))) / math.sqrt(2.0))
    margin = SIGNIFICANCE_Z * sigma * math.sqrt(1.0 / best.size + 1.0 / newest.size)
    drifted = gap > rel_threshold * abs(best.value) and gap > max(best.spread, newest.spread) and gap > margin
    return DriftReport(segs, gamma, bool(drifted), best, best.end + 1, ratio, margin)
