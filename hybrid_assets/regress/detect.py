"""Regression detection per metric, per testbed and profile, across builds.

For each metric of a run's case that an expectation judges, the run's raw samples are compared
with a baseline build's raw samples on the same testbed and profile, and the metric's history of
per-build values is checked for a step (slow drift).

Baseline, in order: the ``baseline_build`` argument; the baseline pinned for the testbed and
profile; the most recent earlier build (``v_builds.build_seq``) whose runs of this case all
passed and have samples of the metric ("last_pass"); the most recent earlier build with samples
of the metric ("previous"). The baseline build's runs on the testbed and profile are pooled
(this run excluded, so a run can be compared with another run of its own build).

Verdict rule (lower is better; the mirror when higher is better). With r the ratio
current/baseline of the compared statistic, [lo, hi] its bootstrap CI at ``confidence`` and p
the one-sided Mann-Whitney p-value:

* REGRESSED: r > 1 + rel_threshold AND lo > 1 + rel_threshold AND p(worse) < alpha: the
  interval clears the threshold, not just 1 (a test of "worse by more than the threshold", at
  99.5 % one-sided with the default confidence), and the rank test agrees on the raw samples.
  Clearing only 1 was tried and flagged a re-run of the same build on real data: samples within
  a run are not independent (a ratio that grows over the run, runs of different length), so
  both the interval and the p-value are overconfident about run-to-run differences; the
  threshold has to be cleared with confidence to absorb that. The price is power: with 50
  samples a side, a 30 % slowdown is flagged in 100 of 100 trials at 10 % per-sample spread,
  77 at 20 %, 33 at 30 % (more samples, or the drift check over later builds, catch the rest).
* IMPROVED: r < 1 - rel_threshold AND hi < 1 - rel_threshold AND p(better) < alpha.
* UNCHANGED: otherwise.
* DRIFTED: not REGRESSED, but the history (builds up to this one with at least ``min_samples``
  samples each, at least ``min_history`` of them, the run's build last) has its newest segment
  worse than the best earlier segment by more than rel_threshold (``steps.detect_drift``).
  A metric measured once per run enters the history with every build that measured it: that
  is the only test such a metric can have (its direct comparison stays INVALID).
* INVALID: no baseline, a named baseline without results, too few finite samples on either
  side, or values a ratio cannot describe; never a pass for lack of data. Too short a history
  alone does not make a finding INVALID when the direct comparison is decidable: the detail
  then says that drift was not assessed.

The compared statistic is the one the expectation judges when it is a location (``pNN`` ->
that quantile, ``mean``); extremes (``max``, ``min``) are compared at the median (see
``stats.location_for``). A metric judged on both sides (a band) is "worse" away from the
band's centre, resolved from where the baseline sits.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import zlib
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import pandas as pd

from hybrid_assets.regress import queries as q
from hybrid_assets.regress.stats import (
    Comparison,
    Location,
    compare_samples,
    finite,
    location_for,
    location_name,
    statistic,
)
from hybrid_assets.regress.steps import DriftReport, detect_drift
from hybrid_assets.store import MetricsStore


class Change(enum.StrEnum):
    REGRESSED = "REGRESSED"
    DRIFTED = "DRIFTED"
    INVALID = "INVALID"
    UNCHANGED = "UNCHANGED"
    IMPROVED = "IMPROVED"


LOWER, HIGHER = "lower_is_better", "higher_is_better"


@dataclass(frozen=True)
class RegressionConfig:
    rel_threshold: float = 0.10  # a change smaller than this (relative) is never flagged
    alpha: float = 0.01  # Mann-Whitney significance level (one-sided)
    confidence: float = 0.99  # two-sided level of the bootstrap interval of the ratio
    min_samples: int = 5  # finite samples a side (and per build in the history)
    min_history: int = 4  # builds of history before step detection runs
    max_history: int = 200  # the newest builds step detection looks at (its cost grows as n^2 to n^3)
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.rel_threshold < 1:
            problems.append(f"rel_threshold must be in (0, 1), got {self.rel_threshold}")
        if not 0 < self.alpha < 0.5:
            problems.append(f"alpha must be in (0, 0.5), got {self.alpha}")
        if not 0.5 < self.confidence < 1:
            problems.append(f"confidence must be in (0.5, 1), got {self.confidence}")
        if self.min_samples < 2:
            problems.append(f"min_samples must be >= 2, got {self.min_samples}")
        if not 2 <= self.min_history <= self.max_history:
            problems.append(f"need 2 <= min_history <= max_history, got {self.min_history} and {self.max_history}")
        if self.resamples < 100:
            problems.append(f"resamples must be >= 100, got {self.resamples}")
        if problems:
            raise ValueError("invalid RegressionConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class Finding:
    """One metric of one run's case against its baseline: the ``regressions`` table's columns
    (the store stamps ``detected_at``). ``p_value`` is always the one-sided Mann-Whitney
    p-value for "current is worse"; ``change_ratio`` is current/baseline of ``statistic``
    (so > 1 is worse when lower is better); ``ci_low``/``ci_high`` its bootstrap interval at
    the configured confidence; ``step_*`` are set when a drift was found."""

    run_id: str
    case_id: str
    metric: str
    testbed_id: str
    profile: str
    build_id: str
    baseline_build_id: Union[str, None]
    baseline_source: Union[str, None]  # argument | pinned | last_pass | previous
    direction: str  # lower_is_better | higher_is_better | band (unresolved)
    statistic: str  # p50, p90, mean, ...
    baseline_value: Union[float, None]
    current_value: Union[float, None]
    change_ratio: Union[float, None]
    ci_low: Union[float, None]
    ci_high: Union[float, None]
    p_value: Union[float, None]
    baseline_samples: int
    current_samples: int
    step_build_id: Union[str, None]
    step_ratio: Union[float, None]
    history_builds: int
    verdict: str
    detail: str

    def row(self) -> dict[str, Any]:
        """The row ``MetricsStore.write_regressions`` takes."""
        out = dataclasses.asdict(self)
        del out["run_id"], out["case_id"]
        return out


@dataclass(frozen=True)
class _Judged:
    metric: str
    unit: str
    location: Location
    comparisons: frozenset[str]
    band: tuple[float, float]  # (lowest '>=' bound, highest '<=' bound) when judged on both sides
    skipped: bool  # every line on the metric was SKIPPED here


def detect_case(store: MetricsStore, run_id: str, case_id: str, *, baseline_build: Union[str, None] = None,
                config: RegressionConfig = RegressionConfig(), write: bool = True) -> list[Finding]:
    """Findings for every judged metric of one case of a run (written to the store unless
    ``write`` is False). UnknownBuildError if ``baseline_build`` names no build; UnknownRunError
    if the run or its case has no results."""
    if baseline_build is not None:
        q.check_known_build(store, baseline_build)
    return _detect_case(store, run_id, case_id, baseline_build, config, write)


def _detect_case(store: MetricsStore, run_id: str, case_id: str, baseline_build: Union[str, None],
                 config: RegressionConfig, write: bool) -> list[Finding]:
    ctx, pinned, lines = q.case_lines(store, run_id, case_id)
    if baseline_build is not None:
        named, source = baseline_build, "argument"
    else:
        named, source = pinned, ("pinned" if pinned else None)
    judged = _judged(lines)
    findings: list[Finding] = []
    if judged:
        findings = _detect(store, ctx, judged, named, source, config)
    if write:
        store.write_regressions(run_id, case_id, [f.row() for f in findings])
    return findings


def detect_run(store: MetricsStore, run_id: str, *, baseline_build: Union[str, None] = None,
               config: RegressionConfig = RegressionConfig(), write: bool = True) -> list[Finding]:
    """``detect_case`` for every case of the run."""
    if baseline_build is not None:
        q.check_known_build(store, baseline_build)
    out: list[Finding] = []
    for case_id in q.run_cases(store, run_id):
        out += _detect_case(store, run_id, case_id, baseline_build, config, write)
    return out


def summarize_findings(findings: list[Finding]) -> tuple[str, str]:
    """(overall verdict, one-line reason): REGRESSED if any metric regressed, else DRIFTED if
    any drifted, else INVALID if nothing could be compared, else IMPROVED if any improved,
    else UNCHANGED."""
    if not findings:
        return Change.INVALID.value, "no metric judged by an expectation to compare"
    by: dict[str, list[Finding]] = {}
    for f in findings:
        by.setdefault(f.verdict, []).append(f)
    invalid = len(by.get(Change.INVALID, []))
    tail = f"; {invalid} of {len(findings)} metrics could not be compared" if invalid else ""
    for verdict in (Change.REGRESSED, Change.DRIFTED):
        hits = by.get(verdict, [])
        if hits:
            more = f" (+{len(hits) - 2} more)" if len(hits) > 2 else ""
            return verdict.value, "; ".join(f.detail for f in hits[:2]) + more + tail
    if invalid == len(findings):
        return Change.INVALID.value, "; ".join(f"{f.metric}: {f.detail}" for f in findings[:3])
    improved = by.get(Change.IMPROVED, [])
    if improved:
        return Change.IMPROVED.value, "; ".join(f.detail for f in improved[:2]) + tail
    return Change.UNCHANGED.value, (f"{len(by.get(Change.UNCHANGED, []))} metrics within "
                                    f"the threshold or not significantly changed{tail}")


# ---- internals --------------------------------------------------------------------------

def _judged(lines: pd.DataFrame) -> dict[str, _Judged]:
    out: dict[str, _Judged] = {}
    for metric, g in lines.groupby("metric", sort=True):
        locs = [location_for(str(s)) for s in g.statistic]
        quantiles = [x for x in locs if x != "mean"]
        # A tail claim is about the tail: compare there (the quantile farthest from the median).
        if any(x != 0.5 for x in quantiles):
            loc: Location = max((x for x in quantiles if x != 0.5), key=lambda x: (abs(x - 0.5), x))
        else:
            loc = "mean" if "mean" in locs else 0.5
        upper = [float(t) for t, c in zip(g.threshold, g.comparison, strict=True) if c == "<=" and pd.notna(t)]
        lower = [float(t) for t, c in zip(g.threshold, g.comparison, strict=True) if c == ">=" and pd.notna(t)]
        band = (min(lower) if lower else math.nan, max(upper) if upper else math.nan)
        unit = next((str(u) for u in g.unit if isinstance(u, str) and u), "")
        out[str(metric)] = _Judged(str(metric), unit, loc, frozenset(g.comparison), band,
                                   bool((g.verdict == "SKIPPED").all()))
    return out


def _direction(j: _Judged, reference: Union[float, None]) -> str:
    if j.comparisons == {"<="}:
        return LOWER
    if j.comparisons == {">="}:
        return HIGHER
    centre = (j.band[0] + j.band[1]) / 2
    if reference is None or math.isnan(centre):
        return "band"
    return LOWER if reference >= centre else HIGHER


def _detect(store: MetricsStore, ctx: q.RunContext, judged: dict[str, _Judged], named: Union[str, None],
            source: Union[str, None], config: RegressionConfig) -> list[Finding]:
    metrics = sorted(judged)
    hist = q.history(store, ctx, metrics, [j.location for j in judged.values() if j.location != "mean"])
    qs = q.quantile_list(j.location for j in judged.values() if j.location != "mean")
    named_missing = named is not None and q.baseline_results(store, ctx, named) == 0
    baselines: dict[str, tuple[str, str]] = {}
    for m in metrics:
        if named is not None:
            baselines[m] = (named, str(source))
            continue
        earlier = hist[(hist.metric == m) & (hist.build_seq < ctx.build_seq)]
        passed = earlier[earlier.passed.fillna(False).astype(bool)]
        if not passed.empty:
            baselines[m] = (str(passed.build_id.iloc[-1]), "last_pass")
        elif not earlier.empty:
            baselines[m] = (str(earlier.build_id.iloc[-1]), "previous")
    raw = q.raw_samples(store, ctx, metrics, {m: b for m, (b, _) in baselines.items()})
    out = []
    for m in metrics:
        j = judged[m]
        of_metric = raw[raw.metric == m]
        cur = of_metric.value[of_metric.is_current].to_numpy(dtype=float)
        base_build, base_source = baselines.get(m, (None, None))
        base = of_metric.value[~of_metric.is_current & (of_metric.build_id == base_build)].to_numpy(dtype=float)
        mh = hist[hist.metric == m]
        out.append(_finding(ctx, j, cur, base, base_build, base_source, named_missing, mh, qs, config))
    return out


def _finding(ctx: q.RunContext, j: _Judged, cur: np.ndarray, base: np.ndarray, base_build: Union[str, None],
             base_source: Union[str, None], named_missing: bool, mh: pd.DataFrame, qs: list[float],
             config: RegressionConfig) -> Finding:
    base_f, _ = finite(base)
    reference = statistic(base_f, j.location) if base_f.size else None
    direction = _direction(j, reference)
    lower = direction != HIGHER  # an unresolved band (no baseline) reads as lower-is-better for drift
    cmp: Union[Comparison, None] = None
    verdict, words = Change.INVALID, ""
    name = f"{location_name(j.location)} {j.metric}"
    if not np.isfinite(cur).any():
        skipped = " (its expectations were SKIPPED on this testbed)" if j.skipped else ""
        words = f"this run has no finite samples of {j.metric}{skipped}: nothing to compare"
    elif base_build is None:
        words = (f"no earlier build on testbed {ctx.testbed_id} / profile {ctx.profile} has samples of "
                 f"{j.metric}: nothing to compare with")
    elif named_missing:
        own = " other than this run" if base_build == ctx.build_id else ""
        words = (f"baseline build {base_build} ({base_source}) has no results for case {ctx.case_id} on testbed "
                 f"{ctx.testbed_id} / profile {ctx.profile}{own}")
    elif not np.isfinite(base).any():
        words = (f"baseline build {base_build} ({base_source}) has no finite samples of {j.metric} for case "
                 f"{ctx.case_id} on testbed {ctx.testbed_id} / profile {ctx.profile}")
    else:
        seed = (config.seed * 1_000_003 + zlib.crc32(j.metric.encode())) % 2**32
        verdict, cmp = compare(base, cur, lower_is_better=lower, location=j.location, config=config, seed=seed)
        if not cmp.decidable:
            words = f"{name} against baseline build {base_build} ({base_source}): {cmp.reason}"
        else:
            words = _comparison_words(name, j.unit, cmp, verdict, base_build, base_source, lower, config)
    drift, hist_builds, hist_ids, note = _drift(ctx, mh, j.location, qs, lower, config)
    step_build = step_ratio = None
    if drift is not None and drift.drifted:
        step_build, step_ratio = hist_ids[drift.step_index], drift.ratio
        assert drift.best is not None
        newest = drift.segments[-1]
        note = (f"drift: worse since build {step_build}; builds {hist_ids[newest.start]}..{hist_ids[newest.end]} "
                f"sit at {step_ratio:.2f}x the best earlier level (builds {hist_ids[drift.best.start]}.."
                f"{hist_ids[drift.best.end]}, {location_name(j.location)} {drift.best.value:.4g}) over "
                f"{hist_builds} builds of history")
        if verdict is not Change.REGRESSED:
            verdict = Change.DRIFTED
    detail = "; ".join(x for x in (words, note) if x)
    return Finding(
        run_id=ctx.run_id, case_id=ctx.case_id, metric=j.metric, testbed_id=ctx.testbed_id, profile=ctx.profile,
        build_id=ctx.build_id, baseline_build_id=base_build, baseline_source=base_source, direction=direction,
        statistic=location_name(j.location), baseline_value=_get(cmp, "baseline_value"),
        current_value=_get(cmp, "current_value"), change_ratio=_get(cmp, "ratio"), ci_low=_get(cmp, "ci_low"),
        ci_high=_get(cmp, "ci_high"), p_value=_get(cmp, "p_worse"),
        baseline_samples=cmp.baseline_n if cmp else int(np.isfinite(base).sum()),
        current_samples=cmp.current_n if cmp else int(np.isfinite(cur).sum()),
        step_build_id=step_build, step_ratio=step_ratio, history_builds=hist_builds, verdict=verdict.value,
        detail=detail)


def _get(cmp: Union[Comparison, None], field: str) -> Union[float, None]:
    value = getattr(cmp, field) if cmp is not None else None
    return None if value is None else float(value)


def compare(baseline: object, current: object, *, lower_is_better: bool = True, location: Location = 0.5,
            config: RegressionConfig = RegressionConfig(), seed: Union[int, None] = None) -> tuple[Change, Comparison]:
    """The direct comparison on raw samples alone (no store, no history): its verdict among
    REGRESSED / IMPROVED / UNCHANGED / INVALID, and the figures behind it."""
    c = compare_samples(baseline, current, lower_is_better=lower_is_better, location=location,
                        confidence=config.confidence, resamples=config.resamples,
                        seed=config.seed if seed is None else seed, min_samples=config.min_samples)
    return (classify(c, lower_is_better, config) if c.decidable else Change.INVALID), c


def classify(c: Comparison, lower: bool, config: RegressionConfig) -> Change:
    """The module doc's rule on a decidable comparison."""
    if not c.decidable:
        return Change.INVALID
    assert c.ratio is not None and c.ci_low is not None and c.ci_high is not None
    up = c.ratio > 1 + config.rel_threshold and c.ci_low > 1 + config.rel_threshold
    down = c.ratio < 1 - config.rel_threshold and c.ci_high < 1 - config.rel_threshold
    worse, better = (up, down) if lower else (down, up)
    if worse and c.p_worse is not None and c.p_worse < config.alpha:
        return Change.REGRESSED
    if better and c.p_better is not None and c.p_better < config.alpha:
        return Change.IMPROVED
    return Change.UNCHANGED


