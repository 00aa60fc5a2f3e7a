"""The host's RAM cache of models (the spec's "C# cache"): verified copies of model files in
shared memory, LRU under a byte cap, handed to workers by segment name so a load from the cache
reads no disk and hashes nothing twice.

An entry is filled by reading the files once and checking each against the manifest in memory;
a file that fails is never cached (``IntegrityError``). The cache owns its segments: it unlinks
them on eviction and on ``close``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory

from workers.models.integrity import FileCheck, check_bytes
from workers.models.store import ModelStore


@dataclass
class CachedModel:
    name: str
    segments: dict[str, shared_memory.SharedMemory]
    sizes: dict[str, int]
    bytes: int
    filled_s: float
    last_used: float = field(default_factory=time.monotonic)
    hits: int = 0


@dataclass(frozen=True)
class Fill:
    name: str
    hit: bool
    seconds: float
    bytes: int
    evicted: tuple[str, ...]


class HostModelCache:
    def __init__(self, store: ModelStore, cap_bytes: int) -> None:
        if cap_bytes <= 0:
            raise ValueError(f"host cache cap must be positive, got {cap_bytes} bytes")
        self.store, self.cap_bytes = store, cap_bytes
        self._entries: OrderedDict[str, CachedModel] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = self.misses = self.evictions = 0

    def __enter__(self) -> HostModelCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.bytes for e in self._entries.values())

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._entries

    def ensure(self, name: str) -> Fill:
        """The model in the cache (a hit, or read, verified and copied in: a miss)."""
        t0 = time.perf_counter()
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                return self._hit(entry, t0)
        data = self.store.read_verified(name)  # raises IntegrityError naming the bad file
        size = sum(len(b) for b in data.values())
        if size > self.cap_bytes:
            raise ValueError(f"model {name!r} ({size} bytes) exceeds the host cache cap of {self.cap_bytes} bytes")
        segments: dict[str, shared_memory.SharedMemory] = {}
        try:
            for rel, blob in data.items():
                seg = shared_memory.SharedMemory(create=True, size=max(1, len(blob)))
                resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
                segments[rel] = seg
                seg.buf[: len(blob)] = blob
        except BaseException:
            _release(segments)
            raise
        with self._lock:
            raced = self._entries.get(name)
            if raced is not None:  # another thread filled it meanwhile: keep theirs, drop ours
                _release(segments)
                return self._hit(raced, t0)
            evicted = self._make_room(size)
            self._entries[name] = CachedModel(name, segments, {r: len(b) for r, b in data.items()}, size,
                                              time.perf_counter() - t0)
            self.misses += 1
        return Fill(name, False, time.perf_counter() - t0, size, tuple(evicted))

    def _hit(self, entry: CachedModel, t0: float) -> Fill:
        """Count a hit and mark the entry most recently used (caller holds the lock)."""
        self._entries.move_to_end(entry.name)
        entry.last_used = time.monotonic()
        entry.hits += 1
        self.hits += 1
        return Fill(entry.name, True, time.perf_counter() - t0, entry.bytes, ())

    def files(self, name: str) -> dict[str, dict[str, object]]:
        """``host_files`` for ``model.load``: rel -> {shm, bytes}."""
        with self._lock:
            entry = self._entries[name]
            return {rel: {"shm": seg.name.lstrip("/"), "bytes": entry.sizes[rel]}
                    for rel, seg in entry.segments.items()}

    def verify(self, name: str) -> list[FileCheck]:
        """Re-check the cached copies against the manifest (corruption at rest in the cache)."""
        entry_m = self.store.entry(name)
        with self._lock:
            entry = self._entries[name]
            return [check_bytes(entry.segments[rel].buf[: entry.sizes[rel]], f"host-cache:{name}/{rel}",
                                entry_m.files[rel].sha256, entry_m.files[rel].bytes)
                    for rel in sorted(entry.segments)]

    def overwrite(self, name: str, rel: str, data: bytes) -> None:
        """Replace a cached file's bytes (fault injection: corruption at rest); sizes may shrink."""
        with self._lock:
            entry = self._entries[name]
            seg = entry.segments[rel]
            if len(data) > seg.size:
                raise ValueError(f"{name}/{rel}: {len(data)} bytes do not fit the {seg.size}-byte segment")
            seg.buf[: len(data)] = data
            entry.sizes[rel] = len(data)

    def read(self, name: str, rel: str) -> bytes:
        with self._lock:
            entry = self._entries[name]
            return bytes(entry.segments[rel].buf[: entry.sizes[rel]])

    def evict(self, name: str) -> bool:
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is None:
            return False
        _release(entry.segments)
        return True

    def _make_room(self, need: int) -> list[str]:
        evicted = []
        while self._entries and self.used_bytes() + need > self.cap_bytes:
            name, entry = self._entries.popitem(last=False)
            _release(entry.segments)
            evicted.append(name)
            self.evictions += 1
        return evicted

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), OrderedDict()
        for entry in entries:
            _release(entry.segments)


def _release(segments: dict[str, shared_memory.SharedMemory]) -> None:
    for seg in segments.values():
        seg.close()
        try:  # not seg.unlink(): it also unregisters from the resource tracker, done at creation already
            shared_memory._posixshmem.shm_unlink(seg._name)  # type: ignore[attr-defined]
        except FileNotFoundError:
            pass
