"""Memory pressure (spec 1.4, 3.2): responses once per level entered on real evictable caches, torch's own
OutOfMemoryError with nothing left behind, probes that downgrade, refuse or retry smaller, statistics against a
hand-computed fixture, bad input named; plus two runs against a real worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from hybrid_assets.runners.memory_pressure_failures import _schedule
from workers.host import WorkerClient, WorkerError
from workers.protocol.ops_pressure import BalloonParams, CacheFillParams, PressureConfigureParams, ProbeParams
from workers.runtime import ops_pressure
from workers.runtime.memory import MemoryManager, TensorCache
from workers.runtime.pressure import PressureLevel

MiB = 1 << 20


class _Ctx:
    def check(self) -> None:
        pass


def _worker(budget: int = 100 * MiB) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The pressure handlers on a stand-in server that keeps the status events it is sent."""
    sent: list[dict[str, Any]] = []
    server = SimpleNamespace(memory={}, send=lambda ev: sent.append(ev.data))
    ops = ops_pressure.work_handlers(server)  # type: ignore[arg-type]
    ops["pressure.configure"](_Ctx(), PressureConfigureParams(budget_bytes=budget))
    return ops, sent


def _responses(sent: list[dict[str, Any]]) -> list[str]:
    return [e["response"] for e in sent if e["kind"] == "response"]


def test_each_level_responds_once_while_usage_oscillates_around_its_threshold() -> None:
    ops, sent = _worker()
    ops["pressure.cache_fill"](_Ctx(), CacheFillParams(cache="latents", entries=4, entry_bytes=MiB))
    ops["pressure.cache_fill"](_Ctx(), CacheFillParams(cache="models", entries=8, entry_bytes=4 * MiB))
    balloon = ops["pressure.balloon"]
    # 76 %: WARNING; the latents go (down to the 70 % exit): 72 %, still WARNING
    r = balloon(_Ctx(), BalloonParams(target_utilisation=0.76, chunk_bytes=MiB))
    assert _responses(sent) == ["proactive_cleanup"] and r.state["caches"]["latents"]["bytes"] == 0
    assert r.state["level"] == "WARNING" and r.state["caches"]["models"]["entries"] == 8
    for u in (0.73, 0.77, 0.72, 0.78, 0.74):  # hovering around 75 % inside the hysteresis band
        balloon(_Ctx(), BalloonParams(target_utilisation=u, chunk_bytes=MiB))
    assert _responses(sent) == ["proactive_cleanup"]
    # 86 %: DEGRADED at 85 %; one idle model unloaded (81 %, still degraded: exit at 80 %), the balloon takes 86 %
    r = balloon(_Ctx(), BalloonParams(target_utilisation=0.86, chunk_bytes=MiB))
    assert _responses(sent)[-1] == "degraded_mode" and r.state["caches"]["models"]["entries"] == 7
    assert r.state["level"] == "DEGRADED" and r.state["utilisation"] == pytest.approx(0.86)
    for u in (0.86, 0.83, 0.87, 0.84):
        balloon(_Ctx(), BalloonParams(target_utilisation=u, chunk_bytes=MiB))
    assert _responses(sent).count("degraded_mode") == 1
    # 96 %: EMERGENCY at 95 %; every model goes (95 -> 67 %, NORMAL), and the balloon holding 96 % takes the room:
    # each level is entered once more and responds once more, with nothing left to free
    r = balloon(_Ctx(), BalloonParams(target_utilisation=0.96, chunk_bytes=MiB))
    assert r.state["own_bytes"] == 0 and r.state["level"] == "EMERGENCY"
    emergency = [e for e in sent if e.get("response") == "emergency_cleanup"]
    assert [e["freed_bytes"] for e in emergency] == [28 * MiB, 0]
    levels = [e["level"] for e in sent if e["kind"] == "level"]
    assert levels == ["WARNING", "DEGRADED", "EMERGENCY", "DEGRADED", "WARNING", "NORMAL",
                      "WARNING", "DEGRADED", "EMERGENCY"]
    # degraded mode asserted on each entry (two) and by the second emergency, which could free nothing
    assert _responses(sent).count("degraded_mode") == 3
    # every response named with what it freed
    assert all("freed_bytes" in e and "utilisation_before" in e for e in sent if e["kind"] == "response")


def test_cache_tiers_warning_keeps_models_emergency_takes_all() -> None:
    m = MemoryManager("cpu", 100 * MiB)
    latents, models = TensorCache(m, "latents"), TensorCache(m, "models", PressureLevel.EMERGENCY)
    for i in range(5):
        latents.put(f"l{i}", MiB)
        models.put(f"m{i}", 10 * MiB)
    assert m.used == 55 * MiB and latents.get("l0") is not None and latents.get("zz") is None
    m.allocate(21 * MiB)  # 76 %: proactive cleanup may not touch models
    assert models.nbytes == 50 * MiB and latents.evictions == 5 and m.responses[-1] == ("proactive_cleanup", 5 * MiB)
    m.allocate(25 * MiB)  # 96 %: emergency
    assert models.nbytes == 0 and models.evicted_bytes == 50 * MiB and m.used == 46 * MiB


