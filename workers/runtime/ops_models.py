"""Handlers of the model and inference operations (see workers/protocol/ops_models.py).

``ModelRuntime`` holds the mutable state of the domain: the store, the device cache, the loader
and inference pools, and the ledger of shared-memory images not yet taken. It is created on the
first ``models.configure``; every other operation before it is refused by name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import psutil

from workers.protocol.images import ShmLedger, read
from workers.protocol.messages import ErrorCode, Request
from workers.protocol.ops_models import (
    CorruptResidentParams,
    CorruptResidentResult,
    EmptyResult,
    InferenceOomParams,
    InferenceParams,
    InferenceResult,
    LoadStepInfo,
    ModelListParams,
    ModelListResult,
    ModelLoadParams,
    ModelLoadResult,
    ModelNameParams,
    ModelsConfigureParams,
    ModelsConfigureResult,
    ModelUnloadResult,
    ModelVerifyResult,
    ResidentInfo,
    ShmFile,
)
from workers.runtime.context import OperationError, RequestContext
from workers.runtime.slots import PriorityPool

if TYPE_CHECKING:
    from workers.runtime.modelcache import ModelCache
    from workers.runtime.server import WorkerServer

log = logging.getLogger(__name__)
# model.load and inference.run are routed at once, not queued behind models.configure: a host
# must wait for configure's answer before sending them (ModelHost does).
_NOT_CONFIGURED = "no model root configured: send models.configure and wait for its answer first"
_proc = psutil.Process()


def _rss() -> int:
    return int(_proc.memory_info().rss)


def _attach(files: dict[str, ShmFile]) -> tuple[dict[str, memoryview], list[Any]]:
    """Map the host cache's segments (read only by convention: the host owns them)."""
    views: dict[str, memoryview] = {}
    segs = []
    for rel, ref in files.items():
        try:
            seg = shared_memory.SharedMemory(name=ref.shm)
        except FileNotFoundError:
            raise ValueError(f"host_files[{rel!r}]: shared-memory segment {ref.shm!r} does not exist") from None
        resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
        if seg.size < ref.bytes:
            seg.close()
            raise ValueError(f"host_files[{rel!r}]: segment has {seg.size} bytes, {ref.bytes} announced")
        segs.append(seg)
        views[rel] = seg.buf[: ref.bytes]
    return views, segs


