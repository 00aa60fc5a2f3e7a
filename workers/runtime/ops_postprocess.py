"""Handlers of the postprocessing operations (see workers/protocol/ops_postprocess.py).

``PostprocessRuntime`` holds the domain's state: the ``Postprocessor`` (backends, fault plan), its
own priority-ordered pool (created on first use; ``HYBRID_POSTPROCESS_SLOTS`` threads, default 1:
ncnn already uses every core), and the ledger of output segments not yet taken. An input given as
an ``ImageRef`` is read in place from the producer's segment (an inference output: no copy through
the host); outputs leave through a new segment, or inline as a file.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from workers.postprocess import imageio
from workers.postprocess.imageio import ImageError
from workers.postprocess.pipeline import (
    ConvertSpec,
    Delivered,
    EnhanceSpec,
    Job,
    Postprocessor,
    StageFailed,
    UpscaleSpec,
    validate_file,
)
from workers.postprocess.upscale import FACTORS, QUALITIES
from workers.protocol.images import ShmLedger
from workers.protocol.messages import ErrorCode, Request
from workers.protocol.ops_postprocess import (
    BackendInfo,
    BackendsParams,
    BackendsResult,
    ConvertParams,
    EnhanceParams,
    FileInfo,
    InputInfo,
    PostprocessFaultParams,
    PostprocessFaultResult,
    PostprocessResult,
    StageInfo,
    UpscaleParams,
)
from workers.runtime.context import Cancelled, DeadlineExceeded, OperationError, RequestContext
from workers.runtime.slots import PriorityPool

if TYPE_CHECKING:
    from workers.runtime.server import WorkerServer

log = logging.getLogger(__name__)
ENV_SLOTS = "HYBRID_POSTPROCESS_SLOTS"
Params = Union[UpscaleParams, EnhanceParams, ConvertParams]


def _format(name: str | None) -> str | None:
    if name is None:
        return None
    fmt = name.lower()
    return "jpeg" if fmt == "jpg" else fmt


def job_for(op: str, p: Params) -> Job:
    """The stages a request asks for (bad values named: ValueError, or ImageError for a format)."""
    if isinstance(p, UpscaleParams):
        if p.factor not in FACTORS:
            raise ValueError(f"factor must be one of {list(FACTORS)}, got {p.factor}")
        if p.tile is not None and not 32 <= p.tile <= 4096:
            raise ValueError(f"tile must be 32..4096 px, got {p.tile}")
        fmt = _format(p.format)
        return Job(UpscaleSpec(p.factor, p.quality, p.backend, p.tile),
                   None, ConvertSpec(fmt, _quality(p.format_quality)) if fmt else None, p.on_failure)
    if isinstance(p, EnhanceParams):
        if p.upscale_factor not in (1, *FACTORS):
            raise ValueError(f"upscale_factor must be 1 (none) or one of {list(FACTORS)}, got {p.upscale_factor}")
        fmt = _format(p.format)
        up = UpscaleSpec(p.upscale_factor) if p.upscale_factor != 1 else None
        return Job(up, EnhanceSpec(p.level, p.quality), ConvertSpec(fmt, _quality(p.format_quality)) if fmt else None,
                   p.on_failure)
    fmt = _format(p.format) or ""
    return Job(None, None, ConvertSpec(fmt, _quality(p.quality)), p.on_failure)


def _quality(q: int) -> int:
    if not 1 <= q <= 100:
        raise ValueError(f"format quality must be 1..100, got {q}")
    return q


def _slots() -> int:
    raw = os.environ.get(ENV_SLOTS) or "1"
    try:
        return max(1, min(16, int(raw)))
    except ValueError:
        log.warning("%s=%r is not an integer: 1 postprocessing slot", ENV_SLOTS, raw)
        return 1


class PostprocessRuntime:
    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.processor = Postprocessor()
        self.images = ShmLedger()
        self._pool: PriorityPool | None = None
        self.slots = _slots()  # the pool itself starts on first use
        self._pool_lock = threading.Lock()
        server.stop_hooks.append(self._stop)

    def _stop(self, drain: bool) -> None:
        with self._pool_lock:
            pool = self._pool
        if pool is not None:
            pool.close(drain)
        left = self.images.unlink_all()
        if left:
            log.info("unlinked %d postprocessing segments the host never took", left)

    def pool(self) -> PriorityPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = PriorityPool(self.server, "postprocess", self.slots)
            return self._pool

    # ---- routed operations -------------------------------------------------------------------------------
    def router(self, op: str) -> Callable[[Request, Any], None]:
        def route(req: Request, p: Params) -> None:
            self.pool().submit(req.id, op, req.priority, req.deadline_ms, p,
                               lambda ctx, params, queue_s: self.work(op, ctx, params, queue_s))

        return route

    def work(self, op: str, ctx: RequestContext, p: Params, queue_s: float = 0.0) -> PostprocessResult:
        t0 = time.perf_counter()
        try:
            job = job_for(op, p)
            with imageio.open_input(p.image, what=f"{op} image", take=p.take_input) as opened:
                delivered = self.processor.run(opened.pixels, job, check=ctx.check,
                                               passthrough=(Cancelled, DeadlineExceeded))
                source, in_h, in_w = opened.source, opened.pixels.shape[0], opened.pixels.shape[1]
                if np.shares_memory(delivered.pixels, opened.pixels):
                    delivered.pixels = delivered.pixels.copy()  # the original, served: it outlives the mapping
        except ImageError as exc:
            raise OperationError(exc.code, exc.message) from None
        except StageFailed as exc:
            raise OperationError(exc.code, f"{op}: {exc.message}", exc.retryable) from None
        if p.take_input and p.image.ref is not None:
            self._forget_input(p.image.ref.shm)
        info = InputInfo(source.source, source.shm, source.in_place, source.sha256, in_w, in_h)
        return self._result(delivered, p.output, info, time.perf_counter() - t0, queue_s)

    def _forget_input(self, name: str) -> None:
        from workers.runtime import ops_models

        ops_models.runtime(self.server).images.forget(name)  # an inference output, taken here
        self.images.forget(name)

    def _result(self, d: Delivered, output: str, src: InputInfo, seconds: float,
                queue_s: float) -> PostprocessResult:
        px = d.pixels
        digest = hashlib.sha256(np.ascontiguousarray(px).tobytes()).hexdigest()
        data, fmt, checks = d.file, d.format, list(d.checks)
        if data is None and output == "inline":  # pixels asked inline: carried as a lossless PNG
            data, fmt = imageio.encode(px, "png"), "png"
            checks += validate_file(data, "png", px)
        image, file = None, None
        if data is not None and output != "digest":
            file = self._file(data, fmt, output)
        elif data is not None:
            file = FileInfo(fmt, len(data), hashlib.sha256(data).hexdigest())
        elif output == "shm":
            image = self.images.publish(px[None])
        stages = [StageInfo(r.stage, r.requested, r.served_by, r.status, r.error, r.fallback, r.attempts,
                            round(r.seconds, 6), r.tiles, r.tile_px, r.oom_events, r.steps) for r in d.stages]
        h, w = px.shape[:2]
        return PostprocessResult(image, file, fmt, w, h, digest, d.backend, d.fallback, d.limitation, True, checks,
                                 stages, src, seconds, queue_s)

    def _file(self, data: bytes, fmt: str, output: str) -> FileInfo:
        digest = hashlib.sha256(data).hexdigest()
        if output == "inline":
            b64 = base64.b64encode(data).decode("ascii")
            room = self.server.config.max_frame_bytes - 64 * 1024  # the rest of the response frame
            if len(b64) > room:
                raise OperationError(ErrorCode.INVALID_PARAMS, f"a {len(data)}-byte {fmt} file does not fit an "
                                                               f"inline answer ({room} base64 bytes at most): ask "
                                                               "output shm")
            return FileInfo(fmt, len(data), digest, encoded_b64=b64)
        ref = self.images.publish(np.frombuffer(data, np.uint8).reshape(1, 1, -1, 1))
        return FileInfo(fmt, len(data), digest, ref=ref)

    # ---- control -------------------------------------------------------------------------------------------
    def backends(self, p: BackendsParams) -> BackendsResult:
        statuses = [b.status() for b in self.processor.backends.values()]
        auto, _ = self.processor.resolve("auto")
        pool = self._pool
        return BackendsResult([BackendInfo(s.name, s.available, s.reason, s.detail) for s in statuses], auto,
                              list(FACTORS), list(QUALITIES), ["ai", "standard", "basic"], list(imageio.FORMATS),
                              self.processor.faults.armed(), self.slots,
                              pool.queued() if pool else 0)

    def fault(self, p: PostprocessFaultParams) -> PostprocessFaultResult:
        stage = self.processor.faults.arm(p.kind, p.calls, p.algorithm, p.mode, p.above_tile)
        return PostprocessFaultResult(stage, self.processor.faults.armed())


def runtime(server: WorkerServer) -> PostprocessRuntime:
    rt = getattr(server, "_postprocess_runtime", None)
    if rt is None:
        rt = server._postprocess_runtime = PostprocessRuntime(server)  # type: ignore[attr-defined]
    return rt


OPS = ("postprocess.upscale", "postprocess.enhance", "postprocess.convert")


def work_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    return {}


def routed_handlers(server: WorkerServer) -> dict[str, Callable[[Request, Any], None]]:
    rt = runtime(server)
    return {op: rt.router(op) for op in OPS}


def control_handlers(server: WorkerServer) -> dict[str, Callable[[Any], Any]]:
    rt = runtime(server)
    return {"postprocess.backends": rt.backends, "fault.postprocess": rt.fault}


def direct_handlers(server: WorkerServer) -> dict[str, Callable[[RequestContext, Any], Any]]:
    """The plain in-process implementation of each postprocessing operation, ``fn(ctx, params)``: the same
    work as the routed operation, on the caller's thread (no pool, queue_s 0), for workflows inside the
    worker. postprocess.backends is included (its params are ignored)."""
    rt = runtime(server)

    def make(op: str) -> Callable[[RequestContext, Any], Any]:
        return lambda ctx, p: rt.work(op, ctx, p, 0.0)

    handlers: dict[str, Callable[[RequestContext, Any], Any]] = {op: make(op) for op in OPS}
    handlers["postprocess.backends"] = lambda ctx, p: rt.backends(p)
    return handlers