def test_over_budget_raises_torch_oom_and_used_bytes_return_to_their_prior_level() -> None:
    m = MemoryManager("cpu", 10 * MiB)
    keep = m.allocate(4 * MiB)
    prior = (m.used, m.stats()["live_allocations"])
    with pytest.raises(torch.OutOfMemoryError, match="7340032 bytes requested"):
        m.allocate(7 * MiB)
    with pytest.raises(torch.OutOfMemoryError):
        m.allocate(11 * MiB)  # larger than the whole budget
    assert (m.used, m.stats()["live_allocations"]) == prior and m.oom_count == 2
    m.free(keep.id)
    assert m.used == 0
    cache = TensorCache(m, "latents")
    cache.put("a", 2 * MiB)
    with pytest.raises(torch.OutOfMemoryError):
        m.allocate(11 * MiB)  # no eviction can make room: the cache is left alone
    assert cache.evictions == 0 and m.used == 2 * MiB
    m.allocate(9 * MiB)  # this one fits once the cache goes: it does
    assert cache.evictions == 1 and m.used == 9 * MiB and ("oom_cleanup", 2 * MiB) in m.responses


def test_probe_degrades_refuses_retries_smaller_or_fails_leaving_nothing_allocated() -> None:
    ops, _sent = _worker(100 * MiB)
    probe = ops["pressure.probe"]
    ok = probe(_Ctx(), ProbeParams(kind="interactive", work_bytes=8 * MiB))
    assert (ok.status, ok.reason, ok.work_bytes, ok.checksum_ok) == ("ok", None, 8 * MiB, True)
    ops["pressure.balloon"](_Ctx(), BalloonParams(size_bytes=88 * MiB))  # DEGRADED, nothing evictable
    bg = probe(_Ctx(), ProbeParams(kind="background"))
    assert (bg.status, bg.reason) == ("refused", "degraded_mode")
    inter = probe(_Ctx(), ProbeParams(kind="interactive", work_bytes=8 * MiB, min_work_bytes=MiB))
    assert (inter.status, inter.reason, inter.work_bytes) == ("downgraded", "degraded_mode", MiB)
    crit = probe(_Ctx(), ProbeParams(kind="critical", work_bytes=32 * MiB, min_work_bytes=2 * MiB))
    assert (crit.status, crit.reason, crit.work_bytes) == ("downgraded", "out_of_memory_retry", 8 * MiB)
    assert crit.attempts == 3 and crit.checksum_ok
    failed = probe(_Ctx(), ProbeParams(kind="critical", work_bytes=32 * MiB, min_work_bytes=16 * MiB))
    assert (failed.status, failed.reason) == ("failed", "out_of_memory") and "OutOfMemoryError" in failed.error
    assert failed.state["used_bytes"] == 88 * MiB and failed.state["live_allocations"] == 88  # the balloon alone


def test_statistics_match_a_hand_computed_fixture() -> None:
    ops, _sent = _worker(64 * MiB)
    ops["pressure.cache_fill"](_Ctx(), CacheFillParams(cache="latents", entries=3, entry_bytes=2 * MiB))
    r = ops["pressure.balloon"](_Ctx(), BalloonParams(size_bytes=10 * MiB, chunk_bytes=4 * MiB))
    assert r.chunks == 3 and r.balloon_bytes == 10 * MiB  # 4 + 4 + 2
    state = r.state
    assert state["used_bytes"] == 16 * MiB and state["own_bytes"] == 6 * MiB
    assert state["utilisation"] == pytest.approx(0.25) and state["live_allocations"] == 6
    # a pool beside it: 8 blocks of 1 KiB, 5 live holding 1000 bytes each, blocks 1, 3, 4 free
    mm = MemoryManager("cpu", 64 * MiB)
    mm.add_pool("small", 1024, 8)
    allocs = [mm.allocate(1000, pool="small") for _ in range(8)]
    for i in (1, 3, 4):
        mm.free(allocs[i].id)
    s = mm.stats()
    assert s["utilisation"] == pytest.approx(8192 / (64 * MiB))
    assert s["waste"] == pytest.approx(1 - 5000 / 5120)
    assert s["pools"]["small"]["fragmentation"] == pytest.approx(1 - 2 / 3)


