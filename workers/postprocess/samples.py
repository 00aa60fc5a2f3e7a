"""Real photographs for the quality and latency cases: scikit-image's sample images (shipped with the
package, offline), cut into deterministic square crops and sorted by input type.

Input types (spec 2.6 input_complexity), made operational by measuring each crop:
- complexity = mean gradient magnitude of the grey crop (Sobel, 0..1 scale);
- simple_images: the least complex third of the crops; complex_images: the most complex third;
- featureless crops (complexity under MIN_COMPLEXITY: sky, a blank wall) are left out;
- mixed_complexity: the crops whose quadrants differ most in complexity (smooth and detailed regions
  in one image), taken from what is left after the two others.
Crops are only ever downscaled to the asked size (an upscaled reference would flatter every upscaler);
when there are fewer distinct crops than asked, the 8 flips/rotations of each crop extend the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel", "moon", "clock",
          "coins", "page", "text", "cell", "hubble_deep_field", "immunohistochemistry", "retina")
INPUT_TYPES = ("simple_images", "complex_images", "mixed_complexity")
_CROPS_PER_AXIS = 3  # positions per axis and scale
_SCALES = (1.0, 0.75, 0.5)  # crop side as a share of the photo's short side
MIN_COMPLEXITY = 0.005  # below: a featureless crop (clear sky, a blank wall), not an image to test on


@dataclass(frozen=True)
class Sample:
    name: str  # photo:scale:row:col[:transform]
    pixels: np.ndarray  # (px, px, 3) uint8
    complexity: float
    spread: float  # max - min quadrant complexity


@cache
def photo(name: str) -> np.ndarray:
    """A sample photograph as (h, w, 3) uint8 (greyscale repeated)."""
    from skimage import data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; known: {list(PHOTOS)}")
    img = np.asarray(getattr(data, name)())
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3].astype(np.uint8))


def _complexity(rgb: np.ndarray) -> float:
    from skimage.filters import sobel

    grey = rgb.astype(np.float32).mean(axis=2) / 255.0
    return float(sobel(grey).mean())


def _spread(rgb: np.ndarray) -> float:
    h, w = rgb.shape[:2]
    quads = [rgb[:h // 2, :w // 2], rgb[:h // 2, w // 2:], rgb[h // 2:, :w // 2], rgb[h // 2:, w // 2:]]
    values = [_complexity(q) for q in quads]
    return max(values) - min(values)


def _resize(rgb: np.ndarray, px: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[0] == px:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((px, px), Image.Resampling.LANCZOS))


@lru_cache(maxsize=8)
def crops(px: int) -> tuple[Sample, ...]:
    """Every distinct crop of every photo at ``px`` (downscaled only), in a fixed order."""
    if px < 8:
        raise ValueError(f"crop size must be at least 8 px, got {px}")
    out: list[Sample] = []
    for name in PHOTOS:
        img = photo(name)
        h, w = img.shape[:2]
        for scale in _SCALES:
            side = int(min(h, w) * scale)
            if side < px:
                continue
            seen: set[tuple[int, int]] = set()
            for i in range(_CROPS_PER_AXIS):
                for j in range(_CROPS_PER_AXIS):
                    y = (h - side) * i // max(1, _CROPS_PER_AXIS - 1)
                    x = (w - side) * j // max(1, _CROPS_PER_AXIS - 1)
                    if (y, x) in seen:
                        continue
                    seen.add((y, x))
                    rgb = np.ascontiguousarray(_resize(img[y:y + side, x:x + side], px))
                    if _complexity(rgb) < MIN_COMPLEXITY:
                        continue
                    out.append(Sample(f"{name}:{scale:g}:{i}:{j}", rgb, _complexity(rgb), _spread(rgb)))
    if not out:
        raise ValueError(f"no photo is at least {px} px on its short side")
    return tuple(out)


def _transformed(sample: Sample, k: int) -> Sample:
    rgb = np.rot90(sample.pixels, k % 4)
    if k >= 4:
        rgb = rgb[:, ::-1]
    return Sample(f"{sample.name}:t{k}", np.ascontiguousarray(rgb), sample.complexity, sample.spread)


def by_type(input_type: str, count: int, px: int) -> list[Sample]:
    """``count`` crops of ``input_type`` at ``px``, the same on every run; spread over the photos."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"unknown input type {input_type!r}; known: {list(INPUT_TYPES)}")
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    pool = list(crops(px))
    third = max(1, len(pool) // 3)
    ranked = sorted(pool, key=lambda s: (s.complexity, s.name))
    simple, complex_ = ranked[:third], ranked[-third:]
    if input_type == "simple_images":
        chosen = simple
    elif input_type == "complex_images":
        chosen = list(reversed(complex_))
    else:
        taken = {s.name for s in simple} | {s.name for s in complex_}
        rest = [s for s in pool if s.name not in taken] or pool
        chosen = sorted(rest, key=lambda s: (-s.spread, s.name))
    # round-robin over photos so a small count is not all one photograph
    by_photo: dict[str, list[Sample]] = {}
    for s in chosen:
        by_photo.setdefault(s.name.split(":")[0], []).append(s)
    ordered: list[Sample] = []
    while any(by_photo.values()):
        for key in list(by_photo):
            if by_photo[key]:
                ordered.append(by_photo[key].pop(0))
    out = ordered[:count]
    k = 1
    while len(out) < count and k < 8:  # not enough distinct crops: flips and rotations of them
        out += [_transformed(s, k) for s in ordered][: count - len(out)]
        k += 1
    if len(out) < count:
        raise ValueError(f"only {len(out)} {input_type} crops exist at {px} px, {count} asked")
    return out


def image(px: int, index: int = 0) -> np.ndarray:
    """One deterministic photo crop at ``px`` (latency cases): crop ``index`` of the pool, cycling."""
    pool = crops(px)
    return pool[index % len(pool)].pixels
