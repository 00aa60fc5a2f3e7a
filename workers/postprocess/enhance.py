"""Image enhancement at three levels, each an algorithm of its own:

- ``ai`` (model-based): Real-ESRGAN super-resolves the image (x2 compact model for quality "standard",
  the x4plus photo model for "highest"), then Lanczos brings it back to its own size: the network's
  restoration (denoising, deblurring, deblocking) at the original resolution.
- ``standard`` (classical, adaptive): measure the image, then treat what was found: JPEG blockiness on
  the 8-px grid -> total-variation deblocking; noise (Immerkaer's estimate) -> non-local means; blur
  (scikit-image's blur_effect) -> unsharp mask; a washed-out histogram -> a mild contrast stretch. A clean
  image is left as it is (sharpening it would only lower its fidelity).
- ``basic``: a fixed mild unsharp mask and the same contrast stretch (the lowest level served).

The detector thresholds were set from the measures of clean and degraded photo crops (samples.py):
clean crops' blockiness stays under 1.25, JPEG q20 crops are above 1.3; noise sigma 15 reads 8+.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workers.postprocess.upscale import UpscaleBackend, upscale

LEVELS = ("ai", "standard", "basic")
BLOCKY_ABOVE = 1.3  # mean step across 8-px block borders over the mean step anywhere
NOISY_ABOVE = 6.0  # estimated noise sigma, 0..255 units
BLURRY_ABOVE = 0.4  # skimage.measure.blur_effect, 0 sharp .. 1 blurred
MAX_CONTRAST_GAIN = 1.25
LOW_CONTRAST_BELOW = 64.0  # washed out: the 1st..99th luminance percentiles span under a quarter of the range
_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


@dataclass
class Enhanced:
    pixels: np.ndarray
    level: str
    steps: list[str] = field(default_factory=list)  # what was applied, in order
    measures: dict[str, float] = field(default_factory=dict)
    tiles: int = 0
    oom_events: int = 0


def _grey(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32).mean(axis=2)


def noise_sigma(pixels: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (1996), 0..255 units."""
    from scipy.ndimage import convolve

    g = _grey(pixels)
    h, w = g.shape
    if h < 3 or w < 3:
        return 0.0
    total = float(np.abs(convolve(g, _LAPLACE))[1:-1, 1:-1].sum())
    return float(np.sqrt(np.pi / 2) * total / (6 * (w - 2) * (h - 2)))


def blockiness(pixels: np.ndarray) -> float:
    """Mean luminance step across 8-px block borders over the mean step anywhere (1.0: no grid)."""
    g = _grey(pixels)
    if min(g.shape) < 16:
        return 1.0
    dx, dy = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    return float((dx[:, 7::8].mean() / (dx.mean() + 1e-6) + dy[7::8, :].mean() / (dy.mean() + 1e-6)) / 2)


def blur(pixels: np.ndarray) -> float:
    from skimage.measure import blur_effect

    if min(pixels.shape[:2]) < 8:
        return 0.0
    return float(blur_effect(_grey(pixels)))


def measure(pixels: np.ndarray) -> dict[str, float]:
    g = _grey(pixels)
    lo, hi = np.percentile(g, [1, 99])
    return {"noise_sigma": round(noise_sigma(pixels), 3), "blockiness": round(blockiness(pixels), 3),
            "blur": round(blur(pixels), 3), "contrast_span": round(float(hi - lo), 1)}


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _unsharp(pixels: np.ndarray, radius: float, percent: int, threshold: int) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.UnsharpMask(radius, percent, threshold)))


def _stretch(pixels: np.ndarray) -> np.ndarray:
    """Widen the 1st..99th luminance percentiles around their midpoint, by at most MAX_CONTRAST_GAIN (a
    flat crop of a wall is not a washed-out photo: a full auto-levels would invent contrast in it)."""
    lo, hi = np.percentile(_grey(pixels), [1, 99])
    if hi - lo < 1.0:
        return pixels  # a flat image has no contrast to stretch
    gain = min(MAX_CONTRAST_GAIN, 239.0 / (hi - lo))
    mid = (lo + hi) / 2.0
    return np.clip(np.rint((pixels.astype(np.float32) - mid) * gain + mid), 0, 255).astype(np.uint8)


def enhance_standard(pixels: np.ndarray) -> Enhanced:
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    m = measure(pixels)
    out, steps = pixels, []
    if m["blockiness"] > BLOCKY_ABOVE:
        out = _to_u8(denoise_tv_chambolle(out.astype(np.float32) / 255.0, weight=0.02, channel_axis=-1))
        steps.append("deblock")
    elif m["noise_sigma"] > NOISY_ABOVE:
        s = m["noise_sigma"] / 255.0
        out = _to_u8(denoise_nl_means(out.astype(np.float32) / 255.0, h=0.8 * s, sigma=s, fast_mode=True,
                                      patch_size=5, patch_distance=6, channel_axis=-1))
        steps.append("denoise")
    elif m["blur"] > BLURRY_ABOVE:
        out = _unsharp(out, 2.0, 100, 0)
        steps.append("sharpen")
    if m["contrast_span"] < LOW_CONTRAST_BELOW:
        out = _stretch(out)
        steps.append("contrast")
    return Enhanced(np.ascontiguousarray(out), "standard", steps, m)


def enhance_basic(pixels: np.ndarray) -> Enhanced:
    m = measure(pixels)
    out = _unsharp(pixels, 1.0, 40, 3)
    steps = ["sharpen"]
    if m["contrast_span"] < LOW_CONTRAST_BELOW:
        out = _stretch(out)
        steps.append("contrast")
    return Enhanced(np.ascontiguousarray(out), "basic", steps, m)


def enhance_ai(pixels: np.ndarray, backend: UpscaleBackend, quality: str = "standard", **tiling: object) -> Enhanced:
    """Super-resolve with ``backend`` (x2 for standard, x4plus-backed for highest), Lanczos back down.
    ``tiling``: tile, min_tile, overlap, check, before_tile, as for ``upscale``."""
    from PIL import Image

    factor = 4 if quality == "highest" else 2
    h, w = pixels.shape[:2]
    up = upscale(pixels, factor, quality, backend, **tiling)  # type: ignore[arg-type]
    down = np.asarray(Image.fromarray(up.pixels).resize((w, h), Image.Resampling.LANCZOS))
    return Enhanced(np.ascontiguousarray(down), "ai", [f"super_resolve_x{factor}:{backend.name}", "lanczos_down"],
                    {}, up.tiles, up.oom_events)
