"""The model domain in a real worker: corruption never served, cancellation and deadlines free
what they held, concurrent requests on one pipeline stay correct, switching returns memory to
baseline, seeds are bitwise deterministic, and bad input is named while the worker keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from workers.host import WorkerClient, WorkerError
from workers.host.modelcache import HostModelCache
from workers.host.models import ModelHost
from workers.models import generate
from workers.models.corrupt import Corruption, corrupt_file
from workers.models.store import ModelStore
from workers.protocol.images import ShmLedger
from workers.protocol.messages import ErrorCode

pytestmark = pytest.mark.subprocess

T2I = {"model": "tiny-sd-a", "prompt": "a lighthouse at dusk", "steps": 4, "seed": 7, "output": "digest",
       "progress": False}


@pytest.fixture(scope="module")
def built_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worker-models")
    base = "tiny-sd-a"
    generate.build(root, [generate.tiny_sd(base, 1), generate.tiny_sd("tiny-sd-b", 2),
                          generate.ModelSpec("tiny-lora-a", "lora", {"seed": 12, "base": base}, (base,)),
                          generate.ModelSpec("tiny-controlnet-a", "controlnet", {"seed": 11, "base": base}, (base,))])
    return root


@pytest.fixture
def root(built_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(built_root, copy)
    return copy
SLOW_S = 180.0  # a batch of 4 split and tiled on a loaded 2-core machine took over 30 s (a flake, not a fault)


def _shm_names() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(("hv-", "psm_"))}


def test_generation_is_deterministic_progress_is_reported_and_images_leave_by_shared_memory(
        worker_argv: list[str], root: Path) -> None:
    store = ModelStore(root)
    with WorkerClient(worker_argv).start() as c:
        host = ModelHost(c, store)
        host.configure(cache_mib=256)
        host.load("tiny-lora-a")  # its base first
        assert [m["name"] for m in c.request("model.list")["resident"]] == ["tiny-sd-a", "tiny-lora-a"]
        events: list[object] = []
        img, first = host.generate({**T2I, "output": "shm", "progress": True}, on_event=events.append)
        assert img is not None and img.shape == (1, 64, 64, 3) and img.dtype == np.uint8
        assert len(events) == T2I["steps"] and first["steps_done"] == T2I["steps"]
        again = c.request("inference.run", T2I)
        assert again["sha256"] == first["sha256"]  # bitwise identical on CPU
        other_seed = c.request("inference.run", {**T2I, "seed": 8})
        lora = c.request("inference.run", {**T2I, "lora": "tiny-lora-a"})
        lora_off = c.request("inference.run", {**T2I, "lora": "tiny-lora-a", "lora_scale": 0.0})
        assert other_seed["sha256"] != first["sha256"] and lora["sha256"] != first["sha256"]
        assert lora_off["sha256"] == first["sha256"]  # a LoRA at weight 0 is the base, bitwise
        assert c.request("inference.run", T2I)["sha256"] == first["sha256"]  # LoRA off again afterwards
        assert c.request("model.verify", {"name": "tiny-sd-a"})["intact"]  # a LoRA on it is not corruption
        ledger = ShmLedger()
        control = ledger.publish(np.full((1, 64, 64, 3), 128, np.uint8))
        host.load("tiny-controlnet-a")
        controlled = c.request("inference.run", {**T2I, "mode": "controlnet", "control_model": "tiny-controlnet-a",
                                                 "control_image": {"shm": control.shm, "shape": control.shape}})
        i2i = c.request("inference.run", {**T2I, "mode": "image_to_image", "batch": 2,
                                          "init_image": {"shm": control.shm, "shape": control.shape}})
        ledger.unlink_all()
        assert controlled["sha256"] != first["sha256"] and len(i2i["sha256"]) == 2
        assert i2i["steps_done"] == int(T2I["steps"] * 0.75)  # strength runs part of the schedule
        untaken = c.request("inference.run", {**T2I, "output": "shm"})["image"]["shm"]
        assert os.path.exists(f"/dev/shm/{untaken}")
    assert not os.path.exists(f"/dev/shm/{untaken}"), "an image the host never took outlived the worker"
    assert first["image"]["shm"] not in _shm_names()  # taken: unlinked by the host


@pytest.mark.parametrize("corruption", [Corruption.FLIP_BIT, Corruption.TRUNCATE, Corruption.HEADER,
                                        Corruption.LFS_POINTER, Corruption.HTML_PAGE])
def test_each_corruption_is_detected_and_a_good_model_is_served(worker_argv: list[str], root: Path,
                                                                corruption: Corruption) -> None:
    store = ModelStore(root)
    with WorkerClient(worker_argv).start() as c:
        host = ModelHost(c, store)
        host.configure(cache_mib=256)
        host.load("tiny-sd-a")
        reference = c.request("inference.run", T2I)["sha256"]
        host.unload("tiny-sd-a")
        corrupt_file(store.file_path("tiny-sd-a", "unet/diffusion_pytorch_model.safetensors"), corruption, seed=5)
        # repair disabled: refused by name, nothing resident
        host.configure(cache_mib=256, repair=False)
        with pytest.raises(WorkerError) as refused:
            host.load("tiny-sd-a")
        assert refused.value.code == ErrorCode.MODEL_CORRUPT and "unet/diffusion_pytorch_model" in str(refused.value)
        assert c.request("model.list")["resident"] == []
        # repair enabled: rebuilt from the recipe, verified, and serving the same images as before
        host.configure(cache_mib=256)
        loaded = host.load("tiny-sd-a").result
        assert loaded["steps"][0]["repaired"] == "rebuild"
        assert c.request("inference.run", T2I)["sha256"] == reference
        assert host.sync_state().consistent


def test_a_corrupt_host_cache_copy_is_not_used_and_device_corruption_stops_serving(
        worker_argv: list[str], root: Path) -> None:
    store = ModelStore(root)
    with WorkerClient(worker_argv).start() as c, HostModelCache(store, 64 << 20) as cache:
        host = ModelHost(c, store, cache)
        host.configure(cache_mib=256)
        cache.ensure("tiny-sd-a")
        rel = "unet/diffusion_pytorch_model.safetensors"
        data = bytearray(cache.read("tiny-sd-a", rel))
        data[len(data) // 2] ^= 0x01
        cache.overwrite("tiny-sd-a", rel, bytes(data))  # corrupted in RAM, after the host verified it
        step = host.load("tiny-sd-a").result["steps"][0]
        assert step["source"] == "shm" and step["host_copy_corrupt"] and step["repaired"] == ""
        reference = c.request("inference.run", T2I)["sha256"]
        assert c.request("model.verify", {"name": "tiny-sd-a"})["intact"]
        c.request("fault.model_corrupt_resident", {"name": "tiny-sd-a", "seed": 1})
        assert not c.request("model.verify", {"name": "tiny-sd-a"})["intact"]
        with pytest.raises(WorkerError) as stopped:
            c.request("inference.run", T2I)
        assert stopped.value.code == ErrorCode.MODEL_CORRUPT
        assert host.sync_state().corrupt == ["tiny-sd-a"]
        host.unload("tiny-sd-a")
        cache.evict("tiny-sd-a")
        host.load("tiny-sd-a")
        assert c.request("inference.run", T2I)["sha256"] == reference


def test_cancel_and_deadline_free_what_the_request_held(worker_argv: list[str], root: Path) -> None:
    with WorkerClient(worker_argv).start() as c:
        host = ModelHost(c, ModelStore(root))
        host.configure(cache_mib=256)
        host.load("tiny-sd-a")
        big = {**T2I, "width": 128, "height": 128, "steps": 400, "batch": 2}
        c.request("inference.run", {**big, "steps": 2})  # warm: allocator pools reach their working size
        rss0 = c.request("model.list")["rss_bytes"]
        events: list[object] = []
        pending = c.submit("inference.run", {**big, "progress": True}, on_event=events.append)
        deadline = time.monotonic() + 60
        while len(events) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.request("cancel", {"target": pending.id})["state"] == "running-cancel-requested"
        assert pending.wait(30)
        with pytest.raises(WorkerError) as cancelled:
            pending.result()
        assert cancelled.value.code == ErrorCode.CANCELLED
        # The worker's own answer, not the host's give-up: the deadline is checked after each step.
        t0 = time.monotonic()
        timed = c.submit("inference.run", {**T2I, "steps": 500}, deadline_ms=1500)
        assert timed.wait(30)
        with pytest.raises(WorkerError) as late:
            timed.result()
        assert late.value.code == ErrorCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 10
        status = c.request("status")
        assert status["running"] is None and status["queued"] == 0
        listed = c.request("model.list")
        assert [m["name"] for m in listed["resident"]] == ["tiny-sd-a"] and listed["loading"] == []
        assert listed["rss_bytes"] - rss0 < 64 << 20, f"RSS grew {(listed['rss_bytes'] - rss0) >> 20} MiB"
        assert c.request("inference.run", T2I)["steps_done"] == T2I["steps"]  # still serving


def test_concurrent_requests_on_one_pipeline_match_their_sequential_references(
        worker_argv: list[str], root: Path) -> None:
    with WorkerClient(worker_argv).start() as c:
        host = ModelHost(c, ModelStore(root))
        host.configure(cache_mib=256, inference_slots=3)
        host.load("tiny-lora-a")
        variants = [{**T2I, "seed": s} for s in (1, 2)] + [{**T2I, "seed": 1, "lora": "tiny-lora-a"}]
        reference = [c.request("inference.run", v)["sha256"] for v in variants]
        for _ in range(2):
            pending = [c.submit("inference.run", v) for v in variants for _ in range(2)]
            got = [p.result() if p.wait(120) else None for p in pending]
            assert [g["sha256"] if g else None for g in got] == [r for r in reference for _ in range(2)]


def test_switching_models_fifty_times_returns_memory_to_baseline(worker_argv: list[str], root: Path) -> None:
    with WorkerClient(worker_argv).start() as c:
        host = ModelHost(c, ModelStore(root))
        host.configure(cache_mib=256)
        names = ["tiny-sd-a", "tiny-sd-b"]

        def cycle() -> None:
            for name in names:
                host.load(name)
                c.request("inference.run", {**T2I, "model": name, "steps": 1})
                host.unload(name)

        for _ in range(3):  # warm: allocator arenas and lazy imports settle
            cycle()
        baseline = c.request("model.list")
        for _ in range(25):  # 50 switches
            cycle()
        after = c.request("model.list")
        assert after["used_bytes"] == baseline["used_bytes"] == 0
        growth = after["rss_bytes"] - baseline["rss_bytes"]
        assert growth < 32 << 20, f"worker RSS grew {growth / 2**20:.1f} MiB over 50 switches"
        assert host.sync_state().consistent


def test_out_of_memory_falls_back_to_smaller_batches_then_tiling(worker_argv: list[str], root: Path) -> None:
    with WorkerClient(worker_argv).start() as c:
        host = ModelHost(c, ModelStore(root))
        host.configure(cache_mib=256)
        host.load("tiny-sd-a")
        # image i of a batch uses seed + i: split down to single images, each equals its own batch-1 run
        singles = [c.request("inference.run", {**T2I, "seed": T2I["seed"] + i}, timeout=SLOW_S)["sha256"][0]
                   for i in range(4)]
        c.request("fault.inference_oom", {"model": "tiny-sd-a", "above_batch": 1})
        split = c.request("inference.run", {**T2I, "batch": 4}, timeout=SLOW_S)
        assert split["fallback"] == "split_batch" and split["oom_events"] == 3
        assert split["sha256"] == singles
        c.request("fault.inference_oom", {"model": "tiny-sd-a", "above_batch": 1, "untiled": True})
        tiled = c.request("inference.run", T2I, timeout=SLOW_S)
        assert tiled["fallback"] == "tiled_vae" and tiled["oom_events"] == 1
        c.request("fault.inference_oom", {"model": "tiny-sd-a", "above_batch": 0, "untiled": True})
        with pytest.raises(WorkerError) as oom:
            c.request("inference.run", T2I, timeout=SLOW_S)
        assert oom.value.code == ErrorCode.OUT_OF_MEMORY and oom.value.retryable


@pytest.mark.parametrize(("params", "expected"), [
    ({"prompt": "x" * 100_000}, "prompt has 100000 characters"),
    ({"width": 100}, "width must be a multiple of 8"),
    ({"steps": 0}, "steps must be between 1"),
    ({"steps": -5}, "steps must be between 1"),
    ({"scheduler": "warp"}, "unknown scheduler 'warp'"),
    ({"mode": "controlnet"}, "needs control_image"),
    ({"model": "nope"}, "'nope' is not resident"),
])
def test_bad_inference_input_is_named_and_the_worker_keeps_serving(worker_argv: list[str], root: Path,
                                                                   params: dict, expected: str) -> None:
    with WorkerClient(worker_argv).start() as c:
        host = ModelHost(c, ModelStore(root))
        host.configure(cache_mib=256)
        host.load("tiny-sd-a")
        with pytest.raises(WorkerError, match=expected):
            c.request("inference.run", {**T2I, **params})
        assert c.request("inference.run", T2I)["steps_done"] == T2I["steps"]


def test_bad_model_roots_are_named_and_nothing_broken_is_cached(worker_argv: list[str], root: Path) -> None:
    doc = json.loads((root / "manifest.json").read_text())
    with WorkerClient(worker_argv).start() as c:
        for edit, expected in [
            (lambda d: d["models"]["tiny-sd-a"].update(path="../../etc"), "inside the model root"),
            (lambda d: d["models"]["tiny-lora-a"].update(depends_on=["missing-base"]), "'missing-base'"),
            (lambda d: d["models"]["tiny-sd-a"]["files"].update(
                {"unet/model.ckpt": {"sha256": "0" * 64, "bytes": 1}}), "pickle"),
        ]:
            bad = json.loads(json.dumps(doc))
            edit(bad)
            (root / "manifest.json").write_text(json.dumps(bad))
            with pytest.raises(WorkerError, match=expected) as refused:
                c.request("models.configure", {"root": str(root)})
            assert refused.value.code == ErrorCode.INVALID_PARAMS
        (root / "manifest.json").write_text(json.dumps(doc))
        c.request("models.configure", {"root": str(root), "repair": False})
        weights = root / "tiny-sd-b" / "vae" / "diffusion_pytorch_model.safetensors"
        corrupt_file(weights, Corruption.FLIP_BIT)
        with pytest.raises(WorkerError, match=r"sha256 is .*, expected") as mismatch:
            c.request("model.load", {"name": "tiny-sd-b"})
        assert mismatch.value.code == ErrorCode.MODEL_CORRUPT
        with pytest.raises(WorkerError, match="'nope'"):
            c.request("model.load", {"name": "nope"})
        assert c.request("model.list")["resident"] == []
        assert c.request("model.load", {"name": "tiny-sd-a"})["steps"][0]["source"] == "disk"


def test_loads_share_one_load_of_a_model_and_priority_orders_the_queue(worker_argv: list[str], root: Path) -> None:
    with WorkerClient(worker_argv).start() as c:
        c.request("models.configure", {"root": str(root), "loaders": 1})
        order: list[str] = []
        lock = threading.Lock()
        first = c.submit("model.load", {"name": "tiny-sd-b"})  # occupies the only loader
        low = c.submit("model.load", {"name": "tiny-controlnet-a"}, priority=9)
        high = c.submit("model.load", {"name": "tiny-sd-a"}, priority=0)
        for name, p in (("first", first), ("low", low), ("high", high)):
            threading.Thread(target=lambda n=name, q=p: (q.wait(120), lock.acquire(), order.append(n),
                                                         lock.release())).start()
        for p in (first, low, high):
            assert p.wait(120)
        time.sleep(0.1)
        assert order.index("high") < order.index("low")
        twice = [c.submit("model.load", {"name": "tiny-lora-a"}) for _ in range(2)]
        results = [p.result() for p in twice if p.wait(120)]
        assert sum(s["source"] != "resident" for r in results for s in r["steps"] if s["name"] == "tiny-lora-a") == 1


def test_a_deadline_passing_while_queued_is_answered_then(worker_argv: list[str], root: Path) -> None:
    with WorkerClient(worker_argv).start() as c:
        host = ModelHost(c, ModelStore(root))
        host.configure(cache_mib=256)
        host.load("tiny-sd-a")
        c.request("inference.run", T2I)  # warm
        busy = c.submit("inference.run", {**T2I, "steps": 400})  # holds the only inference slot
        t0 = time.monotonic()
        waiting = c.submit("inference.run", T2I, deadline_ms=500)
        assert waiting.wait(20)
        waited = time.monotonic() - t0
        with pytest.raises(WorkerError) as late:
            waiting.result()
        assert late.value.code == ErrorCode.DEADLINE_EXCEEDED and "while queued" in str(late.value)
        assert waited < 5, f"answered {waited:.1f} s after a 0.5 s deadline"
        assert not busy.done  # the running one was not disturbed
        c.request("cancel", {"target": busy.id})
        assert busy.wait(30)
