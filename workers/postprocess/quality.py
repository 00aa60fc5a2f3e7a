"""Image quality measures and the degradations the quality cases apply to clean references.

PSNR and SSIM are scikit-image's, over uint8 RGB (data range 255; SSIM averaged over the channels).
Degradations are deterministic for a given seed: Gaussian blur, Gaussian noise, JPEG compression.
"""

from __future__ import annotations

import io

import numpy as np

DEGRADATIONS = ("blur", "noise", "jpeg")
BLUR_SIGMA = 1.5
NOISE_SIGMA = 15.0  # in 0..255 units
JPEG_QUALITY = 20


def _pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype} and {b.dtype}")


def psnr(test: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of ``test`` against ``reference`` (inf when identical)."""
    from skimage.metrics import peak_signal_noise_ratio

    _pair(test, reference)
    if np.array_equal(test, reference):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, test, data_range=255))


def ssim(test: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM of ``test`` against ``reference`` over the RGB channels (1.0 when identical)."""
    from skimage.metrics import structural_similarity

    _pair(test, reference)
    side = min(test.shape[:2])
    win = min(7, side if side % 2 else side - 1)  # skimage needs an odd window no larger than the image
    if win < 3:
        raise ValueError(f"image of {test.shape[1]}x{test.shape[0]} is too small for SSIM (3 px at least)")
    return float(structural_similarity(reference, test, data_range=255, channel_axis=-1, win_size=win))


def resize(pixels: np.ndarray, width: int, height: int, method: str = "bicubic") -> np.ndarray:
    """Plain interpolation (Pillow): bicubic, lanczos, bilinear or nearest."""
    from PIL import Image

    methods = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    if method not in methods:
        raise ValueError(f"unknown resize method {method!r}; known: {sorted(methods)}")
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    return np.asarray(Image.fromarray(pixels).resize((width, height), methods[method]))


def downscale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """The low-resolution input of a super-resolution test: bicubic by ``factor`` (the usual protocol)."""
    h, w = pixels.shape[:2]
    if h % factor or w % factor:
        raise ValueError(f"{w}x{h} is not divisible by {factor}")
    return resize(pixels, w // factor, h // factor, "bicubic")


def degrade(pixels: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A degraded copy of ``pixels``: blur (Gaussian, sigma 1.5), noise (Gaussian, sigma 15) or jpeg (q 20)."""
    if kind == "blur":
        from PIL import Image, ImageFilter

        return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(BLUR_SIGMA)))
    if kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = pixels.astype(np.float32) + rng.normal(0.0, NOISE_SIGMA, pixels.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    raise ValueError(f"unknown degradation {kind!r}; known: {list(DEGRADATIONS)}")
