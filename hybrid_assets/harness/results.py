"""What a test case produces: samples, skips, notes; and how it was judged."""

from __future__ import annotations

import datetime as dt
import enum
import time
from dataclasses import dataclass, field
from typing import Any, Union


class Verdict(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INVALID = "INVALID"  # too little evidence for the claim
    SKIPPED = "SKIPPED"  # not measurable on this testbed, with the reason
    ERROR = "ERROR"  # the harness itself failed


@dataclass(frozen=True)
class Sample:
    metric: str
    value: float
    unit: str
    seq: int
    t_s: float  # seconds since the case started (monotonic)
    labels: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """What a runner writes into. Samples are kept in memory until the case is stored
    in one transaction; a runner that fails keeps what it recorded so far."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self.samples: list[Sample] = []
        self.skips: dict[str, str] = {}
        self.notes: dict[str, Any] = {}

    def record(self, metric: str, value: float, unit: str, **labels: Any) -> None:
        self.samples.append(Sample(metric, float(value), unit, len(self.samples),
                                   time.monotonic() - self._t0, labels))

    def skip(self, metric: str, reason: str) -> None:
        """``metric`` cannot be measured on this testbed; lines judging it are SKIPPED."""
        self.skips[metric] = reason

    def note(self, key: str, value: Any) -> None:
        self.notes[key] = value

    def values(self, metric: str) -> list[float]:
        return [s.value for s in self.samples if s.metric == metric]


@dataclass(frozen=True)
class MetricSummary:
    metric: str
    statistic: str
    value: float
    unit: str
    sample_count: int


@dataclass(frozen=True)
class ExpectationOutcome:
    check_name: str
    expectation_type: str
    spec_section: str
    spec_text: str
    metric: str
    statistic: str
    comparison: str  # "<=" or ">="
    threshold: Union[float, None]
    observed: Union[float, None]
    sample_count: int
    verdict: Verdict
    detail: str
    unit: str = ""


@dataclass
class CaseOutcome:
    case_id: str
    verdict: Verdict
    reason: str
    started_at: dt.datetime
    duration_s: float
    samples: list[Sample]
    summaries: list[MetricSummary]
    expectations: list[ExpectationOutcome]
    skips: dict[str, str]
    notes: dict[str, Any]
    error: Union[str, None] = None
