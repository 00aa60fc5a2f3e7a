"""Decoding, validating and encoding images: every bad input is refused by name before it costs memory.

A decode checks the header first (format, size) and refuses a zero-sized image, an image over the
pixel limit (a 20,000 x 20,000 upload is refused from its header, never decoded) and a format outside
PNG, JPEG and WebP; then it decodes fully, so a truncated or corrupt file fails here, not later.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import TYPE_CHECKING

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
        raise ImageError(ErrorCode.UNSUPPORTED_FORMAT,
                         f"{what}: not an image in a known format (png, jpeg, webp)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"{what}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's truncated / broken-stream errors
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: corrupt or truncated image: {exc}") from None


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
            batch = images.read(inp.ref, verify=True)
        except ValueError as exc:
            raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: {exc}") from None
        return check_array(batch[inp.index], what=what)
    try:
        data = base64.b64decode(inp.encoded_b64 or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(ErrorCode.IMAGE_INVALID, f"{what}: encoded_b64 is not valid base64: {exc}") from None
    return decode(data, what=what)
