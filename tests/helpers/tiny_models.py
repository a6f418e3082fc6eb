"""Small stand-in models laid out exactly like a user's ComfyUI models folder, for end-to-end runs without weights.

The networks come from the parity cases (materialised with the shared ``materialize.py``), with tiny widths, and are
then written in the layouts of the RELEASED files (``specs/real_files.md``), not of the original classes:
sd-vae-ft-mse and the SD1.5 ``vae/`` folder with the pre-diffusers-0.14 attention names, wav2vec2-base-960h as the
212-tensor ``Wav2Vec2ForCTC`` file (``wav2vec2.`` prefix, ``lm_head.*``, ``weight_g``/``weight_v``, no
``masked_spec_embed``), HelloMeme configs with ``_name_or_path`` and one adapter in fp16. The pack loads them through
the same store and loaders as the real files. Single-file models whose architecture would otherwise come from an
embedded config (the VAE, wav2vec2) get a ``<name>.config.json`` beside them.

The ``*_layout`` functions rewrite a state dict of the pack's modules into a released layout; the tests of
``tests/test_real_files.py`` use them too.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


# ---- released layouts ---------------------------------------------------------------------------------------------
_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def legacy_vae_layout(sd: dict) -> dict:
    """diffusers AutoencoderKL keys -> the pre-0.14 names of sd-vae-ft-mse / the SD1.5 ``vae/`` folder
    (``mid_block.attentions.0.{query,key,value,proj_attn}``, 2-D Linear weights)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(.*\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", k)
        out[f"{m[1]}.{_LEGACY[m[2]]}.{m[3]}" if m else k] = v
    return out


def ldm_vae_name(name: str, n_blocks: int) -> str:
    """diffusers AutoencoderKL key -> ldm key (the inverse of diffusers' converter)."""
    name = name.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", name)
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
                  lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
                  lambda m: f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample", name)
    name = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", name)
    name = name.replace("mid_block.attentions.0", "mid.attn_1")
    for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        name = name.replace(f"attn_1.{a}.", f"attn_1.{b}.")
    return name


def ldm_vae_layout(sd: dict, n_blocks: int, prefix: str = "") -> dict:
    """diffusers AutoencoderKL keys -> ldm keys (``prefix`` ``first_stage_model.`` in a full checkpoint, none in
    ``vae-ft-mse-840000-ema-pruned``); the attention projections become 1x1 convs ``[C, C, 1, 1]`` as in ldm."""
    out = {}
    for k, v in sd.items():
        k2 = ldm_vae_name(k, n_blocks)
        if ".attn_1." in k2 and k2.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            v = v[:, :, None, None]
        out[prefix + k2] = v
    return out


def released_wav2vec2_layout(sd: dict, hidden: int, vocab: int = 32, parametrizations: bool = False) -> dict:
    """Encoder keys (parity case / the pack's module) -> facebook/wav2vec2-base-960h as released: ``wav2vec2.`` prefix,
    the CTC head ``lm_head.{weight [vocab, hidden], bias}``, no ``masked_spec_embed`` (212 tensors for the base model);
    ``parametrizations=True`` writes the weight norm as torch's parametrisation (files re-saved by newer
    transformers / ComfyUI)."""
    out = {}
    for k, v in sd.items():
        k = k[len("wav2vec2."):] if k.startswith("wav2vec2.") else k
        if k == "masked_spec_embed":
            continue
        if parametrizations:
            k = k.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
            k = k.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out["wav2vec2." + k] = v
    g = torch.Generator().manual_seed(1)
    out["lm_head.weight"] = torch.randn(vocab, hidden, generator=g) * 0.02
    out["lm_head.bias"] = torch.zeros(vocab)
    return out


def released_emotion2vec_layout(sd: dict, embed_dim: int) -> dict:
    """Emotion2VecModel keys -> emotion2vec_plus_large ``model.pt`` as reported: ``{"model": {d2v_model.* ...}}``, no
    pre-training decoder, the 9-way head ``proj.*`` kept."""
    model = {"d2v_model." + k: v for k, v in sd.items()}
    model["proj.weight"] = torch.zeros(9, embed_dim)
    model["proj.bias"] = torch.zeros(9)
    return {"model": model}

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
        # stabilityai/sd-vae-ft-mse as released: pre-0.14 attention names
        vae_sd = load_file(str(nets / "vae" / "diffusion_pytorch_model.safetensors"))
        save_file(legacy_vae_layout(vae_sd), str(vae_dir / "sd-vae-ft-mse.safetensors"))
        shutil.copy(nets / "vae" / "config.json", vae_dir / "sd-vae-ft-mse.config.json")

        speech = _materialize(parity_root, "audio_features_speech", tmp / "w2v") / "wav2vec2-base-960h-tiny"
        enc_dir = models_dir / "audio_encoders"
        enc_dir.mkdir(parents=True, exist_ok=True)
        w2v = json.loads((speech / "config.json").read_text())
        save_file(released_wav2vec2_layout(load_file(str(speech / "model.safetensors")), w2v["hidden_size"]),
                  str(enc_dir / "wav2vec2-base-960h.safetensors"))
        shutil.copy(speech / "config.json", enc_dir / "wav2vec2-base-960h.config.json")
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
    # released layouts: the SD1.5 vae/ folder with pre-0.14 attention names; configs with _name_or_path; hm5_motion
    # in fp16 (the released adapters are fp16 or fp32 by repository and revision)
    sd15_vae = hm / "stable-diffusion-v1-5" / "vae" / "diffusion_pytorch_model.safetensors"
    save_file(legacy_vae_layout(load_file(str(sd15_vae))), str(sd15_vae))
    for part in ("hm5_reference", "hm5_motion", "hm5c_reference"):
        cfg_path = hm / part / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.setdefault("_name_or_path", f"songkey/{part}")
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    motion = hm / "hm5_motion" / "diffusion_pytorch_model.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(motion)).items()}, str(motion))
    unet = json.loads((hm / "stable-diffusion-v1-5" / "unet" / "config.json").read_text())
    vae = json.loads((hm / "stable-diffusion-v1-5" / "vae" / "config.json").read_text())

    encoder_fields, projections = hellomeme_control_widths(unet["block_out_channels"])
    torch.manual_seed(seed)
    encoder = ControlEncoder(ControlEncoderConfig(cross_attention_dim=HELLOMEME_CONTEXT_DIM,
                                                  token_dim=HELLOMEME_TOKEN_DIM, **encoder_fields))
    # the released config.json fields; the other widths are read from the weights' shapes when loading
    _save_module(encoder, hm / "hm5_control_base", {"_class_name": "HM5ControlNetBase", "_diffusers_version": "0.33.1",
                                                    "_name_or_path": "songkey/hm5_control_base",
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


# ---- HelloMeme v1 to v4 ----------------------------------------------------------------------------------------------
def _standin_module(config: dict, folder: Path, saved_config: dict, half: bool = False) -> dict:
    """Build the module ``config`` describes with the pack's builder (random init, seeded by the caller), check that
    the loader reads the saved folder back to the same module (strict), and write it as a released folder:
    ``saved_config`` as config.json (the released fields only), the state dict (fp16 if ``half``) as
    ``diffusion_pytorch_model.safetensors``. Returns ``{key: shape}``."""
    from portrait_animation.sk_attention.adapters import build_hellomeme_module

    module = build_hellomeme_module(config, source=str(folder))
    sd = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    rebuilt = build_hellomeme_module(saved_config, source=str(folder), shapes=shapes)  # what the loader will build
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if got != shapes:
        raise AssertionError(f"{folder.name}: the loader would not rebuild the stand-in from config.json + shapes: "
                             f"{sorted(set(got.items()) ^ set(shapes.items()))[:6]}")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(saved_config, indent=2) + "\n")
    return shapes


def write_hellomeme_v1_v4_models(models_dir: Path, seed: int = 0) -> dict:
    """Write tiny HelloMeme v1, v2, v3 and v4 folders (image and video) under
    ``models_dir/portrait_animation/hellomeme/``, next to the set of :func:`write_hellomeme_models` (call that
    first: the widths follow its ``stable-diffusion-v1-5/unet``, and every version shares its SD1.5 stand-ins, user
    checkpoint and PD-FGC encoder).

    Repositories as released (``config.json`` with the released fields + ``diffusion_pytorch_model.safetensors``
    with the released key names; random weights from the pack's own modules at widths fitting the stand-in UNet):
    v1 ``hm_reference`` (version v1: down + mid + up), ``hm_control`` (ARKit), ``hm_control2`` (PD-FGC),
    ``hm_animatediff_frame12``; v2 ``hm2_reference``, ``hm2_control``, ``hm2_control2`` (class-name-only configs, as
    released), ``hm2_animatediff_frame12``; v3 ``hm3_reference``, ``hm3_control_mix``, ``hm3_motion``,
    ``hm3_animatediff``; v4 ``hm4_reference``, ``hm_control_base``, ``hm4_control_proj``, ``hm4_motion``,
    ``hm4_animatediff``. The AnimateDiff adapters are written in fp16 (as released). The v1-v3 control nets keep the
    released expression token width (320) and scale factors; their outputs have the UNet's widths (v1: after each
    down block; v2/v3: before each up block, v3 also its 1x1 maps to the first two down points). Returns the
    repository folders by name.
    """
    from portrait_animation.sk_attention.adapters import MotionAdapter, MotionAdapterConfig
    from portrait_animation.sk_attention.control import ControlProjector

    models_dir = Path(models_dir)
    hm = models_dir / "portrait_animation" / "hellomeme"
    unet = json.loads((hm / "stable-diffusion-v1-5" / "unet" / "config.json").read_text())
    c = list(unet["block_out_channels"])
    up = ([c[::-1][0]] + c[::-1][:3])  # input width of each up block (SD1.5: 1280, 1280, 1280, 640)
    temb = int(unet.get("time_embedding_dim") or 4 * c[0])  # the UNet's time embedding width (SD1.5: 1280)
    heads = 8
    version = "0.33.1"
    down_types, up_types = list(unet["down_block_types"]), list(unet["up_block_types"])
    written: dict[str, Path] = {}
    torch.manual_seed(seed)

    def put(repo: str, config: dict, saved: dict | None = None, half: bool = False):
        saved = saved if saved is not None else config
        saved = {"_class_name": config["_class_name"], "_diffusers_version": version,
                 "_name_or_path": f"songkey/{repo}", **{k: v for k, v in saved.items() if not k.startswith("_")}}
        _standin_module(config, hm / repo, saved, half=half)
        written[repo] = hm / repo

    # reference adapters: v1/v2 HMReferenceAdapter (UNet layout fields), v3/v4 HM3ReferenceAdapter
    for repo, ver in (("hm_reference", "v1"), ("hm2_reference", "v2")):
        put(repo, {"_class_name": "HMReferenceAdapter", "block_out_channels": c, "down_block_types": down_types,
                   "up_block_types": up_types, "num_attention_heads": heads, "version": ver})
    for repo in ("hm3_reference", "hm4_reference"):
        put(repo, {"_class_name": "HM3ReferenceAdapter", "block_down_channels": c, "block_up_channels": up,
                   "num_attention_heads": heads, "use_3d": False})
    # v1 control nets: the constructor's fields in config.json; outputs after down blocks 0..2
    v1 = {"block_out_channels": [max(8, c[0] // 2)] + c[:3], "cross_attention_dim": 320, "embedding_channels": 1280,
          "input_channels": 3, "scale_factor": 8}
    put("hm_control", {"_class_name": "HMControlNet", **v1})
    put("hm_control2", {"_class_name": "HMControlNet2", **v1})
    # v2/v3: class-name-only configs (widths from the weights), outputs before up blocks 3..0
    v2 = {"block_out_channels": [max(8, c[0] // 2)] + up[::-1]}
    put("hm2_control", {"_class_name": "HMV2ControlNet", **v2}, saved={})
    put("hm2_control2", {"_class_name": "HMV2ControlNet2", **v2}, saved={})
    put("hm3_control_mix", {"_class_name": "HMV3ControlNet", **v2, "down_projection_channels": c[:2]}, saved={})
    # v4: HMControlNetBase (in_channels + cross_attention_dim in config.json) and HM4SD15ControlProj (no fields)
    encoder_fields, projections = hellomeme_control_widths(c)
    base = {"in_channels": 3, "cross_attention_dim": HELLOMEME_CONTEXT_DIM}
    put("hm_control_base", {"_class_name": "HMControlNetBase", **base, **encoder_fields,
                            "token_dim": HELLOMEME_TOKEN_DIM}, saved=base)
    proj = ControlProjector(projections, attention=False)
    _save_released(proj, hm / "hm4_control_proj", {"_class_name": "HM4SD15ControlProj",
                                                   "_diffusers_version": version,
                                                   "_name_or_path": "songkey/hm4_control_proj"})
    written["hm4_control_proj"] = hm / "hm4_control_proj"
    # motion: HM3MotionAdapter (v3/v4; the time embedding width follows from time_emb_proj), AnimateDiff (fp16)
    for repo in ("hm3_motion", "hm4_motion"):
        module = MotionAdapter(MotionAdapterConfig(block_down_channels=tuple(c), block_up_channels=tuple(up),
                                                   num_attention_heads=heads, variant="v3", time_embed_dim=temb))
        _save_released(module, hm / repo, {"_class_name": "HM3MotionAdapter", "_diffusers_version": version,
                                           "_name_or_path": f"songkey/{repo}", "block_down_channels": c,
                                           "block_up_channels": up, "num_attention_heads": heads, "use_3d": True})
        written[repo] = hm / repo
    animatediff = {"_class_name": "MotionAdapter", "block_out_channels": c, "conv_in_channels": None,
                   "motion_layers_per_block": unet.get("layers_per_block", 2), "motion_max_seq_length": 32,
                   "motion_mid_block_layers_per_block": 1, "motion_norm_num_groups": unet.get("norm_num_groups", 32),
                   "motion_num_attention_heads": heads, "motion_transformer_layers_per_block": 1,
                   "motion_transformer_layers_per_mid_block": 1, "use_motion_mid_block": False}
    for repo in ("hm_animatediff_frame12", "hm2_animatediff_frame12", "hm3_animatediff", "hm4_animatediff"):
        put(repo, animatediff, half=True)
    return written


def _save_released(module: torch.nn.Module, folder: Path, config: dict) -> None:
    """A module built directly (its width fields are not config.json fields) saved as a released folder, checked to
    load back strictly through the pack's loader."""
    from portrait_animation.sk_attention.adapters import load_hellomeme_module

    _save_module(module, folder, config)
    load_hellomeme_module(folder)


# ---- HunyuanPortrait ------------------------------------------------------------------------------------------------
def write_arcface_standin(path: Path, seed: int = 0) -> Path:
    """A small ONNX network with ArcFace's interface: input ``data`` (1, 3, 112, 112) -> (1, 512). 8 x 8 average
    pooling, then a random linear map with a tanh in between, so different faces give different embeddings."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((14 * 14 * 3, 256)).astype(np.float32) * (3 / (14 * 14 * 3)) ** 0.5
    w2 = rng.standard_normal((256, 512)).astype(np.float32) * (1 / 256) ** 0.5
    nodes = [helper.make_node("AveragePool", ["data"], ["pool"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
             helper.make_node("Sub", ["flat", "half"], ["centred"]),
             helper.make_node("MatMul", ["centred", "w1"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["fc1"])]
    graph = helper.make_graph(nodes, "arcface_standin",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 512])],
                              [numpy_helper.from_array(np.float32(0.5).reshape(()), "half"),
                               numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_hunyuan_models(models_dir: Path, parity_root: Path) -> dict:
    """Write HunyuanPortrait in the manifest layout under ``models_dir`` from the parity case ``e2e_inference``
    (the official file layout: ``hyportrait/*.pth`` as pickled state dicts with a small UNet, real-size DINOv2 and
    motion networks; the small UNet's ``unet/config.json`` beside ``hyportrait/``), the SVD VAE stand-in as
    ``vae/svd_xt_vae.fp16.safetensors`` with a ``svd_xt_vae.config.json`` sidecar, the YOLOv5-face TorchScript
    stand-in and a small ArcFace ONNX network. Returns the crop ``size`` the small UNet works at."""
    from helpers.tiny_hunyuan import write_yolo_standin

    models_dir = Path(models_dir)
    root = models_dir / "portrait_animation" / "hunyuan_portrait"
    case = _materialize_case(parity_root, "hunyuan_portrait", "e2e_inference", root)
    assert case == root or Path(case) == root
    vae_dir = models_dir / "vae"
    vae_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(root / "vae" / "diffusion_pytorch_model.fp16.safetensors"), vae_dir / "svd_xt_vae.fp16.safetensors")
    shutil.move(str(root / "vae" / "config.json"), vae_dir / "svd_xt_vae.config.json")
    shutil.rmtree(root / "vae")
    write_yolo_standin(root / "yoloface_v5m.pt")
    write_arcface_standin(root / "arcface.onnx")
    settings = json.loads((parity_root / "hunyuan_portrait" / "e2e_inference" / "case.json").read_text())["settings"]
    return {"root": root, "size": int(settings["width"])}


# ---- metrics --------------------------------------------------------------------------------------------------------
def write_syncnet_standin(path: Path, seed: int = 0) -> Path:
    """Random weights in the released ``syncnet_v2.model`` layout: the state_dict of joonson/syncnet_python's ``S``
    (no BatchNorm step counters, as torch of 2017 saved it), in torch's legacy (non-zip) format. He-scaled weights
    and running statistics that keep the activations in range, so embeddings differ between inputs."""
    from portrait_animation.metrics.syncnet import SyncNet, required_keys

    torch.manual_seed(seed)
    model = SyncNet()
    state = model.state_dict()
    out = {}
    for key in required_keys(model):
        t = state[key]
        if key.endswith("running_mean"):
            t = torch.zeros_like(t)
        elif key.endswith("running_var"):
            t = torch.full_like(t, 1e4 if key.startswith(("netcnnaud.1.", "netcnnlip.1.")) else 1.0)
        elif key.endswith("weight") and t.ndim > 1:
            t = torch.randn_like(t) * (2.0 / t[0].numel()) ** 0.5
        out[key] = t.clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, str(path), _use_new_zipfile_serialization=False)
    return path
