"""Corruption injectors for failure tests and runners: damage a model file in place, or a buffer.

Each corruption is planned once from the original's size and bytes (seeded, so a run can be
repeated) and then applied either to a buffer (``corrupt_bytes``) or to the file itself
(``corrupt_file``: same inode, only the bytes concerned are written, as real damage would be).
Both give the same bytes for the same input and seed.

Severities as the spec names them: FLIP_BIT is minor (one bit in tensor data: only the sha256
catches it), TENSOR_ZERO significant (one tensor zeroed), ALL_BYTES complete.
``expected_kind`` says what ``integrity.check_*`` must report for each.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from workers.models.integrity import (
    PICKLE_SUFFIXES,
    CorruptionKind,
    Problem,
    SafetensorsLayout,
    file_suffix,
    parse_safetensors,
    sha256_bytes,
    sha256_file,
)

_FILL_CHUNK = 1 << 20
_HEADER_RUN = 8  # bytes zeroed inside the JSON header: NUL is invalid anywhere in JSON text


class Corruption(StrEnum):
    TRUNCATE = "truncate"
    HEADER = "header"
    LFS_POINTER = "lfs_pointer"
    HTML_PAGE = "html_page"
    FLIP_BIT = "flip_bit"
    TENSOR_ZERO = "tensor_zero"
    ALL_BYTES = "all_bytes"
    EMPTY = "empty"
    TRAILING = "trailing"


@dataclass(frozen=True)
class CorruptionReport:
    path: str
    corruption: Corruption
    offset: int | None  # first byte changed, cut or appended at; None when the whole file is replaced
    bytes_changed: int  # bytes that differ, were cut off or were appended; a replacement counts the larger size
    detail: str


_HTML_PAGES = (
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>502 Bad Gateway</title></head>\n"
    "<body>\n<center><h1>502 Bad Gateway</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n",
    "\n\n<!doctype html>\n<html class=\"\">\n<head>\n  <meta charset=\"utf-8\" />\n"
    "  <title>Hugging Face - Repository not found</title>\n</head>\n<body>\n"
    "  <h1>404</h1>\n  <p>Sorry, we can't find the page you are looking for.</p>\n</body>\n</html>\n",
    "<html><head><title>403 Forbidden</title></head>\r\n<body>\r\n<h1>Forbidden</h1>\r\n"
    "<p>You don't have permission to access this resource.</p>\r\n</body></html>\r\n",
)


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _coerce(corruption: Corruption | str) -> Corruption:
    try:
        return Corruption(corruption)
    except ValueError:
        allowed = ", ".join(c.value for c in Corruption)
        raise ValueError(f"unknown corruption {corruption!r}; allowed: {allowed}") from None


def expected_kind(corruption: Corruption | str, name: str) -> set[CorruptionKind]:
    """The kinds ``check_file``/``check_bytes`` may report for ``corruption`` applied to a file
    named ``name``, given its manifest size and sha256. Sets of two say which expectation
    decides: a config cut short is a SIZE_MISMATCH with the size, a HASH_MISMATCH with only the
    hash; random bytes open with pickle magic about once in 16,000 seeds."""
    c = _coerce(corruption)
    suffix = file_suffix(name)
    if c is Corruption.EMPTY:
        return {CorruptionKind.EMPTY}
    if suffix in PICKLE_SUFFIXES:  # refused by name before any content is looked at
        return {CorruptionKind.PICKLE}
    if c is Corruption.LFS_POINTER:
        return {CorruptionKind.LFS_POINTER}
    if c is Corruption.HTML_PAGE:
        return {CorruptionKind.HTML_PAGE}
    if c in (Corruption.FLIP_BIT, Corruption.TENSOR_ZERO):
        if c is Corruption.TENSOR_ZERO and suffix != ".safetensors":
            raise ValueError(f"{name}: {c.value} needs a .safetensors file (it zeroes one tensor)")
        return {CorruptionKind.HASH_MISMATCH}
    if suffix == ".safetensors":
        return {
            Corruption.TRUNCATE: {CorruptionKind.TRUNCATED},
            Corruption.HEADER: {CorruptionKind.HEADER_DAMAGED},
            Corruption.TRAILING: {CorruptionKind.TRAILING_BYTES},
            Corruption.ALL_BYTES: {CorruptionKind.HEADER_DAMAGED, CorruptionKind.TRUNCATED, CorruptionKind.PICKLE},
        }[c]
    if c is Corruption.HEADER:
        raise ValueError(f"{name}: {c.value} needs a .safetensors file (it damages the JSON header)")
    if c is Corruption.ALL_BYTES:
        return {CorruptionKind.HASH_MISMATCH, CorruptionKind.PICKLE}
    return {CorruptionKind.SIZE_MISMATCH, CorruptionKind.HASH_MISMATCH}  # TRUNCATE, TRAILING


# --- planning ----------------------------------------------------------------------------------


@dataclass
class _Plan:
    offset: int | None
    detail: str
    bytes_changed: int = 0
    truncate_to: int | None = None
    writes: list[tuple[int, bytes]] = field(default_factory=list)  # applied after truncate_to
    append: bytes = b""
    replace: bytes | None = None
    random_fill: bool = False  # ALL_BYTES: bytes_changed is counted while filling


def _random_chunk(seed: int, index: int, n: int) -> bytes:
    # Per-chunk streams, so a file filled chunk by chunk equals a buffer filled at once.
    return random.Random(f"all_bytes:{seed}:{index}").randbytes(n)


def _layout(what: Corruption, name: str, size: int, read_at: Callable[[int, int], bytes]) -> SafetensorsLayout:
    if file_suffix(name) != ".safetensors":
        raise ValueError(f"{name}: {what.value} needs a .safetensors file, got suffix {file_suffix(name)!r}")
    parsed = parse_safetensors(read_at, size)
    if isinstance(parsed, Problem):
        raise ValueError(f"{name}: cannot place {what.value}: the file is already damaged ({parsed.kind}: "
                         f"{parsed.detail})")
    return parsed


def _plan(c: Corruption, name: str, size: int, read_at: Callable[[int, int], bytes],
          sha256: Callable[[], str], seed: int, fraction: float) -> _Plan:
    rng = random.Random(f"{c.value}:{seed}")
    if c is Corruption.EMPTY:
        return _Plan(0, f"{name}: truncated to 0 bytes (was {size})", size, truncate_to=0)
    if c is Corruption.TRAILING:
        junk = rng.randbytes(rng.randint(16, 1024))
        return _Plan(size, f"{name}: appended {len(junk)} junk bytes after byte {size}", len(junk), append=junk)
    if c is Corruption.LFS_POINTER:
        text = _lfs_pointer(sha256(), size)
        return _Plan(None, f"{name}: replaced by a {len(text)}-byte Git-LFS pointer to the {size}-byte original",
                     max(size, len(text)), replace=text)
    if c is Corruption.HTML_PAGE:
        page = rng.choice(_HTML_PAGES).encode()
        title = page.split(b"<title>")[1].split(b"</title>")[0].decode()
        return _Plan(None, f"{name}: replaced by a {len(page)}-byte HTML page ({title!r})",
                     max(size, len(page)), replace=page)
    if size == 0:
        raise ValueError(f"{name}: is empty; {c.value} needs content to damage")
    if c is Corruption.TRUNCATE:
        if size < 2:
            raise ValueError(f"{name}: is {size} byte(s); truncate needs at least 2 to keep part of it")
        keep = min(size - 1, max(1, int(size * fraction)))
        return _Plan(keep, f"{name}: truncated to {keep} of {size} bytes (fraction {fraction})", size - keep,
                     truncate_to=keep)
    if c is Corruption.ALL_BYTES:
        return _Plan(0, f"{name}: all {size} bytes overwritten with seeded random bytes (seed {seed})",
                     random_fill=True)
    if c is Corruption.FLIP_BIT:
        if file_suffix(name) == ".safetensors":
            layout = _layout(c, name, size, read_at)
            lo, hi = layout.data_start, layout.data_end
            if hi <= lo:
                raise ValueError(f"{name}: has no tensor data (header of {layout.header_len} bytes, data section "
                                 f"empty); flip_bit needs at least one byte after the header")
            where = "tensor data"
        else:
            lo, hi, where = 0, size, "file"
        pos, bit = rng.randrange(lo, hi), rng.randrange(8)
        old = read_at(pos, 1)[0]
        return _Plan(pos, f"{name}: flipped bit {bit} of byte {pos} ({old:#04x} -> {old ^ (1 << bit):#04x}) in the "
                          f"{where} [{lo}, {hi})", 1, writes=[(pos, bytes([old ^ (1 << bit)]))])
    if c is Corruption.HEADER:
        layout = _layout(c, name, size, read_at)
        start = rng.randrange(8, layout.data_start)
        end = min(start + _HEADER_RUN, layout.data_start)
        return _Plan(start, f"{name}: zeroed bytes [{start}, {end}) of the {layout.header_len}-byte JSON header",
                     end - start, writes=[(start, bytes(end - start))])
    # TENSOR_ZERO: a tensor that is not already all zeros, or nothing would change.
    layout = _layout(c, name, size, read_at)
    candidates = [t for t in layout.tensors if t.end > t.start]
    rng.shuffle(candidates)
    for t in candidates:
        lo, hi = layout.data_start + t.start, layout.data_start + t.end
        nonzero = int(np.count_nonzero(np.frombuffer(read_at(lo, hi - lo), dtype=np.uint8)))
        if nonzero:
            return _Plan(lo, f"{name}: zeroed tensor {t.name!r} ({t.dtype} x {list(t.shape)}, bytes [{lo}, {hi}), "
                             f"{nonzero} of them nonzero)", nonzero, writes=[(lo, bytes(hi - lo))])
    raise ValueError(f"{name}: tensor_zero needs a tensor with a nonzero byte; all {len(layout.tensors)} are "
                     "empty or already zero")


def _validate_args(seed: int, fraction: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not (isinstance(fraction, int | float) and 0 < fraction < 1):
        raise ValueError(f"fraction must be a number strictly between 0 and 1, got {fraction!r}")


def _diff(a: bytes | memoryview, b: bytes | memoryview) -> int:
    return int(np.count_nonzero(np.frombuffer(a, dtype=np.uint8) != np.frombuffer(b, dtype=np.uint8)))


# --- applying ----------------------------------------------------------------------------------


def corrupt_bytes(data: bytes, corruption: Corruption | str, *, seed: int = 0, fraction: float = 0.5,
                  name: str = "x.safetensors") -> tuple[bytes, CorruptionReport]:
    c = _coerce(corruption)
    _validate_args(seed, fraction)
    view = memoryview(data)
    plan = _plan(c, name, len(view), lambda off, n: bytes(view[off : off + n]), lambda: sha256_bytes(view),
                 seed, fraction)
    if plan.replace is not None:
        out = plan.replace
    elif plan.random_fill:
        out = b"".join(_random_chunk(seed, i, min(_FILL_CHUNK, len(view) - off))
                       for i, off in enumerate(range(0, len(view), _FILL_CHUNK)))
        plan.bytes_changed = _diff(view, out)
    else:
        buf = bytearray(view if plan.truncate_to is None else view[: plan.truncate_to])
        for off, new in plan.writes:
            buf[off : off + len(new)] = new
        out = bytes(buf + plan.append)
    return out, CorruptionReport(name, c, plan.offset, plan.bytes_changed, plan.detail)


def corrupt_file(path: Path, corruption: Corruption | str, *, seed: int = 0,
                 fraction: float = 0.5) -> CorruptionReport:
    """Damage ``path`` in place (same inode; only the bytes concerned are written)."""
    c = _coerce(corruption)
    _validate_args(seed, fraction)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: is not an existing regular file; nothing to corrupt")
    with open(path, "r+b") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        plan = _plan(c, str(path), size, lambda off, n: os.pread(fd, n, off), lambda: sha256_file(path), seed,
                     fraction)
        if plan.replace is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, plan.replace, 0)
        elif plan.random_fill:
            changed = 0
            for i, off in enumerate(range(0, size, _FILL_CHUNK)):
                new = _random_chunk(seed, i, min(_FILL_CHUNK, size - off))
                changed += _diff(os.pread(fd, len(new), off), new)
                os.pwrite(fd, new, off)
            plan.bytes_changed = changed
        else:
            if plan.truncate_to is not None:
                os.ftruncate(fd, plan.truncate_to)
            for off, new in plan.writes:
                os.pwrite(fd, new, off)
            if plan.append:
                os.pwrite(fd, plan.append, size)
    return CorruptionReport(str(path), c, plan.offset, plan.bytes_changed, plan.detail)
