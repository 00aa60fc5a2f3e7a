"""The safety classifier behind a backend interface: a small trained patch network (the real backend)
that scores each image's stand-in categories.

STAND-IN CONCEPT: no real unsafe-content model or data exists offline. The classifier is trained at
``make models`` time (workers/models/safety_recipe.py) on a corpus of real photographs with synthetic
patterns composited at controlled coverage (workers/postprocess/safety_corpus.py). It detects those
patterns, and only those; it exercises the validation pipeline (scores, policies, failing closed) with a
real, trained, measurable model. It does not detect unsafe content.

The network: an image is box-resized to 64x64; a strided 8x8 convolution (stride 4) and two 1x1
layers classify each of the 15x15 overlapping patches as none or one of the categories (a softmax);
per category, the mean and the max of the patch probabilities (coverage and peak) go through two
logistic units giving P(level >= borderline) and P(level = unsafe). A category's score is their mean,
the expected severity in [0, 1]: about 0 (safe), 0.5 (borderline), 1 (unsafe). Policies threshold it.

Backends: ``ClassifierBackend`` is what the validator needs (``categories`` and ``classify``);
``PatchClassifier`` is the trained model; tests substitute doubles (as MLPerf's harness has
backend_pytorch and backend_debug).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from workers.models.store import ModelStore

INPUT_PX = 64
KERNEL, STRIDE = 8, 4
WEIGHTS_FILE = "classifier.safetensors"
META_KEY = "safety_classifier"  # the safetensors metadata entry holding this model's JSON metadata
MODEL_KIND = "safety_classifier"
DEFAULT_MODEL = "safety-patterns"
_MEAN, _STD = 0.5, 0.25

Scores = dict[str, float]


class ClassifierBackend(Protocol):
    """What the validator uses. ``classify`` returns one score per category per image (numbers in
    [0, 1]) or raises; it may be called from several threads at once."""

    name: str
    sha256: str
    categories: tuple[str, ...]

    def classify(self, images: Sequence[np.ndarray]) -> list[Scores]: ...


def to_input(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, 64, 64) float32, box-resized (an area average keeps a pattern's coverage)."""
    from PIL import Image

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"classifier input must be (h, w, 3) uint8, got {pixels.shape} {pixels.dtype}")
    if pixels.shape[:2] != (INPUT_PX, INPUT_PX):
        pixels = np.asarray(Image.fromarray(pixels).resize((INPUT_PX, INPUT_PX), Image.Resampling.BOX))
    return ((pixels.astype(np.float32) / 255 - _MEAN) / _STD).transpose(2, 0, 1)


def batch_input(images: Sequence[np.ndarray]) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.stack([to_input(im) for im in images]))


def init_params(categories: int, hidden: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """He-initialised weights; the calibration starts near coverage thresholds of 0.01 and 0.10."""
    import torch

    def he(*shape: int, fan_in: int, gain: float = 2.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * (gain / fan_in) ** 0.5

    calib = torch.tensor([[100.0, 0.0, -1.0, 100.0, 0.0, -10.0]]).repeat(categories, 1)
    return {
        "patch.weight": he(hidden, 3, KERNEL, KERNEL, fan_in=3 * KERNEL * KERNEL), "patch.bias": torch.zeros(hidden),
        "mix.weight": he(hidden, hidden, 1, 1, fan_in=hidden), "mix.bias": torch.zeros(hidden),
        "cells.weight": he(categories + 1, hidden, 1, 1, fan_in=hidden, gain=1.0),
        "cells.bias": torch.zeros(categories + 1),
        "calibration": calib,  # per category: (w_mean, w_max, bias) for P(>= borderline), then for P(unsafe)
    }


def cell_logits(p: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(n, 3, 64, 64) -> (n, 1 + categories, 15, 15): none / category logits per patch."""
    import torch.nn.functional as F

    h = F.relu(F.conv2d(x, p["patch.weight"], p["patch.bias"], stride=STRIDE))
    h = F.relu(F.conv2d(h, p["mix.weight"], p["mix.bias"]))
    return F.conv2d(h, p["cells.weight"], p["cells.bias"])


def coverage_features(p: Mapping[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and category: mean and max patch probability, each (n, categories)."""
    probs = cell_logits(p, x).softmax(1)[:, 1:]
    return probs.mean((2, 3)), probs.amax((2, 3))


def level_logits(p: Mapping[str, torch.Tensor], mean: torch.Tensor, peak: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    q = p["calibration"]
    return q[:, 0] * mean + q[:, 1] * peak + q[:, 2], q[:, 3] * mean + q[:, 4] * peak + q[:, 5]


def severity(p: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(n, categories) expected severity in [0, 1]: mean of P(>= borderline) and P(unsafe)."""
    mean, peak = coverage_features(p, x)
    at_least, unsafe = level_logits(p, mean, peak)
    return (at_least.sigmoid() + unsafe.sigmoid()) / 2


class PatchClassifier:
    """The trained stand-in classifier, from its verified safetensors bytes."""

    def __init__(self, name: str, data: bytes, sha256: str) -> None:
        import safetensors.torch as st

        self.name, self.sha256 = name, sha256
        self.params = st.load(data)
        missing = {"patch.weight", "patch.bias", "mix.weight", "mix.bias", "cells.weight", "cells.bias",
                   "calibration"} - set(self.params)
        if missing:
            raise ValueError(f"safety classifier {name!r}: weights lack {sorted(missing)}")
        meta = self.metadata = _metadata(data)
        cats = tuple(json.loads(meta.get("categories", "[]")))
        if not cats or self.params["cells.weight"].shape[0] != len(cats) + 1:
            raise ValueError(f"safety classifier {name!r}: metadata categories {cats} do not match its weights")
        self.categories = cats
        self._lock = threading.Lock()  # only guards the counter; inference itself is thread-safe
        self.calls = 0

    def classify(self, images: Sequence[np.ndarray]) -> list[Scores]:
        import torch

        if not images:
            return []
        x = batch_input(images)
        with torch.inference_mode():
            s = severity(self.params, x)
        with self._lock:
            self.calls += 1
        return [dict(zip(self.categories, (float(v) for v in row), strict=True)) for row in s.tolist()]


def _metadata(data: bytes) -> dict[str, str]:
    """This model's metadata, from the safetensors header (8-byte little-endian length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    header: dict[str, Any] = json.loads(data[8:8 + n])
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"safetensors metadata has no {META_KEY!r} entry: not a safety classifier")
    return {str(k): str(v) for k, v in json.loads(raw).items()}


def load_classifier(store: ModelStore, name: str = DEFAULT_MODEL) -> PatchClassifier:
    """The classifier from the model store, its bytes checked against the manifest's sha256 first."""
    entry = store.entry(name)
    if entry.kind != MODEL_KIND:
        raise ValueError(f"model {name!r} is a {entry.kind}, not a {MODEL_KIND}")
    data = store.read_verified(name, [WEIGHTS_FILE])[WEIGHTS_FILE]
    return PatchClassifier(name, data, entry.files[WEIGHTS_FILE].sha256)
