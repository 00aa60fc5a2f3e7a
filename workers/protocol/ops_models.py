"""Model and inference operations: a worker-side device cache of models from a verified store,
and diffusers generation whose images leave through shared memory.

``model.load`` and ``inference.run`` run on the model domain's own thread pools (loaders and
inference slots), ordered by the request's priority, so a long generation never blocks a
``model.list`` and loads proceed concurrently. Both are cancellable with ``cancel``. Images go
out as ``ImageRef`` (a shared-memory segment the host takes and unlinks), never as JSON.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from workers.protocol.images import ImageRef
from workers.protocol.opspec import OperationSpec

VerifyMode = Literal["hash", "structure", "none"]
Mode = Literal["text_to_image", "image_to_image", "controlnet"]
Output = Literal["shm", "digest"]


class ModelsConfigureParams(msgspec.Struct, forbid_unknown_fields=True):
    root: str  # the model root (its manifest.json)
    device: str = "cpu"
    cache_mib: float = 4096.0  # device cache cap; LRU eviction beyond it
    dtype: str = "float32"  # float32 | float16 | bfloat16
    verify: VerifyMode = "hash"  # before building: full sha256, safetensors structure only, or nothing
    repair: bool = True  # repair corrupt files from the backup or the recipe before serving
    loaders: int = 2  # concurrent model loads
    inference_slots: int = 1  # concurrent generations (on 2 CPU cores, 1: torch already uses both)


class ModelsConfigureResult(msgspec.Struct):
    root: str
    device: str
    models: list[str]  # what the manifest offers
    cache_bytes: int
    loaders: int
    inference_slots: int
    unloaded: list[str]  # resident before reconfiguration


class ShmFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    shm: str  # segment holding one file's bytes, owned by the host's RAM cache
    bytes: int


class ModelLoadParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    host_files: Union[dict[str, ShmFile], None] = None  # the host RAM cache's copies; others from disk


class LoadStepInfo(msgspec.Struct):
    name: str
    source: str  # shm | disk | resident
    read_s: float
    verify_s: float
    build_s: float
    bytes: int
    repaired: str  # "" | backup | rebuild
    host_copy_corrupt: bool


class ModelLoadResult(msgspec.Struct):
    name: str
    steps: list[LoadStepInfo]  # dependencies first
    evicted: list[str]
    seconds: float
    waited_s: float  # waiting on a concurrent load of the same model
    queue_s: float  # waiting for a loader slot
    used_bytes: int
    rss_bytes: int


class ModelNameParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class ModelUnloadResult(msgspec.Struct):
    unloaded: list[str]  # the model and its resident dependents (a LoRA, a ControlNet)
    freed_bytes: int
    used_bytes: int
    rss_bytes: int
    seconds: float


class ResidentInfo(msgspec.Struct):
    name: str
    kind: str
    bytes: int
    depends_on: list[str]
    uses: int
    corrupt: bool
    idle_s: float
    files: dict[str, str]  # rel -> sha256 from the manifest it was verified against


class ModelListResult(msgspec.Struct):
    device: str
    cap_bytes: int
    used_bytes: int
    resident: list[ResidentInfo]  # least recently used first
    loading: list[str]
    evictions: int
    rss_bytes: int


class ModelListParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class ModelVerifyResult(msgspec.Struct):
    name: str
    intact: bool  # resident weights still hash to their fingerprint at load
    seconds: float


class InferenceParams(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    mode: Mode = "text_to_image"
    prompt: str = ""
    negative_prompt: str = ""
    width: int = 64
    height: int = 64
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int = 0
    batch: int = 1
    scheduler: str = "ddim"
    strength: float = 0.75
    init_image: Union[ImageRef, None] = None
    control_model: Union[str, None] = None
    control_image: Union[ImageRef, None] = None
    control_scale: float = 1.0
    lora: Union[str, None] = None
    lora_scale: float = 1.0
    output: Output = "shm"  # shm: an ImageRef to take; digest: only the per-image sha256
    progress: bool = True  # a progress event per denoising step
    nan_guard: bool = True


class InferenceResult(msgspec.Struct):
    model: str
    image: Union[ImageRef, None]
    sha256: list[str]  # per image, over its raw uint8 bytes
    seconds: float  # generation itself
    queue_s: float  # waiting for an inference slot
    steps_done: int
    fallback: str  # "" | split_batch | tiled_vae: what out-of-memory recovery did
    oom_events: int
    rss_bytes: int


class CorruptResidentParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    seed: int = 0


class CorruptResidentResult(msgspec.Struct):
    name: str
    tensor: str


class InferenceOomParams(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    above_batch: Union[int, None] = None  # sub-batches larger than this raise OutOfMemoryError
    untiled: bool = False  # untiled VAE decoding raises OutOfMemoryError


class EmptyResult(msgspec.Struct):
    pass


SPECS: tuple[OperationSpec, ...] = (
    OperationSpec("models.configure", ModelsConfigureParams, ModelsConfigureResult, idempotent=True,
                  description="Open a model root and set up the device cache and thread pools; unloads "
                              "whatever was resident."),
    OperationSpec("model.load", ModelLoadParams, ModelLoadResult, idempotent=True,
                  description="Load a model and its dependencies into the device cache from verified bytes "
                              "(the host's shared-memory copies, else disk), repairing corrupt files first; "
                              "evicts least recently used models to fit. Runs on a loader, by priority."),
    OperationSpec("model.unload", ModelNameParams, ModelUnloadResult, idempotent=False,
                  description="Unload a model and its resident dependents; waits for a request using it."),
    OperationSpec("model.list", ModelListParams, ModelListResult, idempotent=True, control=True,
                  description="What the device cache holds (answered at once, even while loading)."),
    OperationSpec("model.verify", ModelNameParams, ModelVerifyResult, idempotent=True,
                  description="Re-hash a resident model's weights; a mismatch marks it corrupt: it serves "
                              "nothing until reloaded."),
    OperationSpec("inference.run", InferenceParams, InferenceResult, idempotent=True,
                  description="Generate images with a resident pipeline (text-to-image, image-to-image, "
                              "ControlNet, LoRA); a progress event per step; the images in shared memory."),
    OperationSpec("fault.model_corrupt_resident", CorruptResidentParams, CorruptResidentResult,
                  idempotent=False, fault=True,
                  description="Flip one bit of one resident weight (device memory corruption)."),
    OperationSpec("fault.inference_oom", InferenceOomParams, EmptyResult, idempotent=True, fault=True,
                  description="Make a model's generations raise OutOfMemoryError above a batch size or "
                              "when decoding untiled, to exercise the fallbacks without a full GPU."),
)
