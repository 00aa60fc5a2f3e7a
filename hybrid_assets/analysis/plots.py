"""Trend plots: one metric's statistic over builds on one testbed and profile, as a small PNG.

Builds are in ``v_builds.build_seq`` order (the order they were first seen); comparisons only
mean something within one testbed, so a plot never mixes testbeds. Where a build has several
runs with other run keys, its latest run stands for it. The spec's threshold is drawn when
given; builds flagged REGRESSED or DRIFTED in ``v_regressions`` for this metric are marked.

matplotlib is used through ``Figure`` and the Agg canvas directly: nothing here touches pyplot
or the process-wide backend, so importing this module changes nothing for anyone else.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hybrid_assets.analysis.common import AnyStore, NoHistoryError, read_only, require_case

STATISTICS = ("count", "mean", "min", "max", "stdev", "p50", "p90", "p95", "p99")
COMPARISONS = ("<=", ">=")
FLAGGED = ("REGRESSED", "DRIFTED")  # regression verdicts worth a mark on the trend
SIZE_IN = (6.0, 3.0)
DPI = 100
MAX_TICK_LABELS = 12


@dataclass(frozen=True)
class TrendPoint:
    build_seq: int
    build_id: str
    run_id: str
    value: float
    sample_count: int


@dataclass(frozen=True)
class Trend:
    testbed_id: str
    profile: str
    case_id: str
    metric: str
    statistic: str
    unit: str
    points: tuple[TrendPoint, ...]
    flagged: dict[str, str]  # build id -> REGRESSED / DRIFTED


_SERIES_SQL = """
SELECT b.build_seq, m.build_id, m.run_id, m.value, m.unit, m.sample_count
FROM v_metrics m JOIN v_builds b USING (build_id) JOIN runs r USING (run_id)
WHERE m.testbed_id = ? AND m.profile = ? AND m.case_id = ? AND m.metric = ? AND m.statistic = ?
  AND m.value IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY m.build_id ORDER BY r.last_write_at DESC, m.run_id DESC) = 1
ORDER BY b.build_seq
"""

_FLAGGED_SQL = f"""
SELECT build_id, verdict FROM v_regressions
WHERE testbed_id = ? AND profile = ? AND case_id = ? AND metric = ?
  AND verdict IN ({", ".join(f"'{v}'" for v in FLAGGED)})
ORDER BY detected_at
"""


def load_trend(con: Any, *, testbed_id: str, profile: str, case_id: str, metric: str, statistic: str) -> Trend:
    """The series behind a trend plot, read on an open connection."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}: choose one of {', '.join(STATISTICS)}")
    key = [testbed_id, profile, case_id, metric]
    rows = con.execute(_SERIES_SQL, [*key, statistic]).fetchall()
    flagged = {build: verdict for build, verdict in con.execute(_FLAGGED_SQL, key).fetchall()}
    points = tuple(TrendPoint(int(seq), build, run, float(value), int(n or 0)) for seq, build, run, value, _, n in rows)
    unit = rows[-1][4] if rows else ""
    return Trend(testbed_id, profile, case_id, metric, statistic, unit or "", points, flagged)


def trend_png(store: AnyStore, *, testbed_id: str, profile: str, case_id: str, metric: str,
              statistic: str = "p90", threshold: Union[float, None] = None,
              comparison: Union[str, None] = None) -> bytes:
    """PNG (6 x 3 in, 100 dpi) of ``statistic(metric)`` of a case over builds on one testbed
    and profile. Raises ``NoHistoryError`` when nothing was measured there."""
    if comparison is not None and comparison not in COMPARISONS:
        raise ValueError(f"comparison must be one of {COMPARISONS} or None, got {comparison!r}")
    with read_only(store) as con:
        trend = load_trend(con, testbed_id=testbed_id, profile=profile, case_id=case_id, metric=metric,
                           statistic=statistic)
    return render_trend(trend, threshold, comparison)


