"""Summary statistics of samples, per metric."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from hybrid_assets.harness.results import MetricSummary, Sample

PERCENTILES = (50, 90, 95, 99)


def summarize(samples: Iterable[Sample]) -> list[MetricSummary]:
    by_metric: dict[str, list[float]] = defaultdict(list)
    units: dict[str, str] = {}
    for s in samples:
        by_metric[s.metric].append(s.value)
        units[s.metric] = s.unit
    out: list[MetricSummary] = []
    for metric in sorted(by_metric):
        values = np.asarray(by_metric[metric], dtype=float)
        n, unit = len(values), units[metric]
        stats = {"count": float(n), "mean": float(values.mean()), "min": float(values.min()),
                 "max": float(values.max()), "stdev": float(values.std(ddof=1)) if n > 1 else 0.0}
        for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
            stats[f"p{p}"] = float(v)
        out += [MetricSummary(metric, name, value, "count" if name == "count" else unit, n)
                for name, value in stats.items()]
    return out
