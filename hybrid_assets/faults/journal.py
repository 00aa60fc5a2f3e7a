"""A request journal: every accepted request must end in a result or an explicit error.

A request that was accepted and never ended is *lost*: the one outcome a runtime must never
produce, because nobody is told.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class JournalCounts:
    accepted: int
    results: int
    errors: int
    lost: int
    errors_by_code: dict[str, int]


class RequestJournal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, float] = {}
        self._ended: dict[int, str] = {}
        self._next = 0

    def accept(self) -> int:
        with self._lock:
            seq = self._next
            self._next += 1
            self._open[seq] = time.monotonic()
            return seq

    def end(self, seq: int, error_code: Union[str, None] = None) -> None:
        with self._lock:
            if seq not in self._open:
                raise KeyError(f"request {seq} was not open (ended twice, or never accepted)")
            del self._open[seq]
            self._ended[seq] = "result" if error_code is None else error_code

    def counts(self) -> JournalCounts:
        with self._lock:
            outcomes = Counter(self._ended.values())
            results = outcomes.pop("result", 0)
            return JournalCounts(self._next, results, sum(outcomes.values()), len(self._open), dict(outcomes))
