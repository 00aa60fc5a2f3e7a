"""One fault experiment, in four steps (the chaos-engineering loop):

1. steady state: a probe request succeeds, resources are recorded;
2. inject the fault while background load runs, every request journaled;
3. observe: detection (the pool reports the worker lost or hung) and recovery (a ready
   replacement and a probe that succeeds again), on the monotonic clock;
4. verify: the probe succeeds, no request was lost, resources are back to baseline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Union

from hybrid_assets.faults.injectors import Injector
from hybrid_assets.faults.journal import JournalCounts, RequestJournal
from hybrid_assets.faults.resources import ResourceSnapshot, snapshot
from workers.host.errors import WorkerError
from workers.host.pool import WorkerPool


@dataclass(frozen=True)
class ExperimentResult:
    fault: str
    injected: str  # what the injector did
    steady_before: bool
    detected: bool
    detection_s: Union[float, None]
    recovered: bool
    recovery_s: Union[float, None]  # injection to the first successful probe
    requests: JournalCounts
    baseline: ResourceSnapshot
    after: ResourceSnapshot
    leaks: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.steady_before and self.recovered and self.requests.lost == 0 and not self.leaks


def _probe(pool: WorkerPool, timeout: float) -> bool:
    try:
        pool.request("ping", {"payload": "probe"}, timeout=timeout)
    except WorkerError:
        return False
    return True


def run_experiment(pool: WorkerPool, fault: str, inject: Injector, *, load_threads: int = 2,
                   op: str = "echo", observe_s: float = 30.0, settle_s: float = 5.0) -> ExperimentResult:
    """Run one experiment on ``pool``; ``op`` is the background load's operation."""
    steady = _probe(pool, timeout=10.0)
    baseline = snapshot(pool)
    journal = RequestJournal()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            seq = journal.accept()
            try:
                pool.request(op, {"payload": str(seq)}, timeout=5.0)
            except WorkerError as exc:
                journal.end(seq, exc.code)
                time.sleep(0.01)  # a failing runtime is not hammered in a tight loop
            else:
                journal.end(seq)

    threads = [threading.Thread(target=load, name=f"fault-load-{i}", daemon=True) for i in range(load_threads)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # load is flowing before the fault
    n_events = len(pool.events)
    t_inject = time.monotonic()
    injected = inject(pool)

    detection_s: Union[float, None] = None
    recovery_s: Union[float, None] = None
    deadline = t_inject + observe_s
    while time.monotonic() < deadline:
        events = pool.events[n_events:]
        if detection_s is None:
            lost = next((e for e in events if e.kind in ("lost", "hung")), None)
            if lost is not None:
                detection_s = lost.at - t_inject
        if detection_s is not None and any(e.kind == "ready" for e in events) and _probe(pool, timeout=2.0):
            recovery_s = time.monotonic() - t_inject
            break
        if detection_s is not None and all(s == "failed" for s in pool.states()):
            break  # it will never come back
        time.sleep(0.01)
    if detection_s is None and _probe(pool, timeout=2.0):
        recovery_s = 0.0  # the fault was absorbed without losing the worker (e.g. bad frames)

    stop.set()
    for t in threads:
        t.join(timeout=15.0)
    settle_deadline = time.monotonic() + settle_s
    after = snapshot(pool)
    while after.compare(baseline) and time.monotonic() < settle_deadline:
        time.sleep(0.1)
        after = snapshot(pool)
    return ExperimentResult(
        fault=fault, injected=injected, steady_before=steady, detected=detection_s is not None,
        detection_s=detection_s, recovered=recovery_s is not None, recovery_s=recovery_s,
        requests=journal.counts(), baseline=baseline, after=after, leaks=after.compare(baseline),
    )
