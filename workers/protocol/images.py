"""Images between processes through shared memory, not JSON (the spec's zero-copy handoff).

The producer writes a uint8 array into a named POSIX shared-memory segment and sends only an
``ImageRef`` (name, shape, per-image sha256) in the JSON frame. The consumer attaches, copies
out, and, when it owns the handoff (``take``), unlinks the segment. Producers keep a ledger of
segments not yet taken, so a worker can unlink them on shutdown: nothing is left in /dev/shm.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from multiprocessing import resource_tracker, shared_memory
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:  # numpy is imported where pixels are handled: the protocol schema (ImageRef) is
    import numpy as np  # loaded by every worker at start-up, and numpy costs ~90 ms there

MAX_IMAGE_BYTES = 1 << 31  # 2 GiB: a 20,000 x 20,000 RGB batch is refused by name, not attempted


class ImageRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    shm: str  # segment name (without the leading slash)
    shape: list[int]  # [batch, height, width, channels]
    dtype: str = "uint8"
    sha256: list[str] = []  # one digest per image of the batch, over its raw bytes


def _digests(array: np.ndarray) -> list[str]:
    import numpy as np

    return [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in array]


def image_digests(array: np.ndarray) -> list[str]:
    """Per-image sha256 of a (batch, h, w, c) uint8 array: what determinism checks compare."""
    return _digests(array)


def _validate(array: np.ndarray) -> None:
    import numpy as np

    if array.dtype != np.uint8:
        raise ValueError(f"image dtype must be uint8, got {array.dtype}")
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(f"image shape must be (batch, height, width, 1|3|4) with no zero side, got {array.shape}")
    if array.nbytes > MAX_IMAGE_BYTES:
        raise ValueError(f"image of {array.nbytes} bytes exceeds the {MAX_IMAGE_BYTES}-byte handoff limit")


class ShmLedger:
    """Segments this process created and nobody has taken yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()

    def publish(self, array: np.ndarray) -> ImageRef:
        import numpy as np

        _validate(array)
        name = f"hv-{secrets.token_hex(8)}"
        seg = shared_memory.SharedMemory(name=name, create=True, size=array.nbytes)
        # Python 3.11's resource tracker would unlink it when this process exits, or warn when
        # the consumer unlinks it first: the ledger owns the lifetime instead.
        resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
        try:
            np.ndarray(array.shape, np.uint8, buffer=seg.buf)[...] = array
        finally:
            seg.close()
        with self._lock:
            self._names.add(name)
        return ImageRef(shm=name, shape=list(array.shape), sha256=_digests(array))

    def forget(self, name: str) -> None:
        with self._lock:
            self._names.discard(name)

    def outstanding(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def unlink_all(self) -> int:
        """Unlink every segment not taken (shutdown); returns how many there were."""
        with self._lock:
            names, self._names = self._names, set()
        for name in names:
            _unlink(name)
        return len(names)


def _unlink(name: str) -> bool:
    try:
        seg = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return False
    seg.close()
    seg.unlink()  # also drops the tracker registration the attach made (Python 3.11)
    return True


def read(ref: ImageRef, *, verify: bool = True, unlink: bool = False) -> np.ndarray:
    """Copy an image out of its segment; ``verify`` checks the per-image digests."""
    import numpy as np

    if ref.dtype != "uint8":
        raise ValueError(f"image {ref.shm}: dtype {ref.dtype!r} is not supported (uint8 only)")
    shape = tuple(ref.shape)
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise ValueError(f"image {ref.shm}: shape {list(shape)} must be 4 positive sides")
    try:
        seg = shared_memory.SharedMemory(name=ref.shm)
    except FileNotFoundError:
        raise ValueError(f"image {ref.shm}: no such shared-memory segment (already taken or never made)") from None
    if not unlink:  # unlink() drops the registration itself; dropping it twice upsets the tracker
        resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
    try:
        need = int(np.prod(shape))
        if seg.size < need:
            raise ValueError(f"image {ref.shm}: segment holds {seg.size} bytes, shape {list(shape)} needs {need}")
        out = np.ndarray(shape, np.uint8, buffer=seg.buf).copy()
    finally:
        seg.close()
        if unlink:
            seg.unlink()
    if verify and ref.sha256 and _digests(out) != list(ref.sha256):
        raise ValueError(f"image {ref.shm}: content does not match its sha256 (changed in transit)")
    return out


def read_one(ref: ImageRef, index: int, *, verify: bool = True) -> np.ndarray:
    """Copy image ``index`` of a batch out of its segment (only that image: reading item i of an
    n-image batch costs one image, not n), checking that image's digest."""
    import numpy as np

    shape = tuple(ref.shape)
    if ref.dtype != "uint8" or len(shape) != 4 or any(d <= 0 for d in shape):
        raise ValueError(f"image {ref.shm}: dtype {ref.dtype!r} / shape {list(shape)} not a uint8 batch")
    if not 0 <= index < shape[0]:
        raise ValueError(f"image {ref.shm}: index {index} outside the batch of {shape[0]}")
    try:
        seg = shared_memory.SharedMemory(name=ref.shm)
    except FileNotFoundError:
        raise ValueError(f"image {ref.shm}: no such shared-memory segment (already taken or never made)") from None
    resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
    try:
        if seg.size < int(np.prod(shape)):
            raise ValueError(f"image {ref.shm}: segment holds {seg.size} bytes, shape {list(shape)} needs more")
        out = np.ndarray(shape, np.uint8, buffer=seg.buf)[index].copy()
    finally:
        seg.close()
    if verify and ref.sha256 and _digests(out[None]) != [ref.sha256[index]]:
        raise ValueError(f"image {ref.shm}[{index}]: content does not match its sha256 (changed in transit)")
    return out


def take(ref: ImageRef, *, verify: bool = True) -> np.ndarray:
    """Read and unlink: the consumer owns the handoff."""
    return read(ref, verify=verify, unlink=True)


class ImageInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One image handed to a postprocessing or safety operation: exactly one of ``ref`` (pixels in
    shared memory, e.g. an inference output, read in place: no copy through the host) or ``encoded_b64``
    (a PNG, JPEG or WebP file inline, base64; what a user uploads, possibly corrupt)."""

    ref: ImageRef | None = None
    index: int = 0  # which image of ``ref``'s batch
    encoded_b64: str | None = None
