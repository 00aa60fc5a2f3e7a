"""Image generation with diffusers pipelines, in process: text-to-image, image-to-image,
ControlNet and LoRA, seeded, with per-step progress, cancellation and deadlines, a NaN guard and
out-of-memory fallbacks. Usable without the worker (the in-process baseline of the overhead
benchmark calls it directly).

Each request gets its own pipeline object around the shared modules and its own scheduler:
schedulers carry per-run state (timesteps, step index), so sharing one between requests is the
classic source of corrupted outputs. Modules are shared; callers serialise requests on one model
(``ResidentModel.lock``) because LoRA activation mutates the UNet.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODES = ("text_to_image", "image_to_image", "controlnet")
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
MAX_PROMPT_CHARS = 4096  # CLIP reads 77 tokens; a longer prompt is a client bug, refused by name
MAX_SIDE = 4096
MAX_BATCH = 64
MAX_STEPS = 500  # DDIM (steps_offset=1) indexes past its 1000 training steps at 1000; spec max: 100


class NanOutput(RuntimeError):
    """The latents or the decoded image went NaN: the output would be garbage (a black image)."""


@dataclass(frozen=True)
class GenerationRequest:
    mode: str = "text_to_image"
    prompt: str = ""
    negative_prompt: str = ""
    width: int = 64
    height: int = 64
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int = 0
    batch: int = 1
    scheduler: str = "ddim"
    strength: float = 0.75  # image_to_image: share of the schedule that runs
    control_scale: float = 1.0
    lora_scale: float = 1.0
    init_image: np.ndarray | None = field(default=None, compare=False)  # (b|1, h, w, 3) uint8
    control_image: np.ndarray | None = field(default=None, compare=False)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (the worker answers INVALID_PARAMS)."""
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {list(MODES)}")
        for name in ("prompt", "negative_prompt"):
            n = len(getattr(self, name))
            if n > MAX_PROMPT_CHARS:
                raise ValueError(f"{name} has {n} characters; at most {MAX_PROMPT_CHARS} are accepted")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not 8 <= v <= MAX_SIDE or v % 8:
                raise ValueError(f"{name} must be a multiple of 8 between 8 and {MAX_SIDE}, got {v}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {MAX_BATCH}, got {self.batch}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; known: {sorted(SCHEDULERS)}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not np.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.mode == "image_to_image" and self.init_image is None:
            raise ValueError("image_to_image needs init_image")
        if self.mode == "controlnet" and self.control_image is None:
            raise ValueError("controlnet needs control_image")
        for name in ("init_image", "control_image"):
            img = getattr(self, name)
            if img is not None and (img.ndim != 4 or img.shape[0] not in (1, self.batch) or img.shape[-1] != 3):
                raise ValueError(f"{name} must be (1 or batch, h, w, 3), got {tuple(img.shape)}")

    @property
    def executed_steps(self) -> int:
        """Denoising steps actually run (image-to-image runs ``strength`` of the schedule)."""
        return max(1, int(self.steps * self.strength)) if self.mode == "image_to_image" else self.steps


@dataclass
class GenerationResult:
    images: np.ndarray  # (batch, height, width, 3) uint8
    seconds: float
    steps_done: int
    fallback: str = ""  # "", "split_batch" or "tiled_vae": what out-of-memory recovery did
    oom_events: int = 0


def _to_tensor(images: np.ndarray, batch: int) -> Any:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return t.expand(batch, -1, -1, -1) if t.shape[0] == 1 and batch > 1 else t


def clear_device_caches() -> None:
    """Collect module and activation cycles, then hand cached device blocks back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Generator:
    """Runs requests on one resident pipeline's components.

    ``oom_above_batch`` is fault injection (fault.inference_oom): raise torch's OutOfMemoryError
    for any sub-batch larger than it, and for untiled decoding when ``oom_untiled`` is set, so
    the fallbacks run on a CPU machine exactly as they would on a full GPU.
    """

    def __init__(self, components: dict[str, Any], device: str) -> None:
        self.components = {k: v for k, v in components.items() if k != "image_encoder"}
        self.device = device
        self.oom_above_batch: int | None = None
        self.oom_untiled = False

    def _pipeline(self, req: GenerationRequest, controlnet: Any) -> Any:
        import diffusers

        scheduler_cls = getattr(diffusers, SCHEDULERS[req.scheduler])
        scheduler = scheduler_cls.from_config(self.components["scheduler"].config)
        parts = {**self.components, "scheduler": scheduler}
        if req.mode == "text_to_image":
            pipe = diffusers.StableDiffusionPipeline(**parts)
        elif req.mode == "image_to_image":
            pipe = diffusers.StableDiffusionImg2ImgPipeline(**parts)
        else:
            if controlnet is None:
                raise ValueError("controlnet mode needs a resident ControlNet model (control_model)")
            pipe = diffusers.StableDiffusionControlNetPipeline(**parts, controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def run(self, req: GenerationRequest, *, controlnet: Any = None, lora: str | None = None,
            progress: Callable[[int, int], None] | None = None, check: Callable[[], None] | None = None,
            nan_guard: bool = True) -> GenerationResult:
        import torch

        req.validate()
        started = time.perf_counter()
        unet = self.components["unet"]
        if lora is not None:
            unet_adapters = getattr(unet, "peft_config", {}) or {}
            if lora not in unet_adapters:
                raise ValueError(f"LoRA {lora!r} is not loaded on this model; loaded: {sorted(unet_adapters)}")
        pipe = self._pipeline(req, controlnet)
        if lora is not None:
            pipe.enable_lora()  # loading leaves adapters disabled (see modelbuild.apply_lora)
            pipe.set_adapters([lora], [req.lora_scale])
        elif getattr(unet, "peft_config", None):
            pipe.disable_lora()
        total = req.executed_steps
        oom_events = 0
        fallback = ""
        tiled = False
        seeds = [req.seed + i for i in range(req.batch)]
        chunks = [seeds]
        out: list[np.ndarray] = []
        steps_done = 0
        while chunks:
            chunk = chunks.pop(0)
            try:
                images, done = self._one(pipe, req, chunk, controlnet is not None, tiled, total, progress, check,
                                         nan_guard)
                out.append(images)
                steps_done = max(steps_done, done)
            except torch.OutOfMemoryError:
                oom_events += 1
                clear_device_caches()
                if len(chunk) > 1:  # halve the batch; per-image seeds keep every image the same
                    half = len(chunk) // 2
                    chunks[:0] = [chunk[:half], chunk[half:]]
                    fallback = fallback or "split_batch"
                elif not tiled:
                    tiled = True
                    pipe.vae.enable_tiling()
                    chunks.insert(0, chunk)
                    fallback = "tiled_vae" if not fallback else f"{fallback}+tiled_vae"
                else:
                    raise
        if tiled:
            pipe.vae.disable_tiling()
        return GenerationResult(np.concatenate(out), time.perf_counter() - started, steps_done, fallback, oom_events)

    def _one(self, pipe: Any, req: GenerationRequest, seeds: list[int], has_control: bool, tiled: bool,
             total: int, progress: Callable[[int, int], None] | None, check: Callable[[], None] | None,
             nan_guard: bool) -> tuple[np.ndarray, int]:
        import torch

        n = len(seeds)
        if self.oom_above_batch is not None and n > self.oom_above_batch:
            raise torch.OutOfMemoryError(f"injected: batch {n} exceeds {self.oom_above_batch}")
        if self.oom_untiled and not tiled:
            raise torch.OutOfMemoryError("injected: untiled VAE decode")
        done = 0

        def on_step(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal done
            done = step + 1
            if nan_guard and torch.isnan(kwargs["latents"]).any():
                raise NanOutput(f"latents are NaN at step {done} of {total}")
            if check is not None:
                check()
            if progress is not None:
                progress(done, total)
            return kwargs

        kwargs: dict[str, Any] = {
            "prompt": [req.prompt] * n, "negative_prompt": [req.negative_prompt] * n if req.negative_prompt else None,
            "num_inference_steps": req.steps, "guidance_scale": req.guidance_scale,
            "generator": [torch.Generator(self.device).manual_seed(s) for s in seeds],
            "output_type": "np", "callback_on_step_end": on_step,
        }
        first = seeds[0] - req.seed
        if req.mode == "image_to_image":
            kwargs.update(image=_pick(req.init_image, first, n, req.batch), strength=req.strength)
        else:
            kwargs.update(height=req.height, width=req.width)
        if has_control:
            kwargs.update(image=_pick(req.control_image, first, n, req.batch),
                          controlnet_conditioning_scale=req.control_scale)
        with torch.inference_mode():
            images = pipe(**kwargs).images
        if nan_guard and np.isnan(images).any():
            raise NanOutput("decoded image contains NaN")
        return (np.clip(images * 255.0 + 0.5, 0, 255)).astype(np.uint8), done


def _pick(images: np.ndarray | None, first: int, n: int, batch: int) -> Any:
    assert images is not None
    if images.shape[0] == 1:
        return _to_tensor(images, n)
    return _to_tensor(images[first:first + n], n)
