"""The labelled corpus of the safety classifier's STAND-IN concept (no real unsafe content exists offline).

What is "flagged" here is not harmful content: it is a synthetic pattern composited onto real photographs
(scikit-image's sample images, shipped with the library). Two stand-in categories, each a pattern in
fixed colours at a fixed scale relative to the image (a period of 1/16 of its side):

- ``stripes``: diagonal bands alternating magenta and yellow;
- ``checker``: a checkerboard of cyan and dark blue.

A category's *coverage* is the fraction of the image's pixels it covers; its level follows from it:
``safe`` (0), ``borderline`` (0 < coverage < 0.10) or ``unsafe`` (coverage >= 0.10). The corpus draws
borderline coverage in [0.02, 0.06] and unsafe coverage in [0.15, 0.35], so no item lies near the 0.10
boundary. An image's label is the highest level of its categories. Hard negatives ("distractors") look
similar without being a pattern: the same stripes or checkerboard in greys, solid patches of the
pattern colours, and smooth gradients between them.

Content classes (the spec's 2.6 content_complexity): ``safe_content`` (plain photographs and photographs
with distractors), ``borderline_content`` (one category at borderline coverage, sometimes with a
distractor) and ``mixed_content`` (each category independently safe, borderline or unsafe, with or
without a distractor). Every item is a pure function of (seed, index, content, size): training uses
seed ``TRAIN_SEED`` on the training photographs; evaluation uses seeds from ``EVAL_SEED_BASE`` on every
photograph, four of which (``HELD_OUT_PHOTOS``) the classifier never saw in training.

This corpus exercises the validation pipeline (classification, policies, failing closed); a classifier
trained on it detects these patterns, not unsafe content.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

CATEGORIES = ("stripes", "checker")
LEVELS = ("safe", "borderline", "unsafe")
CONTENT_CLASSES = ("safe_content", "borderline_content", "mixed_content")
UNSAFE_AT = 0.10  # coverage from which a category is unsafe; anything above 0 is at least borderline
BORDERLINE_RANGE = (0.02, 0.06)
UNSAFE_RANGE = (0.15, 0.35)
DISTRACTOR_RANGE = (0.04, 0.25)
DISTRACTORS = ("grey_stripes", "grey_checker", "solid_colour", "colour_gradient")
PERIOD_FRACTION = 1 / 16  # pattern period relative to the image side: scale invariant
TRAIN_SEED = 0
EVAL_SEED_BASE = 10_000
HELD_OUT_PHOTOS = ("coffee", "gravel", "stereo_motorcycle", "clock")
_COLOURS = {
    "stripes": ((255, 0, 255), (255, 255, 0)),
    "checker": ((0, 255, 255), (0, 0, 139)),
}
_PHOTOS = ("astronaut", "camera", "cat", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "moon",
           "page", "text", "clock", "coins", "grass", "gravel", "brick", "colorwheel", "retina", "logo",
           "checkerboard", "cell", "stereo_motorcycle")


@dataclass(frozen=True)
class Item:
    pixels: np.ndarray  # (px, px, 3) uint8
    masks: np.ndarray  # (len(CATEGORIES), px, px) bool: where each category's pattern is
    coverage: dict[str, float]
    levels: dict[str, str]
    label: str  # the highest level
    content: str
    photo: str
    distractors: tuple[str, ...] = field(default=())


def level_of(coverage: float) -> str:
    return "safe" if coverage <= 0 else "borderline" if coverage < UNSAFE_AT else "unsafe"


def label_of(levels: dict[str, str]) -> str:
    return max(levels.values(), key=LEVELS.index, default="safe")


@functools.lru_cache(maxsize=1)
def photos() -> dict[str, np.ndarray]:
    """Every sample photograph as (h, w, 3) uint8 (greyscale repeated, RGBA over white)."""
    import skimage.data as data

    out = {}
    for name in _PHOTOS:
        img = getattr(data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.shape[2] == 4:
            alpha = img[:, :, 3:4].astype(np.float32) / 255
            img = (img[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        out[name] = np.ascontiguousarray(img, dtype=np.uint8)
    return out


def photo_names(split: str) -> tuple[str, ...]:
    """``train``: the photographs the classifier learns on; ``eval``: all of them (held-out ones included)."""
    if split == "train":
        return tuple(n for n in _PHOTOS if n not in HELD_OUT_PHOTOS)
    if split == "eval":
        return _PHOTOS
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


def _background(rng: np.random.Generator, name: str, px: int) -> np.ndarray:
    from PIL import Image

    img = photos()[name]
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.4, 1.0))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = img[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((px, px), Image.Resampling.BOX))


def _texture(kind: str, px: int, phase: float) -> np.ndarray:
    """0/1 texture over the whole image grid (so a pattern stays aligned when an image is downscaled)."""
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float64)
    period = px * PERIOD_FRACTION
    if kind == "stripes":
        return (np.floor((xx + yy + phase) / (period / 2)) % 2).astype(np.float32)
    return ((np.floor((xx + phase) / (period / 2)) + np.floor((yy + phase) / (period / 2))) % 2).astype(np.float32)


def _rect(rng: np.random.Generator, px: int, lo: float, hi: float) -> tuple[int, int]:
    area = rng.uniform(lo, hi) * px * px
    aspect = rng.uniform(0.5, 2.0)
    h = int(np.clip(round(np.sqrt(area * aspect)), 2, px))
    w = int(np.clip(round(area / h), 2, px))
    return h, w


def _place(rng: np.random.Generator, px: int, size: tuple[int, int], taken: list[tuple[int, int, int, int]]
           ) -> tuple[int, int, int, int] | None:
    h, w = size
    for _ in range(200):
        y, x = int(rng.integers(0, px - h + 1)), int(rng.integers(0, px - w + 1))
        if all(y + h <= ty or ty + th <= y or x + w <= tx or tx + tw <= x for ty, tx, th, tw in taken):
            return y, x, h, w
    return None


def _paint_pattern(img: np.ndarray, cat: str, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    y, x, h, w = box
    tex = _texture(cat, img.shape[0], float(rng.uniform(0, img.shape[0] * PERIOD_FRACTION)))[y:y + h, x:x + w]
    a, b = (np.array(c, np.float32) * rng.uniform(0.8, 1.0) for c in _COLOURS[cat])
    img[y:y + h, x:x + w] = tex[:, :, None] * a + (1 - tex[:, :, None]) * b


def _paint_distractor(img: np.ndarray, kind: str, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    y, x, h, w = box
    px = img.shape[0]
    if kind in ("grey_stripes", "grey_checker"):
        tex = _texture("stripes" if kind == "grey_stripes" else "checker", px,
                       float(rng.uniform(0, px * PERIOD_FRACTION)))[y:y + h, x:x + w]
        lo = rng.uniform(0, 120)
        hi = rng.uniform(lo + 80, 255)
        img[y:y + h, x:x + w] = (tex * hi + (1 - tex) * lo)[:, :, None]
    elif kind == "solid_colour":
        colours = [c for pair in _COLOURS.values() for c in pair]
        img[y:y + h, x:x + w] = np.array(colours[int(rng.integers(len(colours)))], np.float32)
    else:  # colour_gradient: the two colours of a pattern, blended smoothly (no texture)
        a, b = (np.array(c, np.float32) for c in _COLOURS[CATEGORIES[int(rng.integers(len(CATEGORIES)))]])
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        img[y:y + h, x:x + w] = a * (1 - t) + b * t


def _plan(rng: np.random.Generator, content: str) -> tuple[dict[str, str], int]:
    """(target level per category, number of distractors) for an item of ``content``."""
    if content == "safe_content":
        return dict.fromkeys(CATEGORIES, "safe"), int(rng.integers(0, 3))
    if content == "borderline_content":
        levels = dict.fromkeys(CATEGORIES, "safe")
        levels[CATEGORIES[int(rng.integers(len(CATEGORIES)))]] = "borderline"
        return levels, int(rng.random() < 0.3)
    if content == "mixed_content":
        levels = {c: LEVELS[int(rng.choice(3, p=(0.35, 0.25, 0.40)))] for c in CATEGORIES}
        return levels, int(rng.random() < 0.5)
    raise ValueError(f"content must be one of {list(CONTENT_CLASSES)}, got {content!r}")


def make_item(seed: int, index: int, content: str, px: int = 64, split: str = "eval") -> Item:
    """Item ``index`` of the corpus ``seed``: the same arguments always give the same pixels and labels."""
    if px < 32:
        raise ValueError(f"image side must be at least 32 px, got {px}")
    rng = np.random.default_rng([seed, index, CONTENT_CLASSES.index(content) if content in CONTENT_CLASSES else 99])
    targets, n_distractors = _plan(rng, content)
    names = photo_names(split)
    photo = names[int(rng.integers(len(names)))]
    for _attempt in range(20):
        img = _background(rng, photo, px).astype(np.float32)
        taken: list[tuple[int, int, int, int]] = []
        kinds = tuple(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))] for _ in range(n_distractors))
        boxes = []
        for kind in kinds:
            box = _place(rng, px, _rect(rng, px, *DISTRACTOR_RANGE), taken)
            if box is not None:
                taken.append(box)
                boxes.append((kind, box))
        masks = np.zeros((len(CATEGORIES), px, px), bool)
        pattern_boxes: list[tuple[str, tuple[int, int, int, int]]] = []
        ok = True
        for cat, level in targets.items():
            if level == "safe":
                continue
            lo, hi = BORDERLINE_RANGE if level == "borderline" else UNSAFE_RANGE
            # Patterns may cover distractors (painted later) but never each other.
            box = _place(rng, px, _rect(rng, px, lo, hi), [b for _, b in pattern_boxes])
            if box is None:
                ok = False
                break
            pattern_boxes.append((cat, box))
        if not ok:
            continue
        for kind, box in boxes:
            _paint_distractor(img, kind, box, rng)
        for cat, box in pattern_boxes:
            _paint_pattern(img, cat, box, rng)
            y, x, h, w = box
            masks[CATEGORIES.index(cat), y:y + h, x:x + w] = True
        img += rng.normal(0, 3.0, img.shape).astype(np.float32)  # sensor-like noise over everything
        coverage = {c: float(masks[i].mean()) for i, c in enumerate(CATEGORIES)}
        levels = {c: level_of(v) for c, v in coverage.items()}
        if levels != targets:  # rounding at a tiny size pushed a box across a range: draw again
            continue
        pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return Item(pixels, masks, coverage, levels, label_of(levels), content, photo, kinds)
    raise RuntimeError(f"could not lay out item {index} of seed {seed} ({content}, {px} px) in 20 attempts")


def corpus(seed: int, count: int, contents: tuple[str, ...] | list[str] = CONTENT_CLASSES, px: int = 64,
           split: str = "eval", start: int = 0) -> list[Item]:
    """``count`` items, content classes in rotation."""
    if not contents:
        raise ValueError("contents must name at least one content class")
    return [make_item(seed, i, contents[i % len(contents)], px, split) for i in range(start, start + count)]


def expected_decision(label: str) -> str:
    """The decision the shipped default policy prescribes for a label (its thresholds sit between levels)."""
    return {"safe": "allow", "borderline": "review", "unsafe": "block"}[label]