def case_trend_pngs(store: AnyStore, run_id: str, case_id: str, out_dir: Union[str, Path],
                    max_plots: int = 4) -> list[Path]:
    """Trend PNGs of the metrics that a case's expectations judge, on the run's testbed and
    profile, with each line's threshold: lines that did not pass first, one plot per metric and
    statistic, at most ``max_plots``. Lines with nothing measured on that testbed (e.g. skipped
    there) get no plot; the list is empty when none has any history."""
    if max_plots < 1:
        raise ValueError(f"max_plots must be at least 1, got {max_plots}")
    with read_only(store) as con:
        require_case(con, store, run_id, case_id)
        testbed_id, profile = con.execute("SELECT testbed_id, profile FROM runs WHERE run_id = ?", [run_id]).fetchone()
        lines = con.execute(
            "SELECT metric, statistic, threshold, comparison FROM v_expectations WHERE run_id = ? AND case_id = ? "
            "ORDER BY verdict = 'PASS', verdict = 'SKIPPED', expectation", [run_id, case_id]).fetchall()
        wanted: list[tuple[Trend, Any, Any]] = []
        seen: set[tuple[str, str]] = set()
        for metric, statistic, threshold, comparison in lines:
            if (metric, statistic) in seen or statistic not in STATISTICS:
                continue
            seen.add((metric, statistic))
            trend = load_trend(con, testbed_id=testbed_id, profile=profile, case_id=case_id, metric=metric,
                               statistic=statistic)
            if trend.points:
                wanted.append((trend, threshold, comparison))
            if len(wanted) == max_plots:
                break
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for trend, threshold, comparison in wanted:
        path = out / f"{case_id}__{trend.metric}__{trend.statistic}.png"
        path.write_bytes(render_trend(trend, threshold, comparison))
        paths.append(path)
    return paths


def render_trend(trend: Trend, threshold: Union[float, None] = None, comparison: Union[str, None] = None) -> bytes:
    if not trend.points:
        raise NoHistoryError(
            f"no {trend.statistic} of {trend.metric!r} for case {trend.case_id!r} on testbed {trend.testbed_id!r}, "
            f"profile {trend.profile!r}: nothing to plot (was the case run there, and does it record that metric?)")
    fig = Figure(figsize=SIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)  # attaches itself to the figure: savefig renders with Agg
    ax = fig.add_subplot()
    xs = list(range(len(trend.points)))
    ys = [p.value for p in trend.points]
    ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.2, color="#1f77b4", label=trend.statistic)
    if threshold is not None:
        label = f"spec {comparison or ''} {threshold:g} {trend.unit}".replace("  ", " ")
        ax.axhline(threshold, color="#d62728", linestyle="--", linewidth=1, label=label)
    for verdict, style in (("REGRESSED", ("X", "#d62728")), ("DRIFTED", ("v", "#ff7f0e"))):
        marked = [(x, p.value) for x, p in zip(xs, trend.points, strict=True)
                  if trend.flagged.get(p.build_id) == verdict]
        if marked:
            ax.scatter([m[0] for m in marked], [m[1] for m in marked], marker=style[0], s=70, color=style[1],
                       zorder=3, label=verdict.lower())
    step = max(1, -(-len(xs) // MAX_TICK_LABELS))  # ceil: at most MAX_TICK_LABELS labels
    ax.set_xticks(xs[::step], [_short(p.build_id) for p in trend.points[::step]], rotation=30, ha="right",
                  fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel(f"{trend.metric} ({trend.unit})" if trend.unit else trend.metric, fontsize=7)
    ax.set_title(f"{trend.case_id}: {trend.statistic}({trend.metric}) on {trend.testbed_id}/{trend.profile}",
                 fontsize=8)
    ax.grid(True, linewidth=0.3, alpha=0.6)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _short(build_id: str, width: int = 18) -> str:
    return build_id if len(build_id) <= width else build_id[: width - 1] + "…"
