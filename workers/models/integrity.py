"""Integrity of one model file, decided before anything in it is loaded.

Checks run cheapest first and stop at the first problem: missing, empty, pickle (refused by name
or magic bytes before anything is deserialised), Git-LFS pointer, HTML page, then for
``.safetensors`` names the header is parsed here (never the tensors): length prefix, JSON object,
every entry's dtype/shape/offsets, and where the data ends against the file's size. Other files
(configs) are only sized and hashed. Then the manifest's size, then its sha256: the hash is the
only check that catches a flipped byte inside tensor data, which loads silently otherwise.

``check_file`` reads a file (header first, then the hash streamed); ``check_bytes`` reads an
in-memory buffer (e.g. a shared-memory copy). Both run the same ``_check`` over a reader, and
neither raises for bad content: the answer is a ``FileCheck``. Only bad arguments raise.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

# safetensors' own limit on the JSON header (MAX_HEADER_SIZE in the Rust crate).
MAX_HEADER_BYTES = 100_000_000
# What is sniffed for pickle / LFS / HTML, and usually covers a small model's whole header.
HEAD_BYTES = 4096
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
# Bits per element, as safetensors 0.8 knows them (sub-byte types pack; the total must be whole bytes).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
_U64_MAX = (1 << 64) - 1
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_LFS_MAGIC = b"version https://git-lfs"
_ZIP_MAGIC = b"PK\x03\x04"


class CorruptionKind(StrEnum):
    MISSING = "missing"
    EMPTY = "empty"
    PICKLE = "pickle"
    LFS_POINTER = "lfs_pointer"
    HTML_PAGE = "html_page"
    HEADER_DAMAGED = "header_damaged"
    TRUNCATED = "truncated"
    TRAILING_BYTES = "trailing_bytes"
    SIZE_MISMATCH = "size_mismatch"
    HASH_MISMATCH = "hash_mismatch"
    NOT_SAFETENSORS = "not_safetensors"


@dataclass(frozen=True)
class FileCheck:
    path: str
    ok: bool
    kind: CorruptionKind | None
    detail: str
    bytes_read: int
    seconds: float


class IntegrityError(ValueError):
    """A file failed its check; ``check`` says how."""

    def __init__(self, check: FileCheck) -> None:
        super().__init__(check.detail)
        self.check = check


def require_ok(check: FileCheck) -> FileCheck:
    if not check.ok:
        raise IntegrityError(check)
    return check


@dataclass(frozen=True)
class TensorSpan:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets relative to the data section (after 8 + header_len)
    end: int


@dataclass(frozen=True)
class SafetensorsLayout:
    header_len: int
    data_start: int  # absolute offset of the data section: 8 + header_len
    data_end: int  # absolute offset where the header says the data ends
    tensors: tuple[TensorSpan, ...]


@dataclass(frozen=True)
class Problem:
    kind: CorruptionKind
    detail: str  # without the file name; the caller prefixes it


# --- hashing -------------------------------------------------------------------------------


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    digest = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# --- readers: one interface over a file and a buffer, counting what was read ------------------


class _BufferReader:
    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        self.size = len(self._view)
        self.bytes_read = 0

    def read_at(self, offset: int, n: int) -> bytes:
        chunk = bytes(self._view[offset : offset + n])
        self.bytes_read += len(chunk)
        return chunk

    def sha256(self) -> str:
        self.bytes_read += self.size
        return sha256_bytes(self._view)


class _FileReader:
    def __init__(self, fh: Any, chunk_bytes: int = 1 << 20) -> None:
        self._fh = fh
        self._chunk = chunk_bytes
        self.size = os.fstat(fh.fileno()).st_size
        self.bytes_read = 0

    def read_at(self, offset: int, n: int) -> bytes:
        chunk = os.pread(self._fh.fileno(), n, offset)
        self.bytes_read += len(chunk)
        return chunk

    def sha256(self) -> str:
        digest = hashlib.sha256()
        buf = bytearray(self._chunk)
        view = memoryview(buf)
        self._fh.seek(0)
        while n := self._fh.readinto(buf):
            digest.update(view[:n])
            self.bytes_read += n
        return digest.hexdigest()


# --- classification --------------------------------------------------------------------------


def _is_safetensors_name(name: str) -> bool:
    return name.lower().endswith(".safetensors")


def file_suffix(name: str) -> str:
    """The lowercased suffix of a path's last component ('' when it has none)."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > name.replace("\\", "/").rfind("/") else ""


def _safetensors_shaped(head: bytes, size: int) -> bool:
    """A sane header length prefix: a safetensors file whose prefix happens to start with pickle
    magic (a 640-byte header starts ``80 02 00 00``) is not a pickle, even if its header is
    damaged. Real pickles and torch.save archives do not pass it in practice: their bytes 2..7
    (opcodes, frame length, zip version and flags) put the number far above 100 MB or the size."""
    if len(head) < 8:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= MAX_HEADER_BYTES and 8 + n <= size


