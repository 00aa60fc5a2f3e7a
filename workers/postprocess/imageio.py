"""Decoding, validating and encoding images: every bad input is refused by name before it costs memory.

A decode checks the header first (format, size) and refuses a zero-sized image, an image over the
pixel limit (a 20,000 x 20,000 upload is refused from its header, never decoded) and a format outside
PNG, JPEG and WebP; then it decodes fully, so a truncated or corrupt file fails here, not later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.protocol.messages import ErrorCode

if TYPE_CHECKING:
    from workers.protocol.images import ImageInput

FORMATS = ("png", "jpeg", "webp")
_PIL_NAMES = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
MAX_PIXELS = 8192 * 8192  # 64 Mpx: 4x of a 2048 px output still fits; 20,000 x 20,000 does not
MAX_ENCODED_BYTES = 256 << 20


class ImageError(ValueError):
    """A bad image, with the protocol error code that names the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def check_array(pixels: np.ndarray, *, what: str = "image") -> np.ndarray:
    """An (h, w, 3) uint8 array, or ImageError naming what is wrong with it."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: pixels must be a uint8 array")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: shape {pixels.shape} is not (height, width, 1|3|4)")
    h, w = pixels.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: zero-sized image ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"{what}: {w}x{h} is over the {MAX_PIXELS}-pixel limit")
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    return np.ascontiguousarray(pixels)


def decode(data: bytes, *, what: str = "image") -> np.ndarray:
    """PNG/JPEG/WebP bytes -> (h, w, 3) uint8, or ImageError (IMAGE_INVALID, IMAGE_TOO_LARGE,
    UNSUPPORTED_FORMAT) naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: empty file (0 bytes)")
    if len(data) > MAX_ENCODED_BYTES:
        raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"{what}: {len(data)} bytes is over the "
                                                     f"{MAX_ENCODED_BYTES}-byte file limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = _PIL_NAMES.get(img.format or "")
            if fmt is None:
                raise ImageError(ErrorCode.UNSUPPORTED_FORMAT,
                                 f"{what}: format {img.format!r} is not supported (png, jpeg, webp)")
            w, h = img.size
            if w == 0 or h == 0:
                raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: zero-sized image ({w}x{h})")
            if w * h > MAX_PIXELS:
                raise ImageError(ErrorCode.IMAGE_TOO_LARGE,
                                 f"{what}: {w}x{h} is over the {MAX_PIXELS}-pixel limit (refused from its header)")
            img.load()  # a truncated or corrupt body fails here
            return check_array(np.asarray(img.convert("RGB")), what=what)
    except ImageError:
        raise
    except UnidentifiedImageError:
        known, size = sniff(data), _png_size(data)
        if size is not None and 0 in size:  # PIL refuses to open these at all: name the real problem
            raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: zero-sized image ({size[0]}x{size[1]})") from None
        if known:  # the signature of a supported format, then nothing PIL can read: corrupt, not foreign
            raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: corrupt {known} file (its header cannot be "
                                                      "read)") from None
        foreign = next((name for magic, name in _FOREIGN if data.startswith(magic)), "")
        named = f"format {foreign} is not supported" if foreign else "not an image in a known format"
        raise ImageError(ErrorCode.UNSUPPORTED_FORMAT, f"{what}: {named} (png, jpeg, webp)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        size = _png_size(data)
        dims = f"{size[0]}x{size[1]} is " if size else ""
        raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"{what}: {dims}over the {MAX_PIXELS}-pixel limit (refused "
                                                    f"from its header: {exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's truncated / broken-stream errors
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: corrupt or truncated image: {exc}") from None


_FOREIGN = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
            (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"8BPS", "PSD"))


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def sniff(data: bytes) -> str:
    """The supported format whose signature ``data`` starts with, or ""."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return ""


def encode(pixels: np.ndarray, fmt: str, *, quality: int = 95) -> bytes:
    """(h, w, 3) uint8 -> file bytes in ``fmt`` (png, jpeg, webp); lossless for png."""
    from PIL import Image

    fmt = fmt.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in FORMATS:
        raise ImageError(ErrorCode.UNSUPPORTED_FORMAT, f"format {fmt!r} is not supported (png, jpeg, webp)")
    if not 1 <= quality <= 100:
        raise ImageError(ErrorCode.IMAGE_INVALID, f"quality must be 1..100, got {quality}")
    pixels = check_array(pixels)
    buf = io.BytesIO()
    options = {"png": {"compress_level": 1}, "jpeg": {"quality": quality}, "webp": {"quality": quality}}[fmt]
    Image.fromarray(pixels).save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


def load_input(inp: ImageInput, *, what: str = "image") -> np.ndarray:
    """The pixels of an ImageInput: read from shared memory in place (digest verified) or decoded."""
    from workers.protocol import images

    if (inp.ref is None) == (inp.encoded_b64 is None):
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: give exactly one of ref and encoded_b64")
    if inp.ref is not None:
        if not 0 <= inp.index < (inp.ref.shape[0] if inp.ref.shape else 0):
            raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: index {inp.index} outside the batch of "
                                                       f"{inp.ref.shape[0] if inp.ref.shape else 0}")
        try:
            pixels = images.read_one(inp.ref, inp.index, verify=True)
        except ValueError as exc:
            raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: {exc}") from None
        return check_array(pixels, what=what)
    try:
        data = base64.b64decode(inp.encoded_b64 or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: encoded_b64 is not valid base64: {exc}") from None
    return decode(data, what=what)


# ---- reading an input in place -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSource:
    source: str  # shm | inline
    shm: str  # the segment read ("" inline)
    in_place: bool  # the pixels are a view of the producer's segment: no copy was made to read them
    sha256: str  # of the (h, w, c) pixels as read


@dataclass
class OpenedInput:
    """Pass ``pixels`` on without binding it to a name that outlives the ``with``: it is cleared on exit,
    so the mapping it views can close."""

    pixels: Any
    source: InputSource


_LINGERING: list[Any] = []  # segments whose close waits for the last view of them to go
_LINGER_LOCK = threading.Lock()


def _close(seg: Any) -> None:
    """Close a segment; while views of it are still alive (a traceback holding a frame, say), keep it
    and close it on a later call: closing the mapping under a live view would be a crash."""
    with _LINGER_LOCK:
        pending, _LINGERING[:] = [*_LINGERING, seg], []
        for s in pending:
            try:
                s.close()
            except BufferError:
                _LINGERING.append(s)


def lingering() -> int:
    """Segments still mapped because a view of them was alive at close (should drop back to 0)."""
    with _LINGER_LOCK:
        return len(_LINGERING)


@contextmanager
def open_input(inp: ImageInput, *, what: str = "image", take: bool = False) -> Iterator[OpenedInput]:
    """The pixels of an ImageInput and where they came from. A shared-memory ref is mapped and read in
    place (a read-only view of the producer's segment, its digest verified), valid inside the ``with``
    only: copy what must outlive it. ``take`` unlinks the segment afterwards (the consumer owns it)."""
    from multiprocessing import resource_tracker, shared_memory

    if inp.ref is None or inp.encoded_b64 is not None:
        pixels = load_input(inp, what=what)
        yield OpenedInput(pixels, InputSource("inline", "", False, hashlib.sha256(pixels.tobytes()).hexdigest()))
        return
    ref = inp.ref
    shape = tuple(ref.shape)
    if ref.dtype != "uint8":
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: dtype {ref.dtype!r} is not supported (uint8 only)")
    if len(shape) != 4 or any(d <= 0 for d in shape) or shape[3] not in (1, 3, 4):
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: shape {list(shape)} is not (batch, height, width, 1|3|4)")
    if not 0 <= inp.index < shape[0]:
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: index {inp.index} outside the batch of {shape[0]}")
    if shape[1] * shape[2] > MAX_PIXELS:
        raise ImageError(ErrorCode.IMAGE_TOO_LARGE,
                         f"{what}: {shape[2]}x{shape[1]} is over the {MAX_PIXELS}-pixel limit")
    try:
        seg = shared_memory.SharedMemory(name=ref.shm)
    except FileNotFoundError:
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: no shared-memory segment {ref.shm!r} (already taken "
                                                  f"or never made)") from None
    resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
    opened = OpenedInput(None, InputSource("shm", ref.shm, True, ""))
    try:
        need = int(np.prod(shape))
        if seg.size < need:
            raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: segment {ref.shm} holds {seg.size} bytes, shape "
                                                      f"{list(shape)} needs {need}")
        view = np.ndarray(shape, np.uint8, buffer=seg.buf)[inp.index]
        view.flags.writeable = False  # the producer's bytes: never written by a consumer
        digest = hashlib.sha256(view).hexdigest()
        if ref.sha256 and (len(ref.sha256) <= inp.index or ref.sha256[inp.index] != digest):
            raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: segment {ref.shm} image {inp.index} does not match "
                                                      "its sha256 (changed in transit)")
        opened.pixels = check_array(view, what=what)
        opened.source = InputSource("shm", ref.shm, True, digest)
        view = None
        yield opened
    finally:
        opened.pixels = view = None  # drop the views before closing the mapping they point into
        _close(seg)
        if take:
            try:
                shared_memory.SharedMemory(name=ref.shm).unlink()
            except FileNotFoundError:
                pass  # taken by someone else meanwhile: the goal holds