class ModelRuntime:
    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.cache: Union[ModelCache, None] = None
        self.loaders: Union[PriorityPool, None] = None
        self.slots: Union[PriorityPool, None] = None
        self.images = ShmLedger()
        server.stop_hooks.append(self._stop)

    def _stop(self, drain: bool) -> None:
        for pool in (self.loaders, self.slots):
            if pool is not None:
                pool.close(drain)
        left = self.images.unlink_all()
        if left:
            log.info("unlinked %d image segments the host never took", left)

    def require(self) -> ModelCache:
        if self.cache is None:
            raise ValueError(_NOT_CONFIGURED)
        return self.cache

    # ---- configuration -------------------------------------------------------------------
    def configure(self, ctx: RequestContext, p: ModelsConfigureParams) -> ModelsConfigureResult:
        from workers.models.store import ModelStore
        from workers.runtime import imports
        from workers.runtime.modelcache import ModelCache

        imports.quiet_diffusers()
        if p.cache_mib <= 0:
            raise ValueError(f"cache_mib must be positive, got {p.cache_mib}")
        if not 1 <= p.loaders <= 16 or not 1 <= p.inference_slots <= 16:
            raise ValueError(f"loaders and inference_slots must be 1..16, got {p.loaders} and {p.inference_slots}")
        if p.device != "cpu" and not _device_exists(p.device):
            raise ValueError(f"device {p.device!r} does not exist on this worker")
        store = ModelStore(Path(p.root))
        names = store.names()  # reads and validates the manifest: a bad root fails here, by name
        unloaded = [m.name for m in self.cache.resident()] if self.cache else []
        for pool in (self.loaders, self.slots):
            if pool is not None:
                pool.close(drain=True)
        self.cache = ModelCache(store, p.device, int(p.cache_mib * (1 << 20)), p.dtype, p.verify, p.repair)
        self.loaders = PriorityPool(self.server, "loader", p.loaders)
        self.slots = PriorityPool(self.server, "inference", p.inference_slots)
        return ModelsConfigureResult(str(store.root), p.device, names, self.cache.cap_bytes, p.loaders,
                                     p.inference_slots, unloaded)

    # ---- loading -------------------------------------------------------------------------
    def route_load(self, req: Request, p: ModelLoadParams) -> None:
        if self.cache is None or self.loaders is None:
            self.server.fail(req.id, ErrorCode.INVALID_PARAMS, f"model.load: {_NOT_CONFIGURED}")
            return
        self.loaders.submit(req.id, "model.load", req.priority, req.deadline_ms, p, self._load)

    def _load(self, ctx: RequestContext, p: ModelLoadParams, queue_s: float) -> ModelLoadResult:
        from workers.runtime.modelcache import CacheFull, Corrupt

        cache = self.require()
        views: dict[str, memoryview] = {}
        segs: list[Any] = []
        if p.host_files:
            views, segs = _attach(p.host_files)
        try:
            report = cache.load(p.name, views or None, ctx.check)
        except CacheFull as exc:
            raise OperationError(ErrorCode.CACHE_FULL, str(exc)) from exc
        except Corrupt as exc:
            raise OperationError(ErrorCode.MODEL_CORRUPT, str(exc)) from exc
        finally:
            views.clear()
            for seg in segs:
                seg.close()
        return ModelLoadResult(
            p.name, [LoadStepInfo(s.name, s.source, s.read_s, s.verify_s, s.build_s, s.bytes, s.repaired,
                                  s.host_copy_corrupt) for s in report.steps],
            report.evicted, report.seconds, report.waited_s, queue_s, cache.used_bytes(), _rss())

    def unload(self, ctx: RequestContext, p: ModelNameParams) -> ModelUnloadResult:
        from workers.runtime.diffusion import clear_device_caches

        cache = self.require()
        t0 = time.perf_counter()
        before = cache.used_bytes()
        gone = cache.unload(p.name)
        clear_device_caches()  # modules hold reference cycles: memory returns once they are collected
        return ModelUnloadResult(gone, before - cache.used_bytes(), cache.used_bytes(), _rss(),
                                 time.perf_counter() - t0)

    def list(self, p: ModelListParams) -> ModelListResult:
        cache = self.require()
        now = time.monotonic()
        resident = []
        for m in cache.resident():
            entry = cache.store.entry(m.name)
            resident.append(ResidentInfo(m.name, m.kind, m.bytes, m.depends_on, m.uses, m.corrupt,
                                         now - m.last_used, {rel: f.sha256 for rel, f in entry.files.items()}))
        return ModelListResult(cache.device, cache.cap_bytes, cache.used_bytes(), resident, cache.loading(),
                               cache.evictions, _rss())

    def verify(self, ctx: RequestContext, p: ModelNameParams) -> ModelVerifyResult:
        intact, seconds = self.require().verify_resident(p.name)
        return ModelVerifyResult(p.name, intact, seconds)

    # ---- inference -----------------------------------------------------------------------
    def route_inference(self, req: Request, p: InferenceParams) -> None:
        if self.slots is None:
            self.server.fail(req.id, ErrorCode.INVALID_PARAMS, f"inference.run: {_NOT_CONFIGURED}")
            return
        self.slots.submit(req.id, "inference.run", req.priority, req.deadline_ms, p, self._infer)

    def _infer(self, ctx: RequestContext, p: InferenceParams, queue_s: float) -> InferenceResult:
        import torch

        from workers.runtime.diffusion import GenerationRequest, NanOutput, clear_device_caches
        from workers.runtime.modelcache import Corrupt

        cache = self.require()
        init = read(p.init_image) if p.init_image is not None else None
        control = read(p.control_image) if p.control_image is not None else None
        req = GenerationRequest(p.mode, p.prompt, p.negative_prompt, p.width, p.height, p.steps, p.guidance_scale,
                                p.seed, p.batch, p.scheduler, p.strength, p.control_scale, p.lora_scale, init, control)
        req.validate()  # before touching the model: bad input is named, nothing is loaded or held
        try:
            model = cache.get(p.model)
            controlnet = cache.get(p.control_model).obj if p.control_model else None
            if p.lora is not None:
                cache.get(p.lora)
        except KeyError as exc:
            raise OperationError(ErrorCode.MODEL_NOT_LOADED, str(exc.args[0])) from exc
        except Corrupt as exc:
            raise OperationError(ErrorCode.MODEL_CORRUPT, str(exc)) from exc
        if model.generator is None:
            raise ValueError(f"model {p.model!r} is a {model.kind}, not a pipeline that generates images")
        progress: Callable[[int, int], None] | None = (lambda s, t: ctx.progress(s, t)) if p.progress else None
        remaining = ctx.remaining()
        # Pipelines are not thread-safe (LoRA activation mutates the UNet): one request per model at
        # a time; waiting for it counts against the deadline.
        if not model.lock.acquire(timeout=-1 if remaining is None else max(0.0, remaining)):
            ctx.check()  # raises DeadlineExceeded
            raise OperationError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed waiting for the model", True)
        try:
            try:
                result = model.generator.run(req, controlnet=controlnet, lora=p.lora, progress=progress,
                                             check=ctx.check, nan_guard=p.nan_guard)
            finally:
                model.lock.release()
        except NanOutput as exc:
            raise OperationError(ErrorCode.NAN_OUTPUT, str(exc)) from exc
        except torch.OutOfMemoryError as exc:
            raise OperationError(ErrorCode.OUT_OF_MEMORY, f"out of memory after every fallback: {exc}",
                                 retryable=True) from exc
        finally:
            if ctx.cancelled or (ctx.deadline is not None and time.monotonic() > ctx.deadline):
                clear_device_caches()  # a stopped generation's activations go back now, not later
        from workers.protocol.images import image_digests

        digests = image_digests(result.images)
        ref = self.images.publish(result.images) if p.output == "shm" else None
        return InferenceResult(p.model, ref, digests, result.seconds, queue_s, result.steps_done, result.fallback,
                               result.oom_events, _rss())

    # ---- faults --------------------------------------------------------------------------
    def corrupt_resident(self, ctx: RequestContext, p: CorruptResidentParams) -> CorruptResidentResult:
        return CorruptResidentResult(p.name, self.require().flip_resident_bit(p.name, p.seed))

    def inference_oom(self, ctx: RequestContext, p: InferenceOomParams) -> EmptyResult:
        model = self.require().get(p.model)
        if model.generator is None:
            raise ValueError(f"model {p.model!r} is not a pipeline")
        model.generator.oom_above_batch = p.above_batch
        model.generator.oom_untiled = p.untiled
        return EmptyResult()


