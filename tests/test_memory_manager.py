"""The memory manager: budgets with real tensors, torch's OOM, pools, pressure without flapping."""

from __future__ import annotations

import pytest
import torch

from workers.runtime.memory import DegradedModeError, MemoryManager
from workers.runtime.pressure import PressureLevel, PressureThresholds, PressureTracker

MiB = 1 << 20


def test_allocation_is_a_real_tensor_accounted_against_the_budget() -> None:
    m = MemoryManager("cpu", 10 * MiB)
    a = m.allocate(3 * MiB, tag="latents")
    t = m.tensor(a.id)
    assert t.numel() == 3 * MiB and t.dtype == torch.uint8 and t.device.type == "cpu"
    assert m.used == 3 * MiB and m.stats()["utilisation"] == pytest.approx(0.3)
    m.free(a.id)
    assert m.used == 0 and m.stats()["live_allocations"] == 0
    with pytest.raises(KeyError, match="no live allocation"):
        m.free(a.id)


def test_over_budget_raises_torch_oom_and_leaves_the_budget_as_it_was() -> None:
    m = MemoryManager("cpu", 10 * MiB)
    m.allocate(6 * MiB)
    before = m.stats()
    with pytest.raises(torch.OutOfMemoryError, match=r"5242880 bytes requested on cpu, 4194304 of the 10485760"):
        m.allocate(5 * MiB)
    after = m.stats()
    assert after["used_bytes"] == before["used_bytes"] and after["live_allocations"] == 1
    assert after["oom_count"] == 1
    with pytest.raises(ValueError, match="> 0"):
        m.allocate(0)
    with pytest.raises(ValueError, match="budget must be > 0"):
        MemoryManager("cpu", 0)


def test_cleanup_hooks_run_before_oom() -> None:
    # Pressure thresholds out of the way: this is the out-of-memory path alone.
    m = MemoryManager("cpu", 10 * MiB, thresholds=PressureThresholds(0.96, 0.98, 0.99, 0.01))
    cache = [m.allocate(2 * MiB, tag="cache") for _ in range(4)]

    def evict(n: int) -> int:
        freed = 0
        while cache and freed < n:
            a = cache.pop(0)
            m.free(a.id)
            freed += a.reserved
        return freed

    m.add_cleanup(evict)
    m.allocate(5 * MiB)  # needs 3 MiB more than free: two cache entries go
    assert len(cache) == 2 and m.used == 9 * MiB


def test_pool_blocks_waste_and_fragmentation_match_hand_computed_values() -> None:
    m = MemoryManager("cpu", 64 * MiB)
    m.add_pool("small", block_bytes=1024, blocks=8)
    assert m.used == 8 * 1024  # the slab is reserved up front
    allocs = [m.allocate(1000, pool="small") for _ in range(8)]
    with pytest.raises(torch.OutOfMemoryError, match="exhausted"):
        m.allocate(10, pool="small")
    for i in (1, 3, 4):  # free blocks 1, 3, 4: free runs of 1 and 2 -> 1 - 2/3
        m.free(allocs[i].id)
    s = m.stats()
    assert s["pools"]["small"]["free_blocks"] == 3
    assert s["pools"]["small"]["fragmentation"] == pytest.approx(1 - 2 / 3)
    assert s["waste"] == pytest.approx(24 / 1024)  # 5 live blocks of 1024 holding 1000 each
    with pytest.raises(ValueError, match="do not fit"):
        m.allocate(2048, pool="small")
    with pytest.raises(KeyError, match="no pool 'big'"):
        m.allocate(10, pool="big")


def test_each_pressure_level_is_announced_once_without_flapping() -> None:
    seen: list[tuple[PressureLevel, PressureLevel]] = []
    t = PressureTracker(PressureThresholds(), lambda old, new, u: seen.append((old, new)))
    for u in (0.5, 0.76, 0.74, 0.76, 0.80, 0.86, 0.84, 0.86, 0.96, 0.94, 0.91, 0.89, 0.6):
        t.update(u)
    assert seen == [
        (PressureLevel.NORMAL, PressureLevel.WARNING),
        (PressureLevel.WARNING, PressureLevel.DEGRADED),
        (PressureLevel.DEGRADED, PressureLevel.EMERGENCY),
        (PressureLevel.EMERGENCY, PressureLevel.DEGRADED),  # at 0.89, below 0.95 - 0.05
        (PressureLevel.DEGRADED, PressureLevel.NORMAL),  # 0.6 is below every exit
    ]
    jump = PressureTracker()
    jump.update(0.97)
    assert jump.level is PressureLevel.EMERGENCY and len(jump.transitions) == 1
    with pytest.raises(ValueError, match="warning < degraded"):
        PressureThresholds(warning=0.9, degraded=0.85)


def test_manager_reports_pressure_as_allocations_cross_thresholds() -> None:
    levels: list[PressureLevel] = []
    m = MemoryManager("cpu", 100 * MiB, on_pressure=lambda old, new, u: levels.append(new))
    ids = [m.allocate(10 * MiB).id for _ in range(9)]  # 90 %
    m.allocate(5 * MiB)  # 95 %
    assert levels == [PressureLevel.WARNING, PressureLevel.DEGRADED, PressureLevel.EMERGENCY]
    m.free_all()
    assert m.pressure.level is PressureLevel.NORMAL and m.used == 0 and len(ids) == 9


def test_pressure_responses_run_once_per_level_entered() -> None:
    m = MemoryManager("cpu", 100 * MiB)
    cache: list = []

    def evict(n: int) -> int:
        freed = 0
        while cache and freed < n:
            a = cache.pop()
            m.free(a.id)
            freed += a.reserved
        return freed

    m.add_cleanup(evict)
    cache += [m.allocate(5 * MiB, tag="cache") for _ in range(2)]
    work = [m.allocate(10 * MiB) for _ in range(6)]  # 70 %
    assert m.responses == []
    work.append(m.allocate(6 * MiB))  # 76 %: WARNING -> proactive cleanup down to the 70 % exit
    assert m.responses == [("proactive_cleanup", 10 * MiB)] and m.used == 66 * MiB
    assert m.pressure.level is PressureLevel.NORMAL  # the cleanup relieved the pressure
    work.append(m.allocate(20 * MiB))  # 86 %, nothing left to evict: DEGRADED holds
    assert m.responses[-2:] == [("proactive_cleanup", 0), ("degraded_mode", 0)]
    assert m.pressure.level is PressureLevel.DEGRADED
    with pytest.raises(DegradedModeError, match="non-critical allocation refused"):
        m.allocate(MiB, critical=False)
    work.append(m.allocate(MiB))  # critical work is still served (87 %)
    cache += [m.allocate(2 * MiB, tag="cache") for _ in range(2)]  # 91 %, still DEGRADED: no new response
    assert len(m.responses) == 3
    work.append(m.allocate(5 * MiB))  # 96 %: EMERGENCY empties every evictable byte
    assert m.responses[-2:] == [("emergency_cleanup", 4 * MiB), ("degraded_mode", 0)] and not cache
    for a in work:
        m.free(a.id)
    assert m.pressure.level is PressureLevel.NORMAL
    m.allocate(MiB, critical=False)  # out of degraded mode: served again
