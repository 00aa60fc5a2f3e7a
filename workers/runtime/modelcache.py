"""The worker's device cache: models resident on one device, LRU under a byte cap, loaded
dependency-first from verified bytes, with a fingerprint of the resident weights so corruption in
device memory is caught (``verify_resident``), not served.

Thread-safe: loader threads and inference threads share it. A model being loaded is a pending
entry that concurrent requests for the same model wait on (one load, not two); a model in use
(``ResidentModel.lock`` held, or a dependent resident) is never evicted.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.models.integrity import check_bytes
from workers.models.store import ModelStore
from workers.runtime import modelbuild
from workers.runtime.diffusion import Generator


class CacheFull(RuntimeError):
    """The model does not fit even after evicting everything evictable."""


class Corrupt(RuntimeError):
    """Weights failed verification and could not be repaired."""


@dataclass
class ResidentModel:
    name: str
    kind: str
    device: str
    bytes: int
    obj: Any  # components dict, ControlNet module, tensor dict, or the base's name for a LoRA
    depends_on: list[str]
    fingerprint: str
    loaded_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    uses: int = 0
    generator: Generator | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    corrupt: bool = False  # set when verification found its resident weights changed


@dataclass
class LoadStep:
    name: str
    source: str  # "shm" (host RAM cache), "disk", or "resident"
    read_s: float = 0.0
    verify_s: float = 0.0
    build_s: float = 0.0
    bytes: int = 0
    repaired: str = ""  # how a corrupt file was repaired ("backup", "rebuild"), or ""
    host_copy_corrupt: bool = False  # the host's shared-memory copy failed verification


@dataclass
class LoadReport:
    name: str
    steps: list[LoadStep]
    evicted: list[str]
    seconds: float
    waited_s: float = 0.0  # time spent waiting for another thread's load of the same model


def fingerprint(obj: Any, skip: Callable[[str], bool] = lambda n: "lora_" in n) -> str:
    """sha256 over the resident tensors' bytes (CPU copies), LoRA adapters excluded."""
    import torch

    h = hashlib.sha256()
    for name, t in modelbuild.tensors_of(obj):
        if skip(name):
            continue
        # peft wraps a layer it adapts: its weight becomes ``<layer>.base_layer.weight``, the
        # same tensor; the fingerprint must not change because a LoRA was loaded onto the base.
        h.update(name.replace(".base_layer", "").encode())
        h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ModelCache:
    def __init__(self, store: ModelStore, device: str = "cpu", cap_bytes: int = 4 << 30, dtype: str = "float32",
                 verify: str = "hash", repair: bool = True) -> None:
        if verify not in ("hash", "structure", "none"):
            raise ValueError(f"verify must be 'hash', 'structure' or 'none', got {verify!r}")
        if cap_bytes <= 0:
            raise ValueError(f"cache cap must be positive, got {cap_bytes} bytes")
        self.store, self.device, self.cap_bytes, self.dtype = store, device, cap_bytes, dtype
        self.verify_mode, self.repair_enabled = verify, repair
        self._lock = threading.RLock()
        self._resident: OrderedDict[str, ResidentModel] = OrderedDict()  # LRU order: oldest first
        self._pending: dict[str, threading.Event] = {}
        self.evictions = 0

    # ---- queries --------------------------------------------------------------------
    def resident(self) -> list[ResidentModel]:
        with self._lock:
            return list(self._resident.values())

    def loading(self) -> list[str]:
        with self._lock:
            return sorted(self._pending)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(m.bytes for m in self._resident.values())

    def get(self, name: str) -> ResidentModel:
        with self._lock:
            model = self._resident.get(name)
            if model is None:
                raise KeyError(f"model {name!r} is not resident on {self.device}; resident: {list(self._resident)}")
            if model.corrupt:
                raise Corrupt(f"model {name!r} failed verification in device memory and is not served; reload it")
            self._resident.move_to_end(name)
            model.last_used = time.monotonic()
            model.uses += 1
            return model

    # ---- loading --------------------------------------------------------------------
    def load(self, name: str, host_files: Mapping[str, bytes | memoryview] | None = None,
             check: Callable[[], None] | None = None) -> LoadReport:
        """Load ``name`` and its dependencies (dependencies first). ``host_files`` are the
        target's file contents from the host's RAM cache; missing files are read from disk."""
        started = time.perf_counter()
        order = self.store.load_order([name])
        steps: list[LoadStep] = []
        evicted: list[str] = []
        waited = 0.0
        for model in order:
            if check is not None:
                check()
            while True:
                with self._lock:
                    if model in self._resident and not self._resident[model].corrupt:
                        self._resident.move_to_end(model)
                        steps.append(LoadStep(model, "resident"))
                        break
                    event = self._pending.get(model)
                    if event is None:
                        event = self._pending[model] = threading.Event()
                        mine = True
                    else:
                        mine = False
                if not mine:
                    t0 = time.perf_counter()
                    event.wait()
                    waited += time.perf_counter() - t0
                    continue
                try:
                    step, ev = self._load_one(model, host_files if model == name else None)
                    steps.append(step)
                    evicted += ev
                finally:
                    with self._lock:
                        self._pending.pop(model).set()
                break
        return LoadReport(name, steps, evicted, time.perf_counter() - started, waited)

    def _read(self, name: str,
              host_files: Mapping[str, bytes | memoryview] | None) -> tuple[dict[str, bytes], LoadStep]:
        entry = self.store.entry(name)
        step = LoadStep(name, "shm" if host_files else "disk")
        files: dict[str, bytes] = {}
        t0 = time.perf_counter()
        for rel in sorted(entry.files):
            if host_files is not None and rel in host_files:
                files[rel] = bytes(host_files[rel])
            else:
                files[rel] = self.store.file_path(name, rel).read_bytes()
        step.read_s = time.perf_counter() - t0
        step.bytes = sum(len(b) for b in files.values())
        t0 = time.perf_counter()
        bad = self._bad_files(name, files)
        if bad and host_files:
            # The host's copy is damaged: never build from it; read the disk copy instead.
            step.host_copy_corrupt = True
            for rel in bad:
                files[rel] = self.store.file_path(name, rel).read_bytes()
            bad = self._bad_files(name, files)
        if bad:
            if not self.repair_enabled:
                raise Corrupt(f"model {name!r}: {next(iter(bad.values()))}; repair is disabled")
            try:
                step.repaired = self.store.repair(name).how
            except Exception as exc:  # RepairFailed or a failing recipe: the model is not served
                first = next(iter(bad.values()))
                raise Corrupt(f"model {name!r} is corrupt ({first}) and repair failed: {exc}") from exc
            for rel in bad:
                files[rel] = self.store.file_path(name, rel).read_bytes()
            still = self._bad_files(name, files)
            if still:
                raise Corrupt(f"model {name!r} still corrupt after repair: {next(iter(still.values()))}")
        step.verify_s = time.perf_counter() - t0
        return files, step

    def _bad_files(self, name: str, files: Mapping[str, bytes]) -> dict[str, str]:
        if self.verify_mode == "none":
            return {}
        entry = self.store.entry(name)
        bad = {}
        for rel, data in files.items():
            f = entry.files[rel]
            c = check_bytes(data, f"{name}/{rel}", f.sha256, f.bytes, verify_hash=self.verify_mode == "hash")
            if not c.ok:
                bad[rel] = c.detail
        return bad

    def _load_one(self, name: str, host_files: Mapping[str, bytes | memoryview] | None) -> tuple[LoadStep, list[str]]:
        entry = self.store.entry(name)
        files, step = self._read(name, host_files)
        evicted = self._make_room(entry.total_bytes, keep=set(self.store.load_order([name])))
        t0 = time.perf_counter()
        generator = None
        if entry.kind == "sd_pipeline":
            obj = modelbuild.build_sd_components(files, self.store.model_dir(name), self.device, self.dtype)
            generator = Generator(obj, self.device)
        elif entry.kind == "controlnet":
            obj = modelbuild.build_controlnet(files, self.device, self.dtype)
        elif entry.kind == "lora":
            (base,) = entry.depends_on
            base_model = self.get(base)
            with base_model.lock:
                modelbuild.apply_lora(base_model.obj, files, name)
            obj = base
        else:
            obj = modelbuild.build_synthetic(files, self.device)
        size = modelbuild.module_bytes(obj) if entry.kind != "lora" else entry.total_bytes
        model = ResidentModel(name, entry.kind, self.device, size, obj, list(entry.depends_on),
                              fingerprint(obj) if entry.kind != "lora" else "", generator=generator)
        step.build_s = time.perf_counter() - t0
        with self._lock:
            self._resident[name] = model
        return step, evicted

    def _make_room(self, need: int, keep: set[str]) -> list[str]:
        if need > self.cap_bytes:
            raise CacheFull(f"a model of {need} bytes exceeds the cache cap of {self.cap_bytes} bytes on {self.device}")
        evicted = []
        with self._lock:
            while self.used_bytes() + need > self.cap_bytes:
                victim = self._victim(keep)
                if victim is None:
                    raise CacheFull(f"need {need} bytes on {self.device}: {self.used_bytes()} of {self.cap_bytes} "
                                    f"are held by models in use or needed: {list(self._resident)}")
                evicted += self._unload_locked(victim)
                self.evictions += 1
        return evicted

    def _victim(self, keep: set[str]) -> str | None:
        needed = {d for m in self._resident.values() for d in m.depends_on}
        for name, m in self._resident.items():  # oldest first
            if name in keep or name in needed or m.lock.locked():
                continue
            return name
        return None

    # ---- unloading and verification ----------------------------------------------------
    def unload(self, name: str) -> list[str]:
        """Unload a model and everything resident that depends on it; returns the names unloaded."""
        with self._lock:
            if name not in self._resident:
                raise KeyError(f"model {name!r} is not resident on {self.device}; resident: {list(self._resident)}")
            return self._unload_locked(name)

    def _unload_locked(self, name: str) -> list[str]:
        gone = []
        for dep in [m.name for m in self._resident.values() if name in m.depends_on]:
            gone += self._unload_locked(dep)
        model = self._resident.pop(name)
        with model.lock:  # wait for a request still using it
            if model.kind == "lora" and model.obj in self._resident:
                modelbuild.remove_lora(self._resident[model.obj].obj, name)
            model.obj = None
            model.generator = None
        gone.append(name)
        return gone

    def verify_resident(self, name: str) -> tuple[bool, float]:
        """Recompute the resident weights' fingerprint; a mismatch marks the model corrupt (it
        then serves nothing until reloaded). Returns (intact, seconds)."""
        t0 = time.perf_counter()
        with self._lock:
            model = self._resident.get(name)
            if model is None:
                raise KeyError(f"model {name!r} is not resident on {self.device}; resident: {list(self._resident)}")
        if model.kind == "lora":
            return True, time.perf_counter() - t0
        with model.lock:
            intact = fingerprint(model.obj) == model.fingerprint
        if not intact:
            model.corrupt = True
        return intact, time.perf_counter() - t0

    def flip_resident_bit(self, name: str, seed: int = 0) -> str:
        """Fault injection: flip one bit of one resident weight; returns which tensor."""
        import random

        import torch

        with self._lock:
            model = self._resident[name]
        tensors = [(n, t) for n, t in modelbuild.tensors_of(model.obj) if t.numel() and "lora_" not in n]
        rng = random.Random(seed)
        tname, t = tensors[rng.randrange(len(tensors))]
        with torch.no_grad():
            flat = t.view(-1).view(torch.uint8)
            i = rng.randrange(flat.numel())
            flat[i] ^= 1 << rng.randrange(8)
        return tname
