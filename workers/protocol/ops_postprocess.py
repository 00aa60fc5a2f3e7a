"""Postprocessing operations: upscaling (Real-ESRGAN or classical), enhancement, format conversion.

Every image operation takes an ``ImageInput`` (an inference output's shared-memory ``ImageRef``, read
in place, or an uploaded PNG/JPEG/WebP inline) and runs as up to three stages: upscale, enhance,
convert. ``on_failure`` says what a failing stage does (an error, the original image, an alternative
algorithm, or a lower level); the result says which path served each stage and why, and the output was
validated before it was delivered. Work runs on the domain's own priority-ordered pool, so frame
priority, ``cancel`` and ``deadline_ms`` apply as for inference.run.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from workers.protocol.images import ImageInput, ImageRef
from workers.protocol.opspec import OperationSpec

Quality = Literal["standard", "highest"]
Backend = Literal["auto", "realesrgan", "classical"]
Level = Literal["ai", "standard", "basic"]
Output = Literal["shm", "inline", "digest"]
OnFailure = Literal["error", "fallback_to_original_image", "alternative_enhancement_algorithm",
                    "graceful_degradation"]
FaultKind = Literal["upscaling_algorithm_failure", "quality_enhancement_crash", "format_conversion_error",
                    "out_of_memory"]


class UpscaleParams(msgspec.Struct, forbid_unknown_fields=True):
    image: ImageInput
    factor: int = 2  # 2 or 4
    quality: Quality = "standard"  # realesrgan: standard = animevideov3 x2/x4, highest = x4plus
    backend: Backend = "auto"  # auto: realesrgan when its library loads, else classical (reported)
    tile: Union[int, None] = None  # input px per tile side (default 256); halved on out-of-memory
    format: Union[str, None] = None  # also convert the result to png | jpeg | webp (else UNSUPPORTED_FORMAT)
    format_quality: int = 95  # jpeg / webp quality, 1..100
    on_failure: OnFailure = "error"
    output: Output = "shm"  # shm: ImageRef (or the file in shm); inline: a file, base64; digest: sha256 only
    take_input: bool = False  # unlink the input's segment after reading it (the consumer owns the handoff)


class EnhanceParams(msgspec.Struct, forbid_unknown_fields=True):
    image: ImageInput
    level: Level = "standard"  # ai: Real-ESRGAN restore at own size; standard: adaptive classical; basic
    quality: Quality = "standard"  # ai only: standard = x2 compact model, highest = x4plus
    upscale_factor: int = 1  # 1: no upscale stage; 2 or 4: upscale (auto backend, standard) first
    format: Union[str, None] = None  # png | jpeg | webp
    format_quality: int = 95
    on_failure: OnFailure = "error"
    output: Output = "shm"
    take_input: bool = False


class ConvertParams(msgspec.Struct, forbid_unknown_fields=True):
    image: ImageInput
    format: str  # png | jpeg | webp (anything else: UNSUPPORTED_FORMAT)
    quality: int = 95  # jpeg / webp
    on_failure: OnFailure = "error"
    output: Output = "inline"
    take_input: bool = False


class StageInfo(msgspec.Struct):
    stage: str  # upscale | enhance | convert
    requested: str  # e.g. "auto x4 highest", "ai standard", "webp"
    served_by: str  # e.g. "realesrgan x4 highest", "classical x2 standard", "basic", "png", "original"
    status: str  # ok | recovered | skipped
    error: str  # why the requested path failed ("" when it served)
    fallback: str  # "" | original | alternative | degraded
    attempts: int
    seconds: float
    tiles: int
    tile_px: int  # the tile side that succeeded (after any out-of-memory halving)
    oom_events: int
    steps: list[str]  # what the serving algorithm applied (enhancement: deblock, denoise, sharpen, ...)


class InputInfo(msgspec.Struct):
    source: str  # shm | inline
    shm: str  # the segment read ("" inline)
    in_place: bool  # read from the producer's segment itself, no copy through the host or a new segment
    sha256: str  # of the pixels as read (what the producer's ImageRef.sha256 must match)
    width: int
    height: int


class FileInfo(msgspec.Struct, omit_defaults=True):
    format: str  # png | jpeg | webp
    bytes: int
    sha256: str  # of the file bytes
    encoded_b64: Union[str, None] = None  # output "inline"
    ref: Union[ImageRef, None] = None  # output "shm": the bytes as a 1 x 1 x N x 1 uint8 segment


class PostprocessResult(msgspec.Struct):
    image: Union[ImageRef, None]  # the delivered pixels (output "shm" and no file)
    file: Union[FileInfo, None]  # the delivered file (a format asked, or output "inline")
    format: str  # raw | png | jpeg | webp: what was delivered
    width: int
    height: int
    sha256: str  # of the delivered pixels (raw uint8 bytes)
    backend: str  # what served the main stage: "realesrgan x2 standard", "standard", "original", ...
    fallback: str  # "" | original | alternative | degraded (the first stage that needed one)
    limitation: str  # "" when everything served as asked; else each failed stage, why, and what served
    validated: bool  # the output passed validation before delivery (always true: else an error)
    checks: list[str]
    stages: list[StageInfo]
    input: InputInfo
    seconds: float  # the work itself
    queue_s: float  # waiting for a postprocessing slot


class BackendsParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class BackendInfo(msgspec.Struct):
    name: str
    available: bool
    reason: str  # why not, when unavailable
    detail: str


class BackendsResult(msgspec.Struct):
    backends: list[BackendInfo]
    auto: str  # what backend "auto" resolves to now
    factors: list[int]
    qualities: list[str]
    levels: list[str]
    formats: list[str]
    faults_armed: dict[str, int]  # stage -> calls left (fault injection)
    slots: int
    queued: int


class PostprocessFaultParams(msgspec.Struct, forbid_unknown_fields=True):
    kind: FaultKind
    calls: int = 1  # the next N requests reaching the stage fail; 0 clears the stage's fault
    algorithm: Union[str, None] = None  # e.g. realesrgan, classical, ai, standard, basic, webp; None: all
    # raise: the algorithm throws; bad_output: it returns a blank, wrong-size image or a truncated file (output
    # validation must catch it); stdout_noise: it prints on fd 1 through C stdio, as native libraries do, then works
    mode: Literal["raise", "bad_output", "stdout_noise"] = "raise"
    above_tile: int = 0  # out_of_memory: tiles with a side above this many px fail (0: every tile)


class PostprocessFaultResult(msgspec.Struct):
    stage: str
    armed: dict[str, int]


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("postprocess.upscale", UpscaleParams, PostprocessResult, idempotent=True,
                  description="Upscale an image 2x or 4x with Real-ESRGAN (pretrained, ncnn on the CPU) or the "
                              "classical fallback, tiled with out-of-memory back-off; optionally converted to a "
                              "file. Runs on the postprocessing pool, by priority."),
    OperationSpec("postprocess.enhance", EnhanceParams, PostprocessResult, idempotent=True,
                  description="Enhance an image (ai: Real-ESRGAN restoration at its own size; standard: adaptive "
                              "classical denoise/deblock/sharpen/contrast; basic), optionally upscaled first "
                              "and converted after; failures recovered as on_failure asks, reported per stage."),
    OperationSpec("postprocess.convert", ConvertParams, PostprocessResult, idempotent=True,
                  description="Convert an image to PNG, JPEG or WebP; the file is validated by decoding it back."),
    OperationSpec("postprocess.backends", BackendsParams, BackendsResult, idempotent=True, control=True,
                  description="The upscaling backends, whether each loads and why not, what auto resolves to."),
    OperationSpec("fault.postprocess", PostprocessFaultParams, PostprocessFaultResult, idempotent=False,
                  control=True, fault=True,
                  description="Make a postprocessing stage fail for the next N requests (an algorithm or the "
                              "whole stage; raising or returning a bad output), or raise out-of-memory on tiles "
                              "above a size."),
)