def _comparison_words(name: str, unit: str, c: Comparison, verdict: Change, build: str, source: Union[str, None],
                      lower: bool, config: RegressionConfig) -> str:
    assert c.ratio is not None and c.p_worse is not None and c.p_better is not None
    pct, conf = f"{config.rel_threshold:.0%}".replace("%", " %"), f"{config.confidence:.0%}".replace("%", " %")
    u = f" {unit}" if unit and unit not in ("count", "ratio") else ""
    ratio = f"{c.ratio:.2f}x" if math.isfinite(c.ratio) else "up from 0"
    head = (f"{name} {ratio} baseline build {build} ({source}): {c.baseline_value:.4g}{u} -> "
            f"{c.current_value:.4g}{u} (CI {c.ci_low:.2f}-{c.ci_high:.2f} at {conf}, p={c.p_worse:.2g}, "
            f"{c.baseline_n} vs {c.current_n} samples")
    dropped = c.baseline_dropped + c.current_dropped
    head += f", {dropped} non-finite dropped)" if dropped else ")"
    side = "lower" if lower else "higher"
    if verdict is Change.REGRESSED:
        return f"{head}: worse by more than {pct} and significant ({side} is better)"
    if verdict is Change.IMPROVED:
        return f"{head}: better by more than {pct} and significant (p(better)={c.p_better:.2g})"
    if abs(c.ratio - 1) <= config.rel_threshold:
        return f"{head}: within {pct}"
    bound = f"{1 + config.rel_threshold:.2f}" if c.ratio > 1 else f"{1 - config.rel_threshold:.2f}"
    return (f"{head}: beyond {pct} but not surely so (needs p < {config.alpha:g} and the whole CI beyond "
            f"{bound})")


