"""Small stand-in models laid out exactly like a user's ComfyUI models folder, for end-to-end runs without weights.

The networks come from the parity cases (materialised with the shared ``materialize.py``), so they have the
released key layout with tiny widths; the pack loads them through the same store and loaders as the real files.
Single-file models whose architecture would otherwise come from an embedded config (the VAE, wav2vec2) get a
``<name>.config.json`` beside them.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

RELEASED_CONFIG = {  # the released config.json of classes without registered arguments (72 bytes, as on the hub)
    "image_proj": '{\n  "_class_name": "ImageProjModel",\n  "_diffusers_version": "0.31.0"\n}\n',
    "audio_proj": '{\n  "_class_name": "AudioProjModel",\n  "_diffusers_version": "0.31.0"\n}\n',
}


def _materialize(parity_root: Path, case: str, out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("parity_materialize", parity_root / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.materialize(parity_root / "memo" / case / "weights.json", out)


def write_memo_models(models_dir: Path, parity_root: Path, seed: int = 0) -> dict:
    """Write MEMO's core + audio groups (tiny) under ``models_dir``; returns the sizes used."""
    models_dir = Path(models_dir)
    memo = models_dir / "portrait_animation" / "memo"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nets = _materialize(parity_root, "pipeline_short", tmp / "nets")
        for part in ("reference_net", "diffusion_net", "image_proj"):
            shutil.copytree(nets / part, memo / part, dirs_exist_ok=True)
        (memo / "image_proj" / "config.json").write_text(RELEASED_CONFIG["image_proj"])
        vae_dir = models_dir / "vae"
        vae_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(nets / "vae" / "diffusion_pytorch_model.safetensors", vae_dir / "sd-vae-ft-mse.safetensors")
        shutil.copy(nets / "vae" / "config.json", vae_dir / "sd-vae-ft-mse.config.json")

        speech = _materialize(parity_root, "audio_features_speech", tmp / "w2v") / "wav2vec2-base-960h-tiny"
        enc_dir = models_dir / "audio_encoders"
        enc_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(speech / "model.safetensors", enc_dir / "wav2vec2-base-960h.safetensors")
        shutil.copy(speech / "config.json", enc_dir / "wav2vec2-base-960h.config.json")
        w2v = json.loads((speech / "config.json").read_text())
        net = json.loads((nets / "diffusion_net" / "config.json").read_text())

    layers, hidden, token_dim, inter = w2v["num_hidden_layers"], w2v["hidden_size"], net["audio_attention_dim"], 64
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale):
        return (torch.rand(*shape, generator=gen) * 2 - 1) * scale

    flat = 5 * layers * hidden
    proj = {"proj1.weight": rand(inter, flat, scale=flat ** -0.5), "proj1.bias": rand(inter, scale=0.05),
            "proj2.weight": rand(inter, inter, scale=inter ** -0.5), "proj2.bias": rand(inter, scale=0.05),
            "proj3.weight": rand(32 * token_dim, inter, scale=inter ** -0.5), "proj3.bias": rand(32 * token_dim, scale=0.05),
            "norm.weight": 1 + rand(token_dim, scale=0.1), "norm.bias": rand(token_dim, scale=0.05)}
    (memo / "audio_proj").mkdir(parents=True, exist_ok=True)
    save_file(proj, memo / "audio_proj" / "diffusion_pytorch_model.safetensors")
    (memo / "audio_proj" / "config.json").write_text(RELEASED_CONFIG["audio_proj"])
    return {"wav2vec_layers": layers, "wav2vec_hidden": hidden, "audio_token_dim": token_dim}