def test_bad_input_is_named() -> None:
    ops, _sent = _worker(10 * MiB)
    with pytest.raises(ValueError, match="entries and entry_bytes must be > 0"):
        ops["pressure.cache_fill"](_Ctx(), CacheFillParams(cache="models", entries=1, entry_bytes=0))
    with pytest.raises(ValueError, match="exceeds the 10485760-byte budget"):
        ops["pressure.probe"](_Ctx(), ProbeParams(kind="critical", work_bytes=11 * MiB))
    with pytest.raises(ValueError, match="min_work_bytes <= work_bytes"):
        ops["pressure.probe"](_Ctx(), ProbeParams(kind="critical", work_bytes=MiB, min_work_bytes=-1))
    with pytest.raises(ValueError, match="exactly one of"):
        ops["pressure.balloon"](_Ctx(), BalloonParams())
    with pytest.raises(ValueError, match=r"size_bytes must be in \[0, 10485760\]"):
        ops["pressure.balloon"](_Ctx(), BalloonParams(size_bytes=-5))
    with pytest.raises(KeyError, match=r"pressure\.configure first"):
        ops["pressure.state"](_Ctx(), SimpleNamespace(device="cuda:9"))
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ops["pressure.configure"](_Ctx(), PressureConfigureParams(budget_bytes=MiB, device="tpu"))


@pytest.mark.parametrize("pattern", ["steady_consumption", "accelerating_consumption", "stepped_consumption"])
def test_exhaustion_schedules_start_end_and_keep_the_average_rate(pattern: str) -> None:
    rate = 0.05 / 60  # 5 %/min
    span = 0.29 / rate
    assert _schedule(pattern, 0.70, 0.99, rate, 0.0) == pytest.approx(0.70)
    assert _schedule(pattern, 0.70, 0.99, rate, span + 60) == pytest.approx(0.99)
    if pattern == "stepped_consumption":
        assert _schedule(pattern, 0.70, 0.99, rate, 59.9) == pytest.approx(0.70)
        assert _schedule(pattern, 0.70, 0.99, rate, 60.0) == pytest.approx(0.75)
    if pattern == "accelerating_consumption":
        assert _schedule(pattern, 0.70, 0.99, rate, span / 2) == pytest.approx(0.70 + 0.29 / 4)


@pytest.mark.subprocess
def test_worker_returns_to_baseline_after_a_pressure_experiment(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        base = c.request("pressure.configure", {"budget_bytes": 64 * MiB})["state"]
        assert (base["used_bytes"], base["live_allocations"]) == (0, 0)
        c.request("pressure.cache_fill", {"cache": "models", "entries": 4, "entry_bytes": 4 * MiB})
        c.request("pressure.cache_fill", {"cache": "latents", "entries": 4, "entry_bytes": MiB})
        for u in (0.6, 0.76, 0.86, 0.96, 0.99):
            c.request("pressure.balloon", {"target_utilisation": u})
            for kind in ("interactive", "critical", "background"):
                r = c.request("pressure.probe", {"kind": kind, "work_bytes": 2 * MiB, "min_work_bytes": 256 * 1024})
                assert r["status"] in ("ok", "downgraded", "refused") and r["reason"] != "out_of_memory"
        after = c.request("pressure.balloon", {"size_bytes": 0})["state"]
        assert after["balloons"] == {} and after["level"] == "NORMAL"
        assert after["used_bytes"] == after["own_bytes"] == sum(x["bytes"] for x in after["caches"].values())
        end = c.request("pressure.reset", {})["state"]
        assert (end["used_bytes"], end["live_allocations"]) == (0, 0)
        c.request("ping")
        kinds = {(e.data["kind"], e.data["response"] if e.data["kind"] == "response" else e.data["level"])
                 for e in c.status_events}
        assert {("level", "WARNING"), ("level", "DEGRADED"), ("level", "EMERGENCY"), ("level", "NORMAL"),
                ("response", "proactive_cleanup"), ("response", "emergency_cleanup")} <= kinds


@pytest.mark.subprocess
def test_worker_names_bad_pressure_requests_and_keeps_serving(worker_argv: list[str]) -> None:
    with WorkerClient(worker_argv).start() as c:
        with pytest.raises(WorkerError, match=r"pressure\.configure first") as info:
            c.request("pressure.probe", {"kind": "critical"})
        assert info.value.code == "INVALID_PARAMS"
        with pytest.raises(WorkerError, match=r"does not exist|unknown device"):
            c.request("pressure.configure", {"budget_bytes": MiB, "device": "cuda:7"})
        c.request("pressure.configure", {"budget_bytes": 8 * MiB})
        for params, pattern in (({"kind": "critical", "work_bytes": 0}, "min_work_bytes <= work_bytes"),
                                ({"kind": "critical", "work_bytes": 9 * MiB}, "exceeds the 8388608-byte budget"),
                                ({"kind": "sometimes"}, "invalid params")):
            with pytest.raises(WorkerError, match=pattern):
                c.request("pressure.probe", params)
        with pytest.raises(WorkerError, match="size_bytes must be in"):
            c.request("pressure.balloon", {"size_bytes": 9 * MiB})
        over = c.request("memory.allocate", {"sizes": [9 * MiB], "free": False})
        assert over["allocations"][0]["error"].startswith("OutOfMemoryError")
        assert over["stats"]["used_bytes"] == 0
        assert c.request("pressure.probe", {"kind": "critical", "work_bytes": MiB})["status"] == "ok"
