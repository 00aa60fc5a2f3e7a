"""What the worker's allocator holds and hands out, and the 2.2 / 4.2 figures made from it.

The memory manager accounts requests against a budget; the bytes themselves come from the
allocator beneath it: torch's caching allocator on a GPU, the C library's malloc on the CPU
(torch's CPU allocator asks ``posix_memalign`` for every tensor). That allocator is the one
that can hold memory it has not handed out, round requests up and leave holes, so the
figures are read from it:

- cuda: ``torch.cuda.memory_stats`` (reserved, allocated, requested bytes) and the free
  (inactive) blocks of ``torch.cuda.memory_snapshot``;
- cpu (glibc): ``mallinfo2`` (heap held, bytes in use, mmapped chunks), the free chunks that
  ``malloc_info`` lists per bin (their exact largest size: glibc reports the smallest and
  largest chunk of each bin) and each heap's free top, and ``malloc_usable_size`` of each live
  tensor for the bytes granted.

The statistics are pure functions so that tests can check them against hand-computed values.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union


# ---- statistics ----------------------------------------------------------------------------
def idle_ratio(held: int, handed_out: int) -> float:
    """2.2 fragmentation: memory the allocator holds but has not handed out, over what it holds."""
    if held <= 0:
        raise ValueError(f"held bytes must be > 0, got {held}")
    if not 0 <= handed_out <= held:
        raise ValueError(f"handed-out bytes must be in [0, held={held}], got {handed_out}")
    return (held - handed_out) / held


def utilisation_efficiency(held: int, handed_out: int) -> float:
    """4.2 utilisation: bytes held by live allocations over bytes reserved from the device."""
    return 1.0 - idle_ratio(held, handed_out)


def external_fragmentation(free_blocks: Iterable[int]) -> float:
    """4.2 fragmentation: 1 - largest free block / total free bytes (0 when nothing is free)."""
    sizes = [int(b) for b in free_blocks]
    return fragmentation(max(sizes, default=0), sum(sizes))


def fragmentation(largest_free: int, total_free: int) -> float:
    """1 - largest free block / total free bytes, from the two figures an allocator reports."""
    if not 0 <= largest_free <= total_free:
        raise ValueError(f"need 0 <= largest free block ({largest_free}) <= total free ({total_free})")
    return 0.0 if total_free == 0 else 1.0 - largest_free / total_free


def waste_ratio(granted: int, requested: int) -> float:
    """4.2 waste: (bytes granted - bytes requested) / bytes granted over the live allocations."""
    if requested < 0 or granted < requested:
        raise ValueError(f"granted ({granted}) must be >= requested ({requested}) >= 0")
    return 0.0 if granted == 0 else (granted - requested) / granted


def scaling_efficiency(throughput_n: float, n: int, throughput_1: float) -> float:
    """4.2 linear scaling: throughput at n threads / (n x the one-thread throughput)."""
    if n < 1 or throughput_1 <= 0:
        raise ValueError(f"need n >= 1 and a positive one-thread throughput, got n={n}, {throughput_1}")
    return throughput_n / (n * throughput_1)


def interleaved_baselines(points: Sequence[tuple[int, float]]) -> list[tuple[int, float, float]]:
    """For a sweep run as 1, n1, 1, n2, 1, ... (threads, throughput): each n > 1 with the mean
    of the one-thread runs just before and just after it (only the one before if none after),
    so drift over the sweep cancels. Returns (n, throughput_n, baseline)."""
    out = []
    for i, (n, rate) in enumerate(points):
        if n == 1:
            continue
        before = [r for m, r in points[:i] if m == 1][-1:]
        after = [r for m, r in points[i + 1:] if m == 1][:1]
        if not before:
            raise ValueError(f"point {i} ({n} threads) has no one-thread run before it")
        around = before + after
        out.append((n, rate, sum(around) / len(around)))
    return out


def contention_added(latencies: Iterable[float], uncontended: Sequence[float]) -> list[float]:
    """4.2 contention: each contended latency minus the median uncontended latency (same size)."""
    if not uncontended:
        raise ValueError("no uncontended latency to compare with")
    ordered = sorted(uncontended)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return [lat - median for lat in latencies]


# ---- the allocator's view --------------------------------------------------------------------
@dataclass(frozen=True)
class AllocatorView:
    allocator: str  # "glibc" or "torch_cuda"
    held: int  # bytes the allocator holds from the system / device
    handed_out: int  # bytes of it in live allocations
    free_largest: int  # the largest free hole inside what it holds
    free_total: int  # bytes of all free holes
    granted: int  # bytes granted to the given live tensors
    requested: int  # bytes those tensors asked for

    def figures(self) -> dict[str, float]:
        return {
            "idle_ratio": idle_ratio(self.held, self.handed_out),
            "utilisation_efficiency": utilisation_efficiency(self.held, self.handed_out),
            "external_fragmentation": fragmentation(self.free_largest, self.free_total),
            "waste": waste_ratio(self.granted, self.requested),
        }


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


class _Glibc:
    def __init__(self) -> None:
        path = ctypes.util.find_library("c")
        lib = ctypes.CDLL(path) if path else None
        if lib is None or not hasattr(lib, "mallinfo2") or not hasattr(lib, "malloc_info"):
            raise OSError("the C library is not glibc >= 2.33 (no mallinfo2/malloc_info): allocator figures "
                          "cannot be read on this platform")
        lib.mallinfo2.restype = _MallInfo2
        lib.malloc_usable_size.restype = ctypes.c_size_t
        lib.malloc_usable_size.argtypes = [ctypes.c_void_p]
        lib.open_memstream.restype = ctypes.c_void_p
        lib.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
        lib.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.fclose.argtypes = [ctypes.c_void_p]
        lib.free.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def malloc_info(self) -> str:
        buf, size = ctypes.c_char_p(), ctypes.c_size_t()
        stream = self.lib.open_memstream(ctypes.byref(buf), ctypes.byref(size))
        if not stream:
            raise OSError("open_memstream failed")
        try:
            self.lib.malloc_info(0, stream)
        finally:
            self.lib.fclose(stream)
        try:
            return ctypes.string_at(buf, size.value).decode()
        finally:
            self.lib.free(ctypes.cast(buf, ctypes.c_void_p))


_GLIBC: Union[_Glibc, None] = None
_BIN = re.compile(r'<(?:size|unsorted) from="(\d+)" to="(\d+)" total="(\d+)" count="(\d+)"/>')
_TOTAL = re.compile(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"/>')


def free_chunks(malloc_info_xml: str) -> tuple[int, int]:
    """(largest free chunk, total free bytes) over the heaps of a ``malloc_info`` report.

    Per heap, the bins list their chunks' largest size and total; the heap's ``fast`` and
    ``rest`` totals also count its top chunk (the free tail of the heap), which the bins do
    not list, so the top is what the totals hold beyond the bins: a free block like any other."""
    largest = total = 0
    for heap in re.findall(r"<heap nr=\"\d+\">(.*?)</heap>", malloc_info_xml, flags=re.S):
        bins = [(int(hi), int(t)) for _lo, hi, t, count in _BIN.findall(heap) if int(count)]
        heap_free = sum(int(size) for size in _TOTAL.findall(heap))
        binned = sum(t for _, t in bins)
        top = heap_free - binned
        if top < 0:
            raise ValueError(f"malloc_info heap lists {binned} bytes in bins, over its free total {heap_free}")
        largest = max([largest, top, *(hi for hi, _ in bins)])
        total += heap_free
    return largest, total


def _glibc_view(tensors: Sequence[Any]) -> AllocatorView:
    global _GLIBC
    if _GLIBC is None:
        _GLIBC = _Glibc()
    info = _GLIBC.lib.mallinfo2()
    largest, total = free_chunks(_GLIBC.malloc_info())
    granted = sum(int(_GLIBC.lib.malloc_usable_size(t.data_ptr())) for t in tensors)
    requested = sum(int(t.numel() * t.element_size()) for t in tensors)
    held = info.arena + info.hblkhd
    return AllocatorView("glibc", held, info.uordblks + info.hblkhd, largest, total, granted, requested)


def _cuda_view(device: str, tensors: Sequence[Any]) -> AllocatorView:
    import torch

    stats = torch.cuda.memory_stats(device)
    index = torch.device(device).index or 0
    free = [b["size"] for seg in torch.cuda.memory_snapshot() if seg.get("device") == index
            for b in seg["blocks"] if b["state"] == "inactive"]
    allocated = int(stats.get("allocated_bytes.all.current", 0))
    # The caching allocator rounds every request (512-byte blocks and up); it counts what was asked.
    requested = int(stats.get("requested_bytes.all.current", allocated))
    return AllocatorView("torch_cuda", int(stats.get("reserved_bytes.all.current", 0)), allocated,
                         max(free, default=0), sum(free), allocated, requested)


def allocator_view(device: str, tensors: Sequence[Any]) -> AllocatorView:
    """The allocator beneath the manager on ``device``; ``tensors`` are the live allocations
    whose waste is measured (cuda: every live allocation of the process)."""
    if device.startswith("cuda"):
        return _cuda_view(device, tensors)
    return _glibc_view(tensors)