def sniff(head: bytes, size: int, name: str) -> Problem | None:
    """Pickle, Git-LFS pointer or HTML page, from the first bytes and the name alone."""
    suffix = file_suffix(name)
    if suffix in PICKLE_SUFFIXES:
        return Problem(CorruptionKind.PICKLE, f"has a pickle suffix {suffix!r}; only safetensors are loaded")
    if not _safetensors_shaped(head, size):
        if head.startswith(_ZIP_MAGIC):
            return Problem(CorruptionKind.PICKLE, "starts with zip magic PK\\x03\\x04 (a torch.save archive); "
                                                  "only safetensors are loaded")
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return Problem(CorruptionKind.PICKLE, f"starts with pickle protocol {head[1]} opcode \\x80\\x0{head[1]}; "
                                                  "only safetensors are loaded")
    if head.startswith(_LFS_MAGIC):
        first = head.split(b"\n", 1)[0].decode("ascii", "replace")
        return Problem(CorruptionKind.LFS_POINTER, f"is a Git-LFS pointer ({first!r}, {size} bytes), "
                                                   "not the file it points to")
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return Problem(CorruptionKind.HTML_PAGE, f"is an HTML page ({size} bytes), e.g. a download error page, "
                                                 "not model data")
    return None


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _is_u64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX


def _entry_problem(key: str, entry: Any) -> str | None:
    """Why one header entry is unusable, or None; checks what safetensors checks."""
    if not isinstance(entry, dict):
        return f"entry {key!r} is a {type(entry).__name__}, not an object"
    missing = [f for f in ("dtype", "shape", "data_offsets") if f not in entry]
    if missing:
        return f"entry {key!r} lacks {', '.join(missing)}"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BITS:
        return f"entry {key!r} has unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        return f"entry {key!r} has shape {shape!r}, expected a list of non-negative integers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
        return f"entry {key!r} has data_offsets {offsets!r}, expected [start, end] non-negative integers"
    start, end = offsets
    if end < start:
        return f"entry {key!r} has data_offsets [{start}, {end}]: end before start"
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        return f"entry {key!r}: {dtype} x {shape} is {bits} bits, not a whole number of bytes"
    if end - start != bits // 8:
        return (f"entry {key!r}: {dtype} x {shape} needs {bits // 8} bytes but data_offsets [{start}, {end}] "
                f"span {end - start}")
    return None


def parse_safetensors(read_at: Callable[[int, int], bytes], size: int,
                      head: bytes = b"") -> SafetensorsLayout | Problem:
    """The header of a safetensors file of ``size`` bytes, without touching tensor data.

    ``head`` is bytes already read from offset 0 (reused when it covers the header)."""
    if size < 8:
        return Problem(CorruptionKind.TRUNCATED, f"is {size} bytes, shorter than the 8-byte header length prefix")
    prefix = head[:8] if len(head) >= 8 else read_at(0, 8)
    (n,) = struct.unpack("<Q", prefix)
    if n < 2 or n > MAX_HEADER_BYTES:
        return Problem(CorruptionKind.HEADER_DAMAGED,
                       f"header length prefix says {n} bytes, expected 2..{MAX_HEADER_BYTES}")
    if 8 + n > size:
        return Problem(CorruptionKind.TRUNCATED,
                       f"header length prefix says {n} bytes, so the file needs at least {8 + n} bytes; found {size}")
    raw = head[8 : 8 + n] if len(head) >= 8 + n else read_at(8, n)
    if len(raw) != n:  # the file shrank under us
        return Problem(CorruptionKind.TRUNCATED, f"header of {n} bytes could only be read as {len(raw)} bytes")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_object_pairs, parse_constant=_no_constant)
        # Python's json takes lone surrogate escapes ("\ud800") that the Rust parser refuses.
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError) as exc:
        return Problem(CorruptionKind.HEADER_DAMAGED, f"header of {n} bytes is not valid JSON: {exc}")
    if not isinstance(header, dict):
        return Problem(CorruptionKind.HEADER_DAMAGED, f"header is a JSON {type(header).__name__}, expected an object")
    meta = header.pop("__metadata__", None)
    if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
        return Problem(CorruptionKind.HEADER_DAMAGED, "header __metadata__ must map strings to strings")
    spans: list[TensorSpan] = []
    for key, entry in header.items():
        why = _entry_problem(key, entry)
        if why is not None:
            return Problem(CorruptionKind.HEADER_DAMAGED, f"header {why}")
        start, end = entry["data_offsets"]
        spans.append(TensorSpan(key, entry["dtype"], tuple(entry["shape"]), start, end))
    # safetensors requires the tensors to tile the data section: sorted, no gap, no overlap.
    spans.sort(key=lambda s: (s.start, s.end))
    cursor = 0
    for span in spans:
        if span.start != cursor:
            what = "overlaps the previous tensor" if span.start < cursor else "leaves a gap after the previous tensor"
            return Problem(CorruptionKind.HEADER_DAMAGED,
                           f"header tensor {span.name!r} starts at {span.start}, expected {cursor}: it {what}")
        cursor = span.end
    data_size = size - 8 - n
    if cursor > data_size:
        return Problem(CorruptionKind.TRUNCATED,
                       f"header says tensor data is {cursor} bytes but only {data_size} follow the header "
                       f"(file is {size} bytes, expected {8 + n + cursor})")
    if cursor < data_size:
        return Problem(CorruptionKind.TRAILING_BYTES,
                       f"has {data_size - cursor} bytes after the tensor data the header describes "
                       f"(file is {size} bytes, expected {8 + n + cursor})")
    return SafetensorsLayout(header_len=n, data_start=8 + n, data_end=8 + n + cursor, tensors=tuple(spans))


