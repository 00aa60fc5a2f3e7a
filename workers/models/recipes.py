"""Recipes that build models offline from code and a seed: nothing is ever fetched from a hub.

Every recipe is deterministic (same parameters and seed, same bytes: checked by the store's
rebuild, which compares hashes against the manifest). The tiny Stable-Diffusion-style pipeline
follows diffusers' own test "dummy components"; its pixels are meaningless but its compute path
(text encoder, UNet with cross-attention, VAE decode, scheduler) is the real one.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# SD1.5's published shapes (UNet about 860 M parameters): realistic compute and memory, random weights.
SD15_UNET = {
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": 768,
    "attention_head_dim": 8, "sample_size": 64,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD15_VAE = {"block_out_channels": (128, 256, 512, 512), "sample_size": 512}
SD15_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table (what CLIP's byte-level BPE uses)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _tokenizer(workdir: Path) -> Any:
    """A byte-level CLIP tokenizer with no merges (every byte a token): offline and exact."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = list(_bytes_to_unicode().values())
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "vocab.json").write_text(json.dumps(vocab))
    (workdir / "merges.txt").write_text("#version: 0.2\n")
    # model_max_length=77: without it padding breaks (STACK.md, transformers 5).
    return CLIPTokenizer(str(workdir / "vocab.json"), str(workdir / "merges.txt"), model_max_length=77)


def _sd_components(seed: int, channels: tuple[int, ...], sd15: bool) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if sd15:
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(
            block_out_channels=SD15_VAE["block_out_channels"], latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, sample_size=SD15_VAE["sample_size"],
        )
        text = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=1000,
                              max_position_embeddings=77, **SD15_TEXT)
    else:
        unet = UNet2DConditionModel(
            block_out_channels=channels, layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, norm_num_groups=32,
        )
        # Four blocks: 8x downsampling, as in real SD, so latents are width/8.
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32, sample_size=64,
        )
        text = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                              layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
                              max_position_embeddings=77)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": CLIPTextModel(text), "scheduler": scheduler}


def build_sd_pipeline(out: Path, root: Path, *, seed: int, channels: list[int] | None = None,
                      shape: str = "tiny", dtype: str = "float32") -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    parts = _sd_components(seed, tuple(channels or (32, 64)), sd15=(shape == "sd15"))
    pipe = StableDiffusionPipeline(
        tokenizer=_tokenizer(out / ".tokenizer-src"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, **parts,
    )
    if dtype != "float32":
        pipe = pipe.to(getattr(torch, dtype))
    pipe.save_pretrained(out, safe_serialization=True)
    for f in (out / ".tokenizer-src").iterdir():
        f.unlink()
    (out / ".tokenizer-src").rmdir()


def build_controlnet(out: Path, root: Path, *, seed: int, base: str) -> None:
    """A ControlNet derived from the base UNet, its zero-initialised convolutions randomised so
    that the conditioning image visibly changes the output (zero convs would make it a no-op)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(root / base / "unet", local_files_only=True)
    controlnet = ControlNetModel.from_unet(unet)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if "zero_conv" in name or "controlnet_down_blocks" in name or "controlnet_mid_block" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    controlnet.save_pretrained(out, safe_serialization=True)


def build_lora(out: Path, root: Path, *, seed: int, base: str, rank: int = 4) -> None:
    """A LoRA on the base UNet's attention projections, B randomised (peft starts it at zero)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(root / base / "unet", local_files_only=True)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights="gaussian"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True)


def build_synthetic(out: Path, root: Path, *, seed: int, mib: int, tensor_mib: int = 64) -> None:
    """A safetensors file of ``mib`` MiB of float16 weights, streamed to disk (a 10 GB file never
    sits in memory). Exponent bit 14 is masked so no value is Inf or NaN."""
    if mib <= 0:
        raise ValueError(f"synthetic model size must be positive, got {mib} MiB")
    out.mkdir(parents=True, exist_ok=True)
    total = mib << 20
    step = max(1, min(tensor_mib, mib)) << 20
    sizes = [step] * (total // step) + ([total % step] if total % step else [])
    header: dict[str, Any] = {"__metadata__": {"recipe": "synthetic", "seed": str(seed), "mib": str(mib)}}
    offset = 0
    for i, size in enumerate(sizes):
        header[f"layer_{i:04d}.weight"] = {"dtype": "F16", "shape": [size // 2],
                                           "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    tmp = out / "model.safetensors.part"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for size in sizes:
            for start in range(0, size, 8 << 20):
                n = min(8 << 20, size - start) // 2
                fh.write((rng.integers(0, 1 << 16, n, dtype=np.uint16) & 0xBFFF).tobytes())
    os.replace(tmp, out / "model.safetensors")


RECIPES: dict[str, Callable[..., None]] = {
    "sd_pipeline": build_sd_pipeline,
    "controlnet": build_controlnet,
    "lora": build_lora,
    "synthetic": build_synthetic,
}
