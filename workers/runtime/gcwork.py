"""Garbage-collection workload and measurement (spec 4.2 gc_performance).

The workload keeps making garbage that only the cyclic collector can free: pairs of objects
that reference each other, each holding a real tensor. ``gc.callbacks`` time every collection
(the worker is blocked for that long) and, for full collections, the share of the garbage
that was unreachable before it that it freed.
"""

from __future__ import annotations

import gc
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from workers.runtime.imports import import_torch

MiB = 1 << 20


class _Node:
    __slots__ = ("__weakref__", "nbytes", "other", "payload")

    def __init__(self, payload: Any, nbytes: int) -> None:
        self.payload, self.nbytes, self.other = payload, nbytes, None


@dataclass
class GcObservation:
    pauses: list[tuple[int, float]] = field(default_factory=list)  # (generation, seconds)
    recovered: list[float] = field(default_factory=list)  # full collections: freed / unreachable before
    made_bytes: int = 0
    freed_bytes: int = 0


def run_gc_workload(duration_s: float, garbage_mib_per_s: float, chunk_kib: int = 256) -> GcObservation:
    torch = import_torch()

    obs = GcObservation()
    dropped_unfreed = [0]  # bytes made unreachable and not yet freed
    marks: dict[str, float] = {}

    def on_free(nbytes: int) -> None:
        obs.freed_bytes += nbytes
        dropped_unfreed[0] -= nbytes

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            marks["t"], marks["freed"], marks["garbage"] = time.perf_counter(), obs.freed_bytes, dropped_unfreed[0]
        elif "t" in marks:
            obs.pauses.append((info["generation"], time.perf_counter() - marks["t"]))
            if info["generation"] == 2 and marks["garbage"] > 0:
                obs.recovered.append((obs.freed_bytes - marks["freed"]) / marks["garbage"])

    chunk = chunk_kib * 1024
    interval = chunk / (garbage_mib_per_s * MiB)
    refs: list[weakref.ref] = []
    gc.callbacks.append(callback)
    try:
        deadline = time.monotonic() + duration_s
        next_due = time.monotonic()
        full_every = max(1, int(0.25 / interval))  # a full collection about four times a second
        i = 0
        while time.monotonic() < deadline:
            a = _Node(torch.empty(chunk // 2, dtype=torch.uint8), chunk // 2)
            b = _Node(torch.empty(chunk // 2, dtype=torch.uint8), chunk // 2)
            a.other, b.other = b, a  # a cycle: reference counting alone never frees it
            for node in (a, b):
                refs.append(weakref.ref(node, lambda _r, n=node.nbytes: on_free(n)))
            obs.made_bytes += chunk
            dropped_unfreed[0] += chunk
            del a, b, node  # node too: the loop variable would keep the last pair reachable
            i += 1
            if i % full_every == 0:
                gc.collect(2)
            next_due += interval
            delay = next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        gc.collect(2)
    finally:
        gc.callbacks.remove(callback)
    return obs
