"""The stand-in safety classifier: its corpus is a pure function of its seeds, its build is deterministic
(a rebuild hashes to the manifest, so the store can repair it), it refuses foreign weights, and on a
held-out sample of the stand-in concept it gives the labels' decisions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from hybrid_assets.runners.safety_support import ensure_classifier
from workers.models import generate
from workers.models.corrupt import Corruption, corrupt_file
from workers.models.safety_recipe import SAFETY_SOURCE
from workers.models.store import ModelStore
from workers.postprocess import safety
from workers.postprocess import safety_corpus as sc

# The recipe at a fraction of its size (seconds): determinism and repair do not depend on the size.
SMALL = generate.ModelSpec("safety-small", "safety_classifier",
                           {**SAFETY_SOURCE, "train_items": 150, "epochs": 2, "hidden": 8, "sizes": [64, 128]})


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("safety-models")
    generate.build(root, [SMALL])
    return root


def test_corpus_items_are_deterministic_labelled_by_coverage_and_split_by_photo() -> None:
    a, b = sc.make_item(5, 3, "mixed_content", 64), sc.make_item(5, 3, "mixed_content", 64)
    assert np.array_equal(a.pixels, b.pixels) and a.levels == b.levels
    for item in sc.corpus(sc.TRAIN_SEED, 30, split="train"):
        assert item.photo not in sc.HELD_OUT_PHOTOS
        for i, cat in enumerate(sc.CATEGORIES):
            assert item.coverage[cat] == pytest.approx(item.masks[i].mean())
            assert item.levels[cat] == sc.level_of(item.coverage[cat])
        assert item.label == sc.label_of(item.levels)
        if item.content == "safe_content":
            assert item.label == "safe"
    with pytest.raises(ValueError, match="content must be one of"):
        sc.make_item(0, 0, "nsfw", 64)


def test_the_build_is_deterministic_and_a_corrupt_file_is_repaired_by_rebuilding(small_root: Path,
                                                                                  tmp_path: Path) -> None:
    store = ModelStore(small_root)
    entry = store.entry(SMALL.name)
    assert entry.kind == "safety_classifier" and set(entry.files) == {safety.WEIGHTS_FILE, "MODEL_CARD.md"}
    rebuilt = generate.build_into(small_root, entry.kind, dict(entry.source), tmp_path / "again")
    assert rebuilt == entry.files  # same bytes: what repair-by-rebuild relies on
    assert generate.build(small_root, [SMALL]) == []  # current: nothing rebuilt
    copy = tmp_path / "models"
    shutil.copytree(small_root, copy)
    private = ModelStore(copy)
    corrupt_file(private.file_path(SMALL.name, safety.WEIGHTS_FILE), Corruption.FLIP_BIT)
    assert not all(c.ok for c in private.verify(SMALL.name))
    assert private.repair(SMALL.name, allow_backup=False).how == "rebuild"
    assert all(c.ok for c in private.verify(SMALL.name))
    assert "does not detect unsafe" in (small_root / entry.path / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="train_items >= 50"):
        generate.build_into(small_root, "safety_classifier", {**SMALL.source, "train_items": 3}, tmp_path / "x")


def test_held_out_items_get_their_labels_decisions_and_foreign_weights_are_refused() -> None:
    clf = safety.load_classifier(ensure_classifier())  # the profile's model (make models built it)
    assert clf.categories == sc.CATEGORIES
    items = sc.corpus(sc.EVAL_SEED_BASE + 7, 60, px=96)  # other seeds, held-out photographs included, resized
    scores = clf.classify([i.pixels for i in items])
    decided = ["block" if max(s.values()) >= 0.75 else "review" if max(s.values()) >= 0.25 else "allow"
               for s in scores]
    correct = sum(d == sc.expected_decision(i.label) for d, i in zip(decided, items, strict=True))
    assert correct >= 57, f"{correct}/60 held-out items decided as labelled"
    from safetensors.torch import save

    with pytest.raises(ValueError, match="not a safety classifier"):
        safety.PatchClassifier("x", save(clf.params), "0" * 64)  # no metadata entry
    with pytest.raises(ValueError, match="must be \\(h, w, 3\\) uint8"):
        clf.classify([np.zeros((8, 8), np.uint8)])
