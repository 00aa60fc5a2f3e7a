"""Allocation latency through the memory manager against a plain ``torch.empty`` of the same size.

For small, medium and large requests, allocations through ``MemoryManager.allocate`` (budget
accounting, pressure tracking, the lock) and bare ``torch.empty`` calls alternate in one loop,
so both see the same machine state; the figures are medians and p90s of each, and the ratio
manager / torch.empty is what the manager's bookkeeping costs on top of the allocator. Pages
are not touched (allocation latency, not page-fault cost). Run::

    .venv/bin/python -m workers.bench.memory [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

from workers.runtime.imports import import_torch
from workers.runtime.memory import MemoryManager

SIZES = {"small_4KiB": 4 << 10, "medium_1MiB": 1 << 20, "large_64MiB": 64 << 20}


@dataclass(frozen=True)
class SizeResult:
    name: str
    nbytes: int
    manager_s: list[float]
    empty_s: list[float]

    @staticmethod
    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def ratio(self, q: float) -> float:
        return self.p(self.manager_s, q) / self.p(self.empty_s, q)


def measure(nbytes: int, rounds: int, name: str = "") -> SizeResult:
    """``rounds`` manager allocations and ``rounds`` torch.empty calls, alternating (each freed
    before the next, so neither side inherits the other's memory)."""
    torch = import_torch()
    m = MemoryManager("cpu", max(nbytes * 4, 64 << 20))
    manager_s: list[float] = []
    empty_s: list[float] = []
    for i in range(rounds):
        for first in ((True, False) if i % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            if first:
                alloc = m.allocate(nbytes)
                manager_s.append(time.perf_counter() - t0)
                m.free(alloc.id)
            else:
                raw = torch.empty(nbytes, dtype=torch.uint8)
                empty_s.append(time.perf_counter() - t0)
                del raw
    if m.used:
        raise RuntimeError(f"the manager still accounts {m.used} bytes after freeing everything")
    return SizeResult(name, nbytes, manager_s, empty_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="allocations per size and side")
    args = parser.parse_args(argv)
    if args.rounds < 10:
        parser.error("--rounds must be at least 10")
    import_torch()
    t0 = time.perf_counter()
    print(f"{'size':<14}{'manager p50':>14}{'empty p50':>12}{'ratio p50':>11}{'manager p90':>14}{'empty p90':>12}"
          f"{'ratio p90':>11}")
    for name, nbytes in SIZES.items():
        measure(nbytes, 20)  # warm-up: allocator caches and the first mmap
        r = measure(nbytes, args.rounds, name)
        mean_ratio = statistics.fmean(r.manager_s) / statistics.fmean(r.empty_s)
        print(f"{name:<14}{r.p(r.manager_s, 0.5) * 1e6:>11.2f} us{r.p(r.empty_s, 0.5) * 1e6:>9.2f} us"
              f"{r.ratio(0.5):>10.2f}x{r.p(r.manager_s, 0.9) * 1e6:>11.2f} us{r.p(r.empty_s, 0.9) * 1e6:>9.2f} us"
              f"{r.ratio(0.9):>10.2f}x  (mean ratio {mean_ratio:.2f}x)")
    print(f"{args.rounds} allocations per size and side, alternating; {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