def _normalise_expected(expected_sha256: str | None, expected_bytes: int | None) -> str | None:
    if expected_bytes is not None and (isinstance(expected_bytes, bool) or expected_bytes < 0):
        raise ValueError(f"expected_bytes must be a non-negative int or None, got {expected_bytes!r}")
    if expected_sha256 is None:
        return None
    digest = expected_sha256.lower().removeprefix("sha256:")
    if not _SHA256_RE.fullmatch(digest):
        raise ValueError(f"expected_sha256 must be 64 hex digits, got {expected_sha256!r}")
    return digest


def _check(reader: _BufferReader | _FileReader, label: str, expected_sha256: str | None,
           expected_bytes: int | None, verify_hash: bool) -> tuple[CorruptionKind | None, str]:
    size = reader.size
    # A config recorded as 0 bytes may be empty; weights never are.
    if size == 0 and (expected_bytes != 0 or _is_safetensors_name(label)):
        return CorruptionKind.EMPTY, f"{label}: is empty (0 bytes)" + (
            f", expected {expected_bytes} bytes" if expected_bytes else "")
    head = reader.read_at(0, min(size, HEAD_BYTES))
    problem = sniff(head, size, label)
    if problem is None and _is_safetensors_name(label):
        parsed = parse_safetensors(reader.read_at, size, head)
        if isinstance(parsed, Problem):
            problem = parsed
    if problem is not None:
        return problem.kind, f"{label}: {problem.detail}"
    if expected_bytes is not None and size != expected_bytes:
        return CorruptionKind.SIZE_MISMATCH, f"{label}: size is {size} bytes, expected {expected_bytes}"
    if verify_hash and expected_sha256 is not None:
        found = reader.sha256()
        if found != expected_sha256:
            return CorruptionKind.HASH_MISMATCH, (f"{label}: sha256 is {found}, expected {expected_sha256} "
                                                  f"({size} bytes; content changed though its structure is intact)")
    return None, ""


def check_file(path: Path, expected_sha256: str | None = None, expected_bytes: int | None = None,
               *, verify_hash: bool = True) -> FileCheck:
    t0 = time.perf_counter()
    digest = _normalise_expected(expected_sha256, expected_bytes)
    label = str(path)
    kind: CorruptionKind | None
    bytes_read = 0
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; the open itself is what may fail
    except FileNotFoundError:
        kind, detail = CorruptionKind.MISSING, f"{label}: does not exist"
    except IsADirectoryError:
        kind, detail = CorruptionKind.MISSING, f"{label}: is a directory, not a file"
    except OSError as exc:  # unreadable is as unusable as absent; the error says which
        kind, detail = CorruptionKind.MISSING, f"{label}: cannot be opened ({type(exc).__name__}: {exc.strerror})"
    else:
        with fh:
            reader = _FileReader(fh)
            kind, detail = _check(reader, label, digest, expected_bytes, verify_hash)
            bytes_read = reader.bytes_read
    return FileCheck(label, kind is None, kind, detail, bytes_read, time.perf_counter() - t0)


def check_bytes(data: bytes | memoryview, name: str, expected_sha256: str | None = None,
                expected_bytes: int | None = None, *, verify_hash: bool = True) -> FileCheck:
    t0 = time.perf_counter()
    digest = _normalise_expected(expected_sha256, expected_bytes)
    reader = _BufferReader(data)
    kind, detail = _check(reader, name, digest, expected_bytes, verify_hash)
    return FileCheck(name, kind is None, kind, detail, reader.bytes_read, time.perf_counter() - t0)
