"""Shared plumbing of the safety runners: the stand-in classifier built into the model store, a dedicated
worker with the safety domain configured, images handed over by shared memory, and the labelled corpus.

The classifier is a STAND-IN (workers/postprocess/safety_corpus.py): trained to detect synthetic patterns
composited onto photographs, it exercises the validation pipeline with a real trained model; its figures
say nothing about detecting real unsafe content. Every runner notes this.

Safety runners use a worker of their own (not the run's shared pool): they inject classifier and policy
engine failures and drain its review queue, which must not leak into other cases.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid_assets.runners import RunnerContext
from hybrid_assets.runners.model_support import model_root
from workers.host import WorkerClient
from workers.models import generate
from workers.models.store import ModelStore
from workers.postprocess import safety_corpus as corpus
from workers.postprocess.safety import DEFAULT_MODEL
from workers.protocol.images import ShmLedger

FAULT_FLAG = "--allow-fault-injection"
STAND_IN_NOTE = ("stand-in concept: the classifier is trained (make models) to detect two synthetic patterns "
                 "composited onto scikit-image photographs (workers/postprocess/safety_corpus.py); it exercises "
                 "the validation pipeline and does not detect real unsafe content")
CONTENT_ALIASES = {"safe": "safe_content", "borderline": "borderline_content", "mixed": "mixed_content"}


def ensure_classifier(ctx: RunnerContext | None = None) -> ModelStore:
    """The model root with the safety classifier built (only it: seconds, deterministic)."""
    spec = next(s for s in generate.PROFILES["smoke"] if s.name == DEFAULT_MODEL)
    built = generate.build(model_root(), [spec], log=ctx.log.info if ctx else None)
    if ctx is not None and built:
        ctx.recorder.note("models_built", built)
    return ModelStore(model_root())


@dataclass
class SafetySession:
    client: WorkerClient
    configured: dict[str, Any]
    ledger: ShmLedger

    def publish(self, pixels: np.ndarray) -> dict[str, Any]:
        """One image into its own shared-memory segment; the ImageInput that names it."""
        ref = self.ledger.publish(pixels[None])
        return {"ref": {"shm": ref.shm, "shape": ref.shape, "sha256": ref.sha256}}


@contextmanager
def safety_session(ctx: RunnerContext, *, workers: int = 2, breaker_failures: int = 3,
                   breaker_cooldown_s: float = 1.0) -> Iterator[SafetySession]:
    """A fresh worker (fault injection on) with the classifier and the shipped policies configured."""
    store = ensure_classifier(ctx)
    argv = list(ctx.worker_argv)
    if FAULT_FLAG not in argv:
        argv.append(FAULT_FLAG)
    ledger = ShmLedger()
    with WorkerClient(argv, name=f"{ctx.case_id}-safety", startup_timeout=120.0).start() as client:
        try:
            configured = client.request("safety.configure", {
                "root": str(store.root), "workers": workers, "breaker_failures": breaker_failures,
                "breaker_cooldown_s": breaker_cooldown_s}, timeout=120.0)
            ctx.recorder.note("safety_classifier", {
                "model": configured["model"], "sha256": configured["sha256"], "categories": configured["categories"],
                "policies": [p["name"] for p in configured["policies"]], "pool_threads": workers,
                "stand_in": STAND_IN_NOTE})
            yield SafetySession(client, configured, ledger)
        finally:
            ledger.unlink_all()  # the worker reads in place and never unlinks: the host owns the segments


def contents(params: dict[str, Any], key: str = "content_complexity") -> tuple[str, ...]:
    raw = params.get(key) or list(corpus.CONTENT_CLASSES)
    out = tuple(CONTENT_ALIASES.get(c, c) for c in raw)
    bad = [c for c in out if c not in corpus.CONTENT_CLASSES]
    if bad:
        raise ValueError(f"{key}: {bad[0]!r} is not one of {list(corpus.CONTENT_CLASSES)}")
    return out


def eval_items(count: int, content: Sequence[str], px: int, seed_offset: int = 0) -> list[corpus.Item]:
    """Held-out items (evaluation seeds, every photograph): never seen by the classifier's training."""
    return corpus.corpus(corpus.EVAL_SEED_BASE + seed_offset, count, tuple(content), px=px, split="eval")


def held_out(item: corpus.Item) -> int:
    return int(item.photo in corpus.HELD_OUT_PHOTOS)
