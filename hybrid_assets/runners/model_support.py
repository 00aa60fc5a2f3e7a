"""Shared plumbing of the model and inference runners: where the model root is, building what a
case needs (offline, idempotent), a dedicated worker with a model host around it, and inputs
(conditioning images) that are the same on every run.

Model runners use a worker of their own, not the run's shared pool: they fill its device cache,
corrupt its weights and measure its memory, which must not leak into other cases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid_assets.runners import RunnerContext
from workers.host import WorkerClient
from workers.host.modelcache import HostModelCache
from workers.host.models import ModelHost
from workers.models import generate
from workers.models.store import ModelStore

ENV_MODEL_ROOT = "HYBRID_MODEL_ROOT"
DEFAULT_MODEL_ROOT = Path("var/models")
PROFILE_MODELS = {"smoke": "smoke", "standard": "standard", "spec": "spec"}
MiB = 1 << 20


def model_root() -> Path:
    """``$HYBRID_MODEL_ROOT``, else var/models (read when called, never at import)."""
    return Path(os.environ.get(ENV_MODEL_ROOT) or DEFAULT_MODEL_ROOT)


def ensure_models(ctx: RunnerContext | None = None, *, profile: str = "smoke", synthetic_mib: Sequence[int] = (),
                  root: Path | None = None) -> ModelStore:
    """The store with the profile's models and any synthetic sizes built (what exists is kept)."""
    root = root or model_root()
    name = PROFILE_MODELS.get(ctx.profile if ctx else profile, "smoke")
    specs = list(generate.PROFILES[name])
    have = {s.name for s in specs}
    specs += [s for s in (generate.synthetic(int(m)) for m in synthetic_mib) if s.name not in have]
    built = generate.build(root, specs, log=ctx.log.info if ctx else None)
    if ctx is not None and built:
        ctx.recorder.note("models_built", built)
    return ModelStore(root)


@dataclass
class ModelSession:
    client: WorkerClient
    host: ModelHost
    store: ModelStore
    cache: HostModelCache | None


@contextmanager
def model_session(ctx: RunnerContext, store: ModelStore, *, cache_mib: float = 1024.0,
                  host_cache_mib: float | None = None, device: str = "cpu", start_timeout: float = 120.0,
                  **configure: Any) -> Iterator[ModelSession]:
    """A fresh worker with its device cache configured, and a host RAM cache when asked."""
    with ExitStack() as stack:
        client = stack.enter_context(WorkerClient(ctx.worker_argv, name=f"{ctx.case_id}-models",
                                                  startup_timeout=start_timeout).start())
        cache = None
        if host_cache_mib:
            cache = stack.enter_context(HostModelCache(store, int(host_cache_mib * MiB)))
        host = ModelHost(client, store, cache)
        host.configure(cache_mib=cache_mib, device=device, **configure)
        yield ModelSession(client, host, store, cache)


def pipelines(store: ModelStore) -> list[str]:
    """The store's text-to-image pipelines, smallest first."""
    names = [n for n in store.names() if store.entry(n).kind == "sd_pipeline"]
    return sorted(names, key=lambda n: (store.entry(n).total_bytes, n))


def control_image(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic edge-map-like conditioning image (1, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    for _ in range(6):
        x0, y0, x1, y1 = rng.integers(0, size, 4)
        n = max(abs(int(x1) - int(x0)), abs(int(y1) - int(y0)), 1)
        xs = np.linspace(x0, x1, n).astype(int)
        ys = np.linspace(y0, y1, n).astype(int)
        img[ys, xs] = 255
    return np.repeat(img[None, :, :, None], 3, axis=3)


def init_image(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic smooth RGB image (1, size, size, 3) uint8 for image-to-image."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, 3)
    chans = [0.5 + 0.5 * np.sin(6.28 * (x * (i + 1) + y) + phase[i]) for i in range(3)]
    return (np.stack(chans, -1)[None] * 255).astype(np.uint8)
