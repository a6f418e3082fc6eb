"""A random SD1.5 text encoder (CLIP ViT-L/14 text tower, 768-d) saved as ComfyUI's ``text_encoders/clip_l``.

ComfyUI's CLIPLoader builds its own full-size CLIP-L, so the stand-in has the real shape (random values, fp16 to
halve the file); with ComfyUI's bundled tokenizer, CLIPTextEncode then yields real (B, 77, 768) CONDITIONING.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def write_clip_l(models_dir: Path, seed: int = 0) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel

    from portrait_animation.loaders.checkpoint import embedded_config, strip_config

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(**{k: v for k, v in strip_config(embedded_config("sd15_text_encoder")).items()
                            if k not in ("architectures", "torch_dtype", "transformers_version")})
    model = CLIPTextModel(cfg)
    target = Path(models_dir) / "text_encoders" / "clip_l.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(target))
    return target


def widen_text_dim(unet_folder: Path, dim: int = 768, seed: int = 0) -> None:
    """Give a stand-in diffusers UNet folder ``cross_attention_dim = dim`` (new random attn2 key/value weights), so
    it accepts CONDITIONING from a real-shaped CLIP-L."""
    import json

    from safetensors.torch import load_file

    unet_folder = Path(unet_folder)
    weights = unet_folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    gen = torch.Generator().manual_seed(seed)
    for key, value in list(sd.items()):
        if key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            sd[key] = ((torch.rand(value.shape[0], dim, generator=gen) * 2 - 1) * dim ** -0.5).to(value.dtype)
    save_file(sd, str(weights))
    config = json.loads((unet_folder / "config.json").read_text())
    config["cross_attention_dim"] = dim
    (unet_folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