def _drift(ctx: q.RunContext, mh: pd.DataFrame, location: Location, qs: list[float], lower: bool,
           config: RegressionConfig) -> tuple[Union[DriftReport, None], int, list[str], str]:
    """(report or None, builds of usable history, their build ids, a note when not assessed)."""
    # A metric measured once per run (most builds have fewer than min_samples samples of it)
    # cannot be tested on raw samples, but its history of per-build values can be: every build
    # that measured it enters the history. Otherwise a build needs min_samples samples.
    scalar = bool(len(mh)) and float(np.median(mh.n)) < config.min_samples
    need = 1 if scalar else config.min_samples
    usable = mh[mh.n >= need].tail(config.max_history)
    ids = [str(b) for b in usable.build_id]
    n = len(ids)
    if n < config.min_history:
        return None, n, ids, f"drift not assessed: {n} build{'' if n == 1 else 's'} of history, " \
                             f"{config.min_history} needed"
    if ids[-1] != ctx.build_id:
        return None, n, ids, f"drift not assessed: this build has fewer than {need} samples"
    qarr = np.array([np.asarray(v, dtype=float) for v in usable.q])
    values = usable["mean"].to_numpy(dtype=float) if location == "mean" else qarr[:, qs.index(float(location))]
    iqr = qarr[:, qs.index(0.75)] - qarr[:, qs.index(0.25)]
    # Standard error of a median from a robust spread (IQR/1.349), a floor for the step penalty.
    se = float(np.median(1.2533 * iqr / 1.349 / np.sqrt(usable.n.to_numpy(dtype=float))))
    report = detect_drift(values, lower_is_better=lower, rel_threshold=config.rel_threshold, noise=se)
    kind = " (one value per run)" if scalar else ""
    return report, n, ids, f"no drift over {n} builds of history{kind}"
