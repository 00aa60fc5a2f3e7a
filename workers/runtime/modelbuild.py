"""Turn verified file contents into live modules: a diffusers pipeline's components, a ControlNet,
a LoRA applied to its base, or a synthetic model's tensors.

Weights come from bytes already checked against the manifest (read from disk by the worker, or
handed over from the host's RAM cache in shared memory), never from a path read a second time:
what was verified is what is loaded. Modules are created on the meta device and the weights
assigned, so a large model is never initialised randomly first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Buffers = Mapping[str, "bytes | memoryview"]


def _weights(files: Buffers, rel: str) -> dict[str, Any]:
    import safetensors.torch as st

    if rel not in files:
        raise ValueError(f"weights file {rel!r} was not provided; have {sorted(files)}")
    return st.load(bytes(files[rel]))


def _config(files: Buffers, rel: str) -> dict[str, Any]:
    if rel not in files:
        raise ValueError(f"config file {rel!r} was not provided; have {sorted(files)}")
    return json.loads(bytes(files[rel]))


def _module(cls: Any, config: dict[str, Any], state: dict[str, Any], device: str, dtype: Any) -> Any:
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    module.load_state_dict(state, strict=True, assign=True)
    first = next(iter(state.values()), None)
    if first is not None and first.dtype != dtype:  # .to(dtype) only when it changes something
        module = module.to(dtype=dtype)
    return module.to(device=device).eval().requires_grad_(False)


def _dtype(name: str) -> Any:
    import torch

    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {name!r}")
    return getattr(torch, name)


def build_sd_components(files: Buffers, model_dir: Path, device: str, dtype: str) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dt = _dtype(dtype)
    unet = _module(UNet2DConditionModel, _config(files, "unet/config.json"),
                   _weights(files, "unet/diffusion_pytorch_model.safetensors"), device, dt)
    vae = _module(AutoencoderKL, _config(files, "vae/config.json"),
                  _weights(files, "vae/diffusion_pytorch_model.safetensors"), device, dt)
    text_config = CLIPTextConfig.from_dict(_config(files, "text_encoder/config.json"))
    text = _module(CLIPTextModel, text_config, _weights(files, "text_encoder/model.safetensors"), device, dt)
    # The tokenizer is text (vocabulary, merges) verified with the rest; it is read by transformers.
    tokenizer = CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    scheduler = DDIMScheduler.from_config(_config(files, "scheduler/scheduler_config.json"))
    return {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": tokenizer, "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def build_controlnet(files: Buffers, device: str, dtype: str) -> Any:
    from diffusers import ControlNetModel

    return _module(ControlNetModel, _config(files, "config.json"),
                   _weights(files, "diffusion_pytorch_model.safetensors"), device, _dtype(dtype))


def apply_lora(base_components: dict[str, Any], files: Buffers, adapter: str) -> None:
    """Load the LoRA into the base UNet as a named adapter (inactive until a request selects it)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**base_components)
    pipe.load_lora_weights(_weights(files, "pytorch_lora_weights.safetensors"), adapter_name=adapter)
    pipe.disable_lora()


def remove_lora(base_components: dict[str, Any], adapter: str) -> None:
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**base_components).delete_adapters([adapter])


def build_synthetic(files: Buffers, device: str) -> dict[str, Any]:
    import safetensors.torch as st

    (rel,) = [r for r in files if r.endswith(".safetensors")]
    return {k: v.to(device) for k, v in st.load(bytes(files[rel])).items()}


def module_bytes(obj: Any) -> int:
    """Bytes of parameters and buffers held by a module, a components dict or a tensor dict."""
    import torch

    if isinstance(obj, torch.nn.Module):
        seen: set[int] = set()
        total = 0
        for t in [*obj.parameters(), *obj.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total
    if isinstance(obj, dict):
        return sum(module_bytes(v) for v in obj.values())
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    return 0


def tensors_of(obj: Any) -> list[tuple[str, Any]]:
    """Named tensors of a model, in a stable order (for fingerprints and fault injection)."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return list(obj.state_dict().items())
    if isinstance(obj, dict):
        out = []
        for key in sorted(obj):
            out += [(f"{key}.{n}", t) for n, t in tensors_of(obj[key])]
        return out
    if isinstance(obj, torch.Tensor):
        return [("", obj)]
    return []
