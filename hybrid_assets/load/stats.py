"""Statistics of request events: percentiles, throughput, error rate, and whether the run
was long and large enough to claim anything."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from hybrid_assets.harness.results import Recorder
from hybrid_assets.load.driver import RequestEvent


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    errors: int
    error_rate: float
    duration_s: float
    throughput_rps: float  # successful answers per second of wall time
    latency_s: dict[str, float]  # p50, p90, p95, p99, max, mean
    errors_by_code: dict[str, int] = field(default_factory=dict)
    valid: bool = True
    invalid_reason: str = ""


class LoadStats:
    """Subscribe ``on_event`` to a driver's hook; ``summary`` once the driver returns."""

    def __init__(self) -> None:
        self.events: list[RequestEvent] = []

    def on_event(self, ev: RequestEvent) -> None:
        self.events.append(ev)

    def summary(self, duration_s: float, min_duration_s: float = 0.0, min_samples: int = 1) -> LoadSummary:
        n = len(self.events)
        ok = [e.latency for e in self.events if e.ok]
        errors = Counter(e.error or "?" for e in self.events if not e.ok)
        lat: dict[str, float] = {}
        if ok:
            arr = np.asarray(ok)
            for p in (50, 90, 95, 99):
                lat[f"p{p}"] = float(np.percentile(arr, p))
            lat["max"], lat["mean"] = float(arr.max()), float(arr.mean())
        reasons = []
        if duration_s < min_duration_s:
            reasons.append(f"ran {duration_s:.2f} s, the claim needs at least {min_duration_s:g} s")
        if n < min_samples:
            reasons.append(f"{n} requests, the claim needs at least {min_samples}")
        return LoadSummary(
            requests=n, errors=sum(errors.values()), error_rate=(sum(errors.values()) / n) if n else 0.0,
            duration_s=duration_s, throughput_rps=len(ok) / duration_s if duration_s > 0 else 0.0,
            latency_s=lat, errors_by_code=dict(errors), valid=not reasons, invalid_reason="; ".join(reasons),
        )

    def record_into(self, recorder: Recorder, prefix: str, **labels: Union[str, int, float]) -> None:
        """One sample per request into a case's recorder: ``<prefix>_latency_s`` for answers,
        ``<prefix>_error`` (0/1) for every request."""
        for e in self.events:
            if e.ok:
                recorder.record(f"{prefix}_latency_s", e.latency, "s", **labels)
            recorder.record(f"{prefix}_error", 0.0 if e.ok else 1.0, "count", **labels)