def _device_exists(device: str) -> bool:
    from workers.runtime.ops_devices import real_device_exists

    return real_device_exists(device)


def runtime(server: WorkerServer) -> ModelRuntime:
    rt = getattr(server, "_model_runtime", None)
    if rt is None:
        rt = server._model_runtime = ModelRuntime(server)  # type: ignore[attr-defined]
    return rt


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    rt = runtime(server)
    return {"models.configure": rt.configure, "model.unload": rt.unload, "model.verify": rt.verify,
            "fault.model_corrupt_resident": rt.corrupt_resident, "fault.inference_oom": rt.inference_oom}


def routed_handlers(server: WorkerServer) -> dict[str, Callable[[Request, Any], None]]:
    rt = runtime(server)
    return {"model.load": rt.route_load, "inference.run": rt.route_inference}


def control_handlers(server: WorkerServer) -> dict[str, Callable[[Any], Any]]:
    return {"model.list": runtime(server).list}


def direct_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    """In-process inference.run and model.load for jobs of the job queue (workflows, batches): the
    same work as the routed operations, on the calling job's thread (the job queue's concurrency,
    not the inference slots, bounds it; the model's lock still serialises one pipeline)."""
    rt = runtime(server)

    def infer(ctx: RequestContext, p: InferenceParams) -> InferenceResult:
        return rt._infer(ctx, p, 0.0)

    def load(ctx: RequestContext, p: ModelLoadParams) -> ModelLoadResult:
        return rt._load(ctx, p, 0.0)

    return {"inference.run": infer, "model.load": load}
