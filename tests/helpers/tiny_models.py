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


# ---- HelloMeme v5 / v5b / v5c -----------------------------------------------------------------------------------------
HELLOMEME_TOKEN_DIM = 1024  # coefficient-token width of HM5ControlNetBase (kept: the ARKit face parts are 1024 wide)
HELLOMEME_CONTEXT_DIM = 64  # reduced control context width (released: 2048)


def _materialize_case(parity_root: Path, family: str, case: str, out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("parity_materialize", Path(parity_root) / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.materialize(Path(parity_root) / family / case / "weights.json", out)


def hellomeme_control_widths(block_out_channels) -> tuple[dict, dict]:
    """``(encoder config fields, projections)`` of HM5ControlNetBase / HM5SD15ControlProj that fit a UNet with these
    ``block_out_channels`` (SD1.5 (320, 640, 1280, 1280) gives exactly the released widths).

    Encoder: ``mid_channels`` = the first three UNet widths, ``out_channels`` = the first, so ``feat_0..3`` have
    (mid[2], mid[1], mid[0], out) channels. Projector: ``down3_i`` -> down block i's output width, ``up3_i`` -> up block
    i's input width; map names and the feat -> insertion point mapping stay the released ones.
    """
    from portrait_animation.sk_attention.control import CONTROL_PROJECTIONS

    c = list(block_out_channels)
    mid, out = tuple(c[:3]), c[0]
    feat = {"feat_0": mid[2], "feat_1": mid[1], "feat_2": mid[0], "feat_3": out}
    rev = c[::-1]
    target = {f"down3_{i}": c[i] for i in range(4)}
    target.update({f"up3_{i}": ([rev[0]] + rev[:3])[i] for i in range(4)})
    projections = {point: (f, name, feat[f], target[point]) for point, (f, name, _, _) in CONTROL_PROJECTIONS.items()}
    return {"mid_channels": mid, "out_channels": out}, projections


def _save_module(module: torch.nn.Module, folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_hellomeme_models(models_dir: Path, parity_root: Path, seed: int = 0) -> dict:
    """Write a tiny HelloMeme v5 / v5c set (and v5 video) under ``models_dir`` in the manifest layout.

    ``models_dir/portrait_animation/hellomeme/``: ``hm5_reference``, ``hm5_motion`` (from the parity case
    ``pipeline_v5_video``), ``hm5c_reference`` (``pipeline_v5c_image``), ``stable-diffusion-v1-5/{unet,vae}`` (the
    official SD1.5 stand-in, ``pipeline_v5_video``), ``hm5_control_base``, ``hm5_control_proj``, ``hm5c_control_proj``
    (random, widths fitting the UNet, released key names; the loader reads their widths from the tensor shapes) and
    ``pd_fgc_motion`` (the real-size FanEncoder, random). ``hm5b_reference`` is not written: the manifest knows its
    byte size, so a stand-in would be reported as corrupt. ``models_dir/checkpoints/hellomeme-tiny-sd15/{unet,vae}``
    is a user checkpoint (diffusers folder; the case's ``checkpoint`` weights) for the denoising UNet / decoding VAE.

    Returns the sizes to use: ``image_size`` (square side in pixels), ``text_dim`` (prompt embedding width),
    ``checkpoint`` (path of the user checkpoint folder), ``hellomeme`` (the hellomeme folder), ``unet_channels``.
    """
    from portrait_animation.motion.hellomeme.pdfgc import FanEncoder
    from portrait_animation.sk_attention.control import ControlEncoder, ControlEncoderConfig, ControlProjector

    models_dir = Path(models_dir)
    hm = models_dir / "portrait_animation" / "hellomeme"
    checkpoint = models_dir / "checkpoints" / "hellomeme-tiny-sd15"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = _materialize_case(parity_root, "hellomeme", "pipeline_v5_video", tmp / "v5")
        image = _materialize_case(parity_root, "hellomeme", "pipeline_v5c_image", tmp / "v5c")
        for part in ("hm5_reference", "hm5_motion"):
            shutil.copytree(video / "songkey" / part, hm / part, dirs_exist_ok=True)
        shutil.copytree(image / "songkey" / "hm5c_reference", hm / "hm5c_reference", dirs_exist_ok=True)
        for part in ("unet", "vae"):
            shutil.copytree(video / "songkey" / "stable-diffusion-v1-5" / part, hm / "stable-diffusion-v1-5" / part,
                            dirs_exist_ok=True)
            shutil.copytree(video / "checkpoint" / part, checkpoint / part, dirs_exist_ok=True)
    unet = json.loads((hm / "stable-diffusion-v1-5" / "unet" / "config.json").read_text())
    vae = json.loads((hm / "stable-diffusion-v1-5" / "vae" / "config.json").read_text())

    encoder_fields, projections = hellomeme_control_widths(unet["block_out_channels"])
    torch.manual_seed(seed)
    encoder = ControlEncoder(ControlEncoderConfig(cross_attention_dim=HELLOMEME_CONTEXT_DIM,
                                                  token_dim=HELLOMEME_TOKEN_DIM, **encoder_fields))
    # the released config.json fields; the other widths are read from the weights' shapes when loading
    _save_module(encoder, hm / "hm5_control_base", {"_class_name": "HM5ControlNetBase", "_diffusers_version": "0.33.1",
                                                    "cross_attention_dim": HELLOMEME_CONTEXT_DIM, "in_channels": 3})
    for repo in ("hm5_control_proj", "hm5c_control_proj"):
        _save_module(ControlProjector(projections), hm / repo,
                     {"_class_name": "HM5SD15ControlProj", "_diffusers_version": "0.33.1"})
    _save_module(FanEncoder().eval(), hm / "pd_fgc_motion",
                 {"_class_name": "FanEncoder", "_diffusers_version": "0.33.1", "pose_dim": 6, "eye_dim": 6})

    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return {"image_size": int(unet["sample_size"]) * factor, "text_dim": int(unet["cross_attention_dim"]),
            "checkpoint": checkpoint, "hellomeme": hm, "unet_channels": tuple(unet["block_out_channels"]),
            "control_context_dim": HELLOMEME_CONTEXT_DIM}
