"""The SVD-xt VAE from a Stable Video Diffusion single file (``svd_xt.safetensors``) computes what ComfyUI's own SVD
VAE computes with the same weights.

ComfyUI's SVD VAE (the Encoder + ``temporal_ae.VideoDecoder`` that ``comfy.sd.VAE`` builds when it sees
``decoder.mid.block_1.mix_factor``) is built in the install's own venv with small widths and random weights; its
state dict is written as an SVD single file (decoder under ``first_stage_model.``, encoder and ``quant_conv`` under
``conditioner.embedders.3.encoder.``, plus a UNet tensor that must not be read), together with ComfyUI's encoder and
decoder outputs on fixed inputs. The pack loads the file through :func:`hunyuan_portrait.vae.load_vae` and must give
the same encoder features and decoded frames. The real-size key layout is checked against the released diffusers
VAE's manifest (374 tensors, shapes included).
"""
from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from .comfy import comfy_python

SHARED_MANIFEST = "hunyuan_portrait/manifests/vae.diffusion_pytorch_model.fp16.safetensors.json"

COMFY_SIDE = textwrap.dedent('''
    import json, sys
    OUT, MODE = sys.argv[1], sys.argv[2]
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, ".")
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    from safetensors.torch import save_file
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    real = MODE == "real"
    enc = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
           "ch": 128 if real else 32, "ch_mult": [1, 2, 4, 4] if real else [1, 1, 2, 2],
           "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    dec = dict(enc, video_kernel_size=[3, 1, 1], alpha=0.0)   # what comfy.sd.VAE passes for SVD
    ctx = torch.device("meta") if real else torch.device("cpu")
    with ctx:
        m = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": enc},
            decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder", "params": dec})
    if real:
        json.dump({k: list(v.shape) for k, v in m.state_dict().items()}, open(OUT, "w"))
        sys.exit(0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.state_dict().items():   # comfy's ops skip weight init: give every tensor a value
            if name.endswith("mix_factor"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
        image = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
        latents = torch.randn(3, 4, 8, 8, generator=g)
        features = m.encoder(image)
        frames = m.decoder(latents)   # no timesteps: the whole batch is one clip, as comfy.sd.VAE decodes
    sd = {f"first_stage_model.{k}": v for k, v in m.state_dict().items() if k.startswith("decoder.")}
    sd.update({f"conditioner.embedders.3.encoder.{k}": v for k, v in m.state_dict().items() if k.startswith("encoder.")})
    quant = torch.randn(8, 8, 1, 1, generator=g) * 0.3
    sd["conditioner.embedders.3.encoder.quant_conv.weight"] = quant
    sd["conditioner.embedders.3.encoder.quant_conv.bias"] = torch.zeros(8)
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(4)
    save_file({k: v.contiguous() for k, v in sd.items()}, OUT)
    save_file({"image": image, "latents": latents, "features": features.contiguous(), "frames": frames.contiguous()},
              OUT + ".io.safetensors")
''')

TINY_CONFIG = {"_class_name": "AutoencoderKLTemporalDecoder", "block_out_channels": [32, 32, 64, 64],
               "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
               "latent_channels": 4, "layers_per_block": 2, "out_channels": 3, "sample_size": 64,
               "scaling_factor": 0.18215}


def _comfy(comfy_install, tmp_path, mode):
    script = tmp_path / "comfy_svd_vae.py"
    script.write_text(COMFY_SIDE)
    out = tmp_path / ("layout.json" if mode == "real" else "svd_xt.safetensors")
    r = subprocess.run([comfy_python(comfy_install), str(script), str(out), mode], cwd=comfy_install,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_svd_single_file_vae_matches_comfyui(comfy_install, tmp_path):
    from portrait_animation.hunyuan_portrait import vae as hp_vae

    path = _comfy(comfy_install, tmp_path, "tiny")
    io = load_file(str(path) + ".io.safetensors")
    model = hp_vae.load_vae(path, config=TINY_CONFIG, dtype=torch.float32)
    assert "SVD single-file" in " ".join(model.load_report.lines())
    with torch.no_grad():
        features = model.encoder(io["image"])
        frames = model.decode(io["latents"], num_frames=3).sample
        moments = model.quant_conv(features)
    torch.testing.assert_close(features, io["features"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(frames, io["frames"], rtol=1e-4, atol=1e-4)
    quant = load_file(str(path))["conditioner.embedders.3.encoder.quant_conv.weight"]
    torch.testing.assert_close(moments, torch.nn.functional.conv2d(features, quant))
    assert frames.std() > 0.01


def test_svd_single_file_layout_at_real_size(comfy_install, tmp_path, parity_root):
    from portrait_animation.hunyuan_portrait.svd_vae_ldm import convert_svd_vae

    layout = json.loads(_comfy(comfy_install, tmp_path, "real").read_text())
    layout.update({"quant_conv.weight": [8, 8, 1, 1], "quant_conv.bias": [8]})
    converted = convert_svd_vae({k: torch.empty(v, device="meta") for k, v in layout.items()})
    manifest = json.loads((parity_root / SHARED_MANIFEST).read_text())
    expected = {t["key"]: list(t["shape"]) for t in manifest["tensors"]}
    assert {k: list(v.shape) for k, v in converted.items()} == expected
