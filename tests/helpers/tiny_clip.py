"""A random SD1.5 text encoder (CLIP ViT-L/14 text tower, 768-d) saved as ComfyUI's ``text_encoders/clip_l``.

ComfyUI's CLIPLoader builds its own full-size CLIP-L and loads the file into it with ``strict=False``: keys it cannot
map are dropped with only a warning and the weights they name stay uninitialised, so the conditioning (and every
image made from it) turns NaN. The key names therefore must be exactly those of the released ``clip_l.safetensors``
(``text_model.…`` plus ``text_projection.weight``). They are written here from the architecture's shapes instead of
a transformers model's ``state_dict()``, whose names change between transformers releases (5.x drops the
``text_model.`` prefix). Random values (fp16 to halve the file); with ComfyUI's bundled tokenizer, CLIPTextEncode
then yields real (B, 77, 768) CONDITIONING.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def clip_l_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Released CLIP-L text-encoder keys and shapes, random weights at the usual initialisation scale."""
    from portrait_animation.loaders.checkpoint import embedded_config, strip_config

    cfg = strip_config(embedded_config("sd15_text_encoder"))
    dim, ffn, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    std = cfg.get("initializer_range", 0.02)
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape, scale=std):
        return torch.randn(*shape, generator=gen) * scale

    def layer_norm(prefix):
        return {f"{prefix}.weight": torch.ones(dim), f"{prefix}.bias": torch.zeros(dim)}

    def linear(prefix, out_features, in_features, bias=True):
        d = {f"{prefix}.weight": normal(out_features, in_features)}
        if bias:
            d[f"{prefix}.bias"] = torch.zeros(out_features)
        return d

    sd = {"text_model.embeddings.token_embedding.weight": normal(vocab, dim),
          "text_model.embeddings.position_embedding.weight": normal(cfg["max_position_embeddings"], dim, scale=0.01)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd.update(linear(f"{p}.self_attn.{proj}", dim, dim))
        sd.update(layer_norm(f"{p}.layer_norm1"))
        sd.update(layer_norm(f"{p}.layer_norm2"))
        sd.update(linear(f"{p}.mlp.fc1", ffn, dim))
        sd.update(linear(f"{p}.mlp.fc2", dim, ffn))
    sd.update(layer_norm("text_model.final_layer_norm"))
    sd.update(linear("text_projection", cfg["projection_dim"], dim, bias=False))
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def write_clip_l(models_dir: Path, seed: int = 0) -> Path:
    target = Path(models_dir) / "text_encoders" / "clip_l.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(clip_l_state_dict(seed), str(target))
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
