"""Recipe of the safety classifier: trained at build time, deterministically, in seconds.

STAND-IN CONCEPT (see workers/postprocess/safety_corpus.py): the model learns synthetic patterns
composited onto real photographs, not unsafe content. It is trained here so the pipeline runs a real,
trained, measurable classifier without downloading one.

Training (one thread, fixed seeds: the same source gives the same bytes, which the store checks on a
rebuild against the manifest's sha256):
1. patches: the network's 15x15 patch softmax is fitted to each patch's true share of every category
   (the composited masks, average-pooled over the patch window), soft cross-entropy, Adam;
2. levels: with the network frozen, the per-category logistic units for P(>= borderline) and P(unsafe)
   are fitted on the images' coverage features and labels.
Training images come from ``safety_corpus.TRAIN_SEED`` on the training photographs only; the
evaluation corpus (other seeds, held-out photographs included) is never seen here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Sizes: images rendered at several resolutions and box-resized to 64 px, so patterns blended across
# pixel edges (any input larger than 64 px) are seen in training, not only the crisp 64 px rendering.
SAFETY_SOURCE: dict[str, Any] = {"seed": 0, "train_items": 900, "epochs": 30, "hidden": 24,
                                 "sizes": [64, 96, 128, 160, 256], "version": 1}
_BATCH = 50
_CALIBRATION_STEPS = 600

MODEL_CARD = """# The safety classifier's stand-in

This model detects two SYNTHETIC PATTERNS (categories "stripes" and "checker") composited onto
photographs; it stands in for a content-safety classifier so that the validation pipeline (scores,
policies, failing closed, review queue) runs on a real trained model offline. It does not detect unsafe
content and must not be used as if it did.

- corpus: workers/postprocess/safety_corpus.py (levels by coverage: safe 0, borderline < 0.10, unsafe >= 0.10)
- architecture and scores: workers/postprocess/safety.py
- training: workers/models/safety_recipe.py, source {source}
- training-set figures (not an evaluation): {train}
- evaluation: the postprocessing.safety_accuracy runner, on a held-out corpus (other seeds, unseen photographs)
"""


def _tensors(items: list[Any]) -> tuple[Any, Any, Any]:
    import torch
    import torch.nn.functional as F

    from workers.postprocess import safety
    from workers.postprocess.safety_corpus import CATEGORIES, LEVELS

    x = safety.batch_input([i.pixels for i in items])
    # each item's masks at the network's 64 px input (box-resized like its pixels), then per patch window
    masks = torch.stack([F.adaptive_avg_pool2d(torch.from_numpy(i.masks).float(), safety.INPUT_PX) for i in items])
    share = F.avg_pool2d(masks, safety.KERNEL, safety.STRIDE)
    target = torch.cat([(1 - share.sum(1, keepdim=True)).clamp(min=0), share], 1)
    levels = torch.tensor([[LEVELS.index(i.levels[c]) for c in CATEGORIES] for i in items])
    return x, target, levels


def train(seed: int, train_items: int, epochs: int, hidden: int, sizes: list[int]
          ) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a freshly trained classifier; single-threaded and seeded."""
    import torch
    import torch.nn.functional as F

    from workers.postprocess import safety
    from workers.postprocess.safety_corpus import CATEGORIES, CONTENT_CLASSES, TRAIN_SEED, make_item

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in one order: the same bytes on every build of this machine
    try:
        items = [make_item(TRAIN_SEED + seed, i, CONTENT_CLASSES[i % len(CONTENT_CLASSES)],
                           sizes[(i // len(CONTENT_CLASSES)) % len(sizes)], split="train") for i in range(train_items)]
        x, target, levels = _tensors(items)
        gen = torch.Generator().manual_seed(seed)
        p = safety.init_params(len(CATEGORIES), hidden, gen)
        net = [v.requires_grad_(True) for k, v in p.items() if k != "calibration"]
        opt = torch.optim.Adam(net, lr=3e-3)
        loss = torch.tensor(0.0)
        for _epoch in range(epochs):
            order = torch.randperm(train_items, generator=gen)
            for start in range(0, train_items, _BATCH):
                idx = order[start:start + _BATCH]
                loss = -(target[idx] * F.log_softmax(safety.cell_logits(p, x[idx]), 1)).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        patch_loss = float(loss.detach())
        with torch.no_grad():
            mean, peak = safety.coverage_features(p, x)
        calib = p["calibration"].requires_grad_(True)
        opt2 = torch.optim.Adam([calib], lr=0.5)
        for _ in range(_CALIBRATION_STEPS):
            at_least, unsafe = safety.level_logits(p, mean, peak)
            loss = (F.binary_cross_entropy_with_logits(at_least, (levels >= 1).float())
                    + F.binary_cross_entropy_with_logits(unsafe, (levels >= 2).float()))
            opt2.zero_grad()
            loss.backward()
            opt2.step()
        with torch.no_grad():
            tensors = {k: v.detach().contiguous().clone() for k, v in p.items()}
            pred = safety.severity(tensors, x)
            predicted = (pred >= 0.25).long() + (pred >= 0.75).long()
            train_acc = float((predicted == levels).all(1).float().mean())
    finally:
        torch.set_num_threads(threads)
    metadata = {
        "categories": json.dumps(list(CATEGORIES)), "input_px": str(safety.INPUT_PX),
        "stand_in": "synthetic patterns on photographs; not an unsafe-content detector",
        "train_items": str(train_items), "train_accuracy": f"{train_acc:.4f}", "patch_loss": f"{patch_loss:.4f}",
        "level_loss": f"{float(loss.detach()):.4f}",
    }
    return tensors, metadata


def build_safety_classifier(out: Path, root: Path, *, seed: int, train_items: int, epochs: int, hidden: int,
                            sizes: list[int], version: int = 1) -> None:
    """The model store recipe (kind ``safety_classifier``): weights and a model card into ``out``."""
    from safetensors.torch import save_file

    from workers.postprocess.safety import META_KEY, WEIGHTS_FILE

    if version != 1:
        raise ValueError(f"safety classifier recipe version {version} is unknown (this code builds version 1)")
    if train_items < 50 or epochs < 1 or hidden < 4:
        raise ValueError(f"train_items >= 50, epochs >= 1, hidden >= 4 required; got {train_items}, {epochs}, "
                         f"{hidden}")
    if not sizes or any(px < 64 for px in sizes):
        raise ValueError(f"sizes must be image sides of at least 64 px, got {sizes}")
    tensors, metadata = train(seed, train_items, epochs, hidden, list(sizes))
    out.mkdir(parents=True, exist_ok=True)
    # One metadata key: safetensors writes a map's keys in arbitrary order, which would change the bytes.
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={META_KEY: json.dumps(metadata, sort_keys=True)})
    source = {"seed": seed, "train_items": train_items, "epochs": epochs, "hidden": hidden, "sizes": list(sizes),
              "version": version}
    train_figures = {k: metadata[k] for k in ("train_accuracy", "patch_loss", "level_loss")}
    (out / "MODEL_CARD.md").write_text(MODEL_CARD.format(source=json.dumps(source, sort_keys=True),
                                                         train=json.dumps(train_figures, sort_keys=True)))
