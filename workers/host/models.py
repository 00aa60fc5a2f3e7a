"""The host's side of the model domain: loads through its RAM cache into a worker's device cache,
keeps its own view of what the worker holds, checks that view against the worker's report, and
runs generations whose images it takes out of shared memory.

This is what the spec calls the C# side: it owns the RAM cache and the placement decisions; the
worker owns device memory. ``sync_state`` compares the two and names every disagreement.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.host.client import WorkerClient
from workers.host.modelcache import HostModelCache
from workers.models.integrity import IntegrityError
from workers.models.store import ModelStore
from workers.protocol import images
from workers.protocol.images import ImageRef


@dataclass
class LoadOutcome:
    name: str
    seconds: float  # host wall time: cache fill + worker load, dependencies included
    host_fill_s: float
    host_hit: bool
    result: dict[str, Any]  # the worker's ModelLoadResult for the target


@dataclass
class SyncReport:
    consistent: bool
    host_only: list[str] = field(default_factory=list)  # the host believes resident, the worker does not
    worker_only: list[str] = field(default_factory=list)
    hash_mismatch: list[str] = field(default_factory=list)  # resident, but verified against other hashes
    corrupt: list[str] = field(default_factory=list)  # the worker marked it corrupt


class ModelHost:
    def __init__(self, client: WorkerClient, store: ModelStore, cache: HostModelCache | None = None) -> None:
        self.client, self.store, self.cache = client, store, cache
        self._lock = threading.Lock()
        self.expected: dict[str, dict[str, str]] = {}  # name -> rel -> sha256 the host expects resident
        self.cache_rebuilds = 0  # RAM cache entries refilled after the worker reported them corrupt

    def configure(self, *, cache_mib: float = 4096, device: str = "cpu", timeout: float = 120,
                  **extra: Any) -> dict[str, Any]:
        result = self.client.request("models.configure", {"root": str(self.store.root), "cache_mib": cache_mib,
                                                          "device": device, **extra}, timeout=timeout)
        with self._lock:
            self.expected.clear()
        return result

    def _hashes(self, name: str) -> dict[str, str]:
        return {rel: f.sha256 for rel, f in self.store.entry(name).files.items()}

    def load(self, name: str, *, priority: int = 5, timeout: float = 600, use_cache: bool = True) -> LoadOutcome:
        """Load ``name`` (dependencies first, each through the RAM cache when there is one)."""
        t0 = time.perf_counter()
        fill_s, hit, result = 0.0, True, {}
        for model in self.store.load_order([name]):
            params: dict[str, Any] = {"name": model}
            if self.cache is not None and use_cache:
                try:
                    fill = self.cache.ensure(model)
                except IntegrityError:
                    # The disk copy is corrupt: repair it (backup, else rebuild; verified), then cache.
                    self.store.repair(model)
                    fill = self.cache.ensure(model)
                fill_s += fill.seconds
                hit = hit and fill.hit
                params["host_files"] = self.cache.files(model)
            result = self.client.request("model.load", params, timeout=timeout, priority=priority)
            self._note_loaded(result)
            if self.cache is not None and any(s.get("host_copy_corrupt") for s in result.get("steps", [])):
                # The worker found our RAM copy damaged (and loaded from disk): rebuild the entry
                # from the verified disk files so the next load is served clean from the cache.
                self.cache.evict(model)
                self.cache.ensure(model)
                self.cache_rebuilds += 1
        return LoadOutcome(name, time.perf_counter() - t0, fill_s, hit, result)

    def _note_loaded(self, result: Mapping[str, Any]) -> None:
        with self._lock:
            for gone in result.get("evicted", []):
                self.expected.pop(gone, None)
            for step in result.get("steps", []):
                self.expected[step["name"]] = self._hashes(step["name"])

    def unload(self, name: str, *, timeout: float = 120) -> dict[str, Any]:
        result = self.client.request("model.unload", {"name": name}, timeout=timeout)
        with self._lock:
            for gone in result["unloaded"]:
                self.expected.pop(gone, None)
        return result

    def sync_state(self) -> SyncReport:
        listed = self.client.request("model.list")
        worker = {m["name"]: m for m in listed["resident"]}
        with self._lock:
            host = dict(self.expected)
        report = SyncReport(
            consistent=True,
            host_only=sorted(set(host) - set(worker)),
            worker_only=sorted(set(worker) - set(host)),
            hash_mismatch=sorted(n for n in set(host) & set(worker) if host[n] != worker[n]["files"]),
            corrupt=sorted(n for n, m in worker.items() if m["corrupt"]),
        )
        report.consistent = not (report.host_only or report.worker_only or report.hash_mismatch or report.corrupt)
        return report

    def adopt_worker_state(self) -> SyncReport:
        """Resolve a disagreement: the worker's report is the truth about device memory."""
        before = self.sync_state()
        listed = self.client.request("model.list")
        with self._lock:
            self.expected = {m["name"]: self._hashes(m["name"]) for m in listed["resident"] if not m["corrupt"]}
        return before

    def generate(self, params: Mapping[str, Any], *, timeout: float = 600, priority: int = 5,
                 on_event: Any = None) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Run ``inference.run``; returns the images (taken from shared memory) and the result."""
        result = self.client.request("inference.run", dict(params), timeout=timeout, priority=priority,
                                     on_event=on_event)
        ref = result.get("image")
        return (images.take(ImageRef(**ref)) if ref else None), result
