"""The released files, in their real layouts (``specs/real_files.md`` §5), loaded through the functions the nodes use.

One test per HelloMeme / MEMO / shared row of §5. Each writes a small fixture in the layout the audit established for
the released file (tiny configs where the loader takes one), loads it through the same call the nodes make, and checks
that the weights arrive (after conversion), that the report and the log name what was dropped, that a missing key
fails naming the file and the key, and that an unknown extra key only warns.

Row 10 (hello_group_facemodel ONNX, positional outputs) is covered by
``tests/test_hellomeme_conditions.py::test_onnx_models_run_through_onnxruntime``: its tiny graphs have arbitrary
input / output names (``x``, ``cls0``, ``landmark`` ...) and the toolkit reads the input name from the session and uses
the output order. Rows 11, 12 and 14 (HunyuanPortrait, SVD) are outside this file.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from helpers.tiny_models import (ldm_vae_layout, legacy_vae_layout, released_emotion2vec_layout,
                                 released_wav2vec2_layout)
from helpers.tiny_sd15 import UNET, VAE, tiny_unet, tiny_vae
from parity import runner
from portrait_animation.loaders.checkpoint import CheckpointKeyError

POLICY_LOG = "portrait_animation.loaders.policy"

CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, vocab_size=99, projection_dim=32, hidden_act="quick_gelu")


# ---- helpers --------------------------------------------------------------------------------------------------------
def randomised(module: torch.nn.Module, seed: int) -> dict:
    """The module's state dict with every floating tensor replaced by seeded random values (integers kept)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * 0.1 if v.is_floating_point() else v.clone())
            for k, v in module.state_dict().items()}


def assert_loaded(module: torch.nn.Module, expected: dict, dtype: torch.dtype | None = None) -> None:
    """Every key of ``expected`` is in the module with exactly that value (in ``dtype`` if given)."""
    got = module.state_dict()
    missing = sorted(set(expected) - set(got))
    assert not missing, missing[:5]
    for k, v in expected.items():
        want = v.to(dtype) if dtype is not None and v.is_floating_point() else v
        assert got[k].dtype == want.dtype, (k, got[k].dtype, want.dtype)
        assert torch.equal(got[k], want), k


def dropped(report, words: str) -> list[str]:
    """The keys the report dropped under a reason that contains ``words``."""
    return [k for reason, keys in report.dropped.items() if words in reason for k in keys]


def warned(caplog, key: str) -> bool:
    return any(r.levelno == logging.WARNING and key in r.getMessage() for r in caplog.records)


def logged(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


def tiny_clip(seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**CLIP)).eval()


@pytest.fixture
def sd15_configs(monkeypatch):
    """The loaders' embedded SD1.5 configs replaced by tiny ones (what load_sd15 / load_vae_file fall back to)."""
    from portrait_animation.sk_attention import base_models

    cfgs = {"sd15_unet": dict(UNET), "sd15_vae": dict(VAE), "sd15_text_encoder": dict(CLIP)}
    monkeypatch.setattr(base_models, "embedded_config", lambda name: dict(cfgs[name]))
    return cfgs


def vae_state(seed=3) -> dict:
    return randomised(tiny_vae(), seed)


# ---- row 1: facebook/wav2vec2-base-960h (model.safetensors / pytorch_model.bin) --------------------------------------
W2V_CONFIG = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
              "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 2, 2], "conv_bias": False,
              "feat_extract_norm": "group", "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 4,
              "architectures": ["Wav2Vec2ForCTC"], "vocab_size": 32}


def test_wav2vec2_released_file_has_212_tensors():
    """The base config's encoder + the CTC head is the released 212-tensor file: no ``masked_spec_embed``."""
    from portrait_animation.audio import wav2vec as w2v
    from portrait_animation.loaders.checkpoint import embedded_config

    cfg = w2v.Wav2Vec2Config.from_dict(embedded_config(w2v.EMBEDDED_CONFIG))
    with torch.device("meta"):
        keys = w2v.Wav2Vec2Encoder(cfg).state_dict()
    assert len(keys) + 2 == 212 and "masked_spec_embed" not in keys


@pytest.mark.parametrize("fmt,parametrizations", [("model.safetensors", False), ("pytorch_model.bin", False),
                                                  ("model.safetensors", True)])
def test_row1_wav2vec2(tmp_path, caplog, fmt, parametrizations):
    from portrait_animation.audio import wav2vec as w2v

    cfg = w2v.Wav2Vec2Config.from_dict(W2V_CONFIG)
    expected = randomised(w2v.Wav2Vec2Encoder(cfg), 11)
    released = released_wav2vec2_layout(expected, cfg.hidden_size, parametrizations=parametrizations)
    assert not any("masked_spec_embed" in k for k in released) and "lm_head.weight" in released

    def write(sd, folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(W2V_CONFIG))
        if fmt.endswith(".bin"):
            torch.save(sd, folder / fmt)
        else:
            save_file(sd, str(folder / fmt))
        return folder

    folder = write(released, tmp_path / "wav2vec2-base-960h")
    with caplog.at_level(logging.INFO, logger=POLICY_LOG):
        model = w2v.load_wav2vec2(folder)                       # the released folder
    assert_loaded(model, expected)
    report = model.load_report
    assert sorted(dropped(report, "CTC head")) == ["lm_head.bias", "lm_head.weight"]
    assert report.file_dtype == "float32" and logged(caplog, "lm_head")
    if parametrizations:
        assert any("weight-norm" in c for c in report.converted)
    # the MEMO pipeline's call: one file with its config beside it
    single = w2v.load_wav2vec2(folder / fmt, config=W2V_CONFIG)
    assert_loaded(single, expected)
    # a file that has the training-only embedding (re-saved by transformers) loads too, and says so
    with_mask = dict(released, **{"wav2vec2.masked_spec_embed": torch.zeros(cfg.hidden_size)})
    m = w2v.load_wav2vec2(write(with_mask, tmp_path / "with_mask"))
    assert dropped(m.load_report, "SpecAugment") == ["masked_spec_embed"]
    # unknown extra: a warning naming it, the load goes on
    caplog.clear()
    extra = dict(released, **{"wav2vec2.encoder.adapter.weight": torch.zeros(3)})
    with caplog.at_level(logging.WARNING):
        m = w2v.load_wav2vec2(write(extra, tmp_path / "extra"))
    assert warned(caplog, "encoder.adapter.weight") and m.load_report.unexpected == ["encoder.adapter.weight"]
    # missing: an error naming the file and the key
    broken = {k: v for k, v in released.items() if k != "wav2vec2.encoder.layers.1.attention.q_proj.weight"}
    folder = write(broken, tmp_path / "broken")
    with pytest.raises(CheckpointKeyError) as e:
        w2v.load_wav2vec2(folder)
    assert str(folder / fmt) in str(e.value) and "encoder.layers.1.attention.q_proj.weight" in str(e.value)
    assert "wrong file or version" in str(e.value)


# ---- row 2: emotion2vec_plus_large model.pt --------------------------------------------------------------------------
E2V_CONF = {
    "embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "norm_eps": "1e-05", "norm_affine": True,
    "layer_norm_first": False, "end_of_block_targets": False,
    "modalities": {"audio": {
        "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 2", "extractor_mode": "layer_norm",
        "conv_pos_width": 9, "conv_pos_groups": 4, "conv_pos_depth": 3, "conv_pos_pre_ln": False, "prenet_depth": 1,
        "num_extra_tokens": 2, "init_extra_token_zero": True, "use_alibi_encoder": True, "alibi_scale": 1.0,
        "learned_alibi": False, "learned_alibi_scale": True, "learned_alibi_scale_per_head": True,
        "learned_alibi_scale_per_layer": False, "num_alibi_heads": 4, "model_depth": 2, "decoder": None}},
}


def test_row2_emotion2vec(tmp_path, caplog):
    from portrait_animation.audio import emotion2vec as e2v

    cfg = e2v.Emotion2VecConfig.from_model_conf(E2V_CONF)
    expected = randomised(e2v.Emotion2VecModel(cfg), 12)
    released = released_emotion2vec_layout(expected, cfg.embed_dim)
    assert all(k.startswith(("d2v_model.", "proj.")) for k in released["model"])
    assert not any(".decoder." in k for k in released["model"])  # the plus models have no pre-training decoder

    def write(checkpoint, folder, scope_map=None):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, folder / "model.pt")
        conf = {"model": "Emotion2vec", "model_conf": E2V_CONF}
        if scope_map is not None:
            conf["scope_map"] = scope_map
        (folder / "config.yaml").write_text(yaml.safe_dump(conf))
        return folder

    folder = write(released, tmp_path / "emotion2vec_plus_large")
    with caplog.at_level(logging.INFO, logger=POLICY_LOG):
        model = e2v.load_emotion2vec(folder)                     # what the MEMO pipeline calls
    assert_loaded(model, expected)
    report = model.load_report
    assert sorted(dropped(report, "classification head")) == ["proj.bias", "proj.weight"]
    assert any("d2v_model." in c for c in report.converted) and logged(caplog, "proj.")
    # a training checkpoint: optimizer state beside "model" is dropped and reported; scope_map prefixes honoured
    moved = {"model": {k.replace("d2v_model.", "backbone.", 1): v for k, v in released["model"].items()},
             "optimizer": {"state": {}}, "num_updates": torch.tensor(5)}
    m = e2v.load_emotion2vec(write(moved, tmp_path / "scoped", scope_map=["backbone.", "none"]))
    assert_loaded(m, expected)
    assert set(dropped(m.load_report, "beside 'model'")) == {"optimizer", "num_updates"}
    # unknown extra: warned; missing: error naming the file and key
    caplog.clear()
    extra = {"model": dict(released["model"], **{"d2v_model.adapter.weight": torch.zeros(2)})}
    with caplog.at_level(logging.WARNING):
        e2v.load_emotion2vec(write(extra, tmp_path / "extra"))
    assert warned(caplog, "adapter.weight")
    broken = {"model": {k: v for k, v in released["model"].items() if k != "d2v_model.blocks.1.attn.qkv.weight"}}
    folder = write(broken, tmp_path / "broken")
    with pytest.raises(CheckpointKeyError) as e:
        e2v.load_emotion2vec(folder)
    assert str(folder / "model.pt") in str(e.value) and "blocks.1.attn.qkv.weight" in str(e.value)


# ---- rows 3, 4 and 6: the VAE files --------------------------------------------------------------------------------
def _save_folder(folder: Path, sd: dict, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2",
                                                    **config}))
    return folder


def test_row3_sd_vae_ft_mse_diffusers_legacy_names(tmp_path, caplog):
    from portrait_animation.sk_attention.base_models import load_vae_file

    expected = vae_state()
    legacy = legacy_vae_layout(expected)
    assert "decoder.mid_block.attentions.0.query.weight" in legacy and legacy != expected
    folder = _save_folder(tmp_path / "stabilityai" / "sd-vae-ft-mse", legacy, VAE)
    with caplog.at_level(logging.INFO, logger=POLICY_LOG):
        vae = load_vae_file(folder)                                     # a models/vae folder
    assert_loaded(vae, expected)
    assert any("legacy attention names" in c and ": 16 keys" in c for c in vae.load_report.converted)
    assert logged(caplog, "legacy attention names")
    # the MEMO pipeline's call: the file with its sidecar config
    single = load_vae_file(folder / "diffusion_pytorch_model.safetensors", config=dict(VAE))
    assert_loaded(single, expected)
    # unknown extra warns; missing key fails naming the file
    caplog.clear()
    save_file(dict(legacy, **{"decoder.extra.weight": torch.zeros(1)}), str(tmp_path / "extra.safetensors"))
    with caplog.at_level(logging.WARNING):
        load_vae_file(tmp_path / "extra.safetensors", config=dict(VAE))
    assert warned(caplog, "decoder.extra.weight")
    save_file({k: v for k, v in legacy.items() if not k.endswith("mid_block.attentions.0.key.weight")},
              str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointKeyError) as e:
        load_vae_file(tmp_path / "broken.safetensors", config=dict(VAE))
    assert "broken.safetensors" in str(e.value) and "mid_block.attentions.0.to_k.weight" in str(e.value)


@pytest.mark.parametrize("variant", ["legacy fp32", "new fp16"])
def test_row4_sd15_diffusers_vae_folder(tmp_path, sd15_configs, variant):
    """songkey/stable-diffusion-v1-5: the vae/ folder in the old names, or the fp16 variant in the new ones."""
    from portrait_animation.sk_attention.base_models import load_sd15

    unet_sd, vae_sd = randomised(tiny_unet(), 1), vae_state()
    root = tmp_path / "stable-diffusion-v1-5"
    unet_dir = root / "unet"
    unet_dir.mkdir(parents=True)
    save_file(unet_sd, str(unet_dir / "diffusion_pytorch_model.safetensors"))
    (unet_dir / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **UNET}))
    if variant == "legacy fp32":
        _save_folder(root / "vae", legacy_vae_layout(vae_sd), VAE)
        dtype = torch.float32
    else:
        _save_folder(root / "vae", {k: v.half() for k, v in vae_sd.items()}, VAE)
        dtype = torch.float16
    parts = load_sd15(root, parts=("unet", "vae"))                       # HelloMeme's official SD1.5 path
    assert_loaded(parts.unet, unet_sd)
    assert_loaded(parts.vae, vae_sd, dtype=dtype)                        # the file's dtype, nothing cast
    assert parts.report.parts["vae"].file_dtype == str(dtype).replace("torch.", "")
    assert bool(parts.vae.load_report.converted) == (variant == "legacy fp32")


@pytest.mark.parametrize("prefix,container", [("", "safetensors"), ("", "ckpt"), ("first_stage_model.", "safetensors")])
def test_row6_vae_ft_mse_840000_ema_pruned(tmp_path, caplog, prefix, container):
    """LDM layout with or without ``first_stage_model.``, 1x1-conv attention, ``loss.*`` and ``model_ema.*`` extras."""
    from portrait_animation.sk_attention.base_models import load_vae_file

    expected = vae_state()
    ldm = ldm_vae_layout(expected, len(VAE["block_out_channels"]), prefix=prefix)
    assert ldm[f"{prefix}decoder.mid.attn_1.q.weight"].ndim == 4
    ldm.update({"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4),
                "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(840000)})
    if container == "ckpt":
        path = tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt"
        torch.save({"state_dict": ldm}, path)
    else:
        path = tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"
        save_file(ldm, str(path))
    with caplog.at_level(logging.INFO, logger=POLICY_LOG):
        vae = load_vae_file(path, config=dict(VAE))                     # MEMO's VAE call
    assert_loaded(vae, expected)
    report = vae.load_report
    assert sorted(dropped(report, "loss")) == ["loss.discriminator.main.0.weight", "loss.logvar"]
    assert sorted(dropped(report, "schedule")) == ["model_ema.decay", "model_ema.num_updates"]
    assert any("ldm VAE layout" in c for c in report.converted) and logged(caplog, "loss.")
    assert not report.unexpected
    del ldm[f"{prefix}encoder.conv_in.weight"]
    save_file(ldm, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointKeyError) as e:
        load_vae_file(tmp_path / "broken.safetensors", config=dict(VAE))
    assert "broken.safetensors" in str(e.value) and "encoder.conv_in.weight" in str(e.value)


# ---- row 5: SD1.5 single files (v1-5-pruned-emaonly[-fp16], v1-5-pruned) ---------------------------------------------
SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
            "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def _ldm_single_file(unet_sd, vae_sd, clip_sd, text_model_level: bool, ema: bool, half: bool) -> dict:
    from portrait_animation.sk_attention.base_models import diffusers_to_ldm_unet_name

    out = {"model.diffusion_model." + diffusers_to_ldm_unet_name(k, UNET): v for k, v in unet_sd.items()}
    out.update(ldm_vae_layout(vae_sd, len(VAE["block_out_channels"]), prefix="first_stage_model."))
    for k, v in clip_sd.items():  # the released names carry text_model. (whatever the installed transformers does)
        name = k[len("text_model."):] if k.startswith("text_model.") else k
        out["cond_stage_model.transformer." + ("text_model." if text_model_level else "") + name] = v
    out["cond_stage_model.transformer.text_model.embeddings.position_ids" if text_model_level else
        "cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77, dtype=torch.float32)[None]
    out.update({name: torch.linspace(0.1, 0.9, 10) for name in SCHEDULE})
    if ema:  # non-emaonly files: dot-less EMA names
        out.update({"model_ema." + k.replace("model.", "", 1).replace(".", ""): v.clone()
                    for k, v in list(out.items()) if k.startswith("model.diffusion_model.")})
        out["model_ema.decay"], out["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(1, dtype=torch.int)
    if half:
        out = {k: (v.half() if v.is_floating_point() else v) for k, v in out.items()}
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("name,text_model_level,ema,half", [
    ("v1-5-pruned-emaonly.safetensors", True, False, False),
    ("v1-5-pruned-emaonly.safetensors", False, False, True),     # fp16 under the fp32 name, no text_model. level
    ("v1-5-pruned-emaonly-fp16.safetensors", True, False, True),
    ("v1-5-pruned.safetensors", True, True, False),
])
def test_row5_sd15_single_files(tmp_path, caplog, sd15_configs, name, text_model_level, ema, half):
    from portrait_animation.sk_attention.base_models import load_sd15

    unet_sd, vae_sd = randomised(tiny_unet(), 1), vae_state()
    clip_sd = {k: v for k, v in randomised(tiny_clip(), 2).items() if not k.endswith("position_ids")}
    path = tmp_path / name
    save_file(_ldm_single_file(unet_sd, vae_sd, clip_sd, text_model_level, ema, half), str(path))
    dtype = torch.float16 if half else torch.float32
    with caplog.at_level(logging.INFO, logger=POLICY_LOG):
        parts = load_sd15(path, parts=("unet", "vae", "text_encoder"))   # what load_hellomeme does with a checkpoint
    assert_loaded(parts.unet, unet_sd, dtype=dtype)
    assert_loaded(parts.vae, vae_sd, dtype=dtype)
    assert_loaded(parts.text_encoder, clip_sd, dtype=dtype)
    report = parts.report
    assert report.file_dtype == str(dtype).replace("torch.", "")        # from the tensors, not from the name
    assert set(SCHEDULE) <= set(dropped(report, "schedule"))
    assert bool(dropped(report, "EMA copy")) == ema and not report.unexpected
    assert dropped(report.parts["text_encoder"], "position_ids")
    assert logged(caplog, "schedule") and (not ema or logged(caplog, "model_ema"))
    # unknown extra: warned, not fatal; missing UNet key: the error names the file and the key
    sd = load_file(str(path))
    sd["conditioner.extra.weight"] = torch.zeros(2)
    save_file(sd, str(path))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_sd15(path, parts=("vae",)).vae is not None
    assert warned(caplog, "conditioner.extra.weight")
    del sd["model.diffusion_model.out.2.weight"]
    save_file(sd, str(path))
    with pytest.raises(CheckpointKeyError) as e:
        load_sd15(path, parts=("unet",))
    assert name in str(e.value) and "conv_out.weight" in str(e.value)


# ---- row 7: pd_fgc_motion -------------------------------------------------------------------------------------------
def test_row7_pd_fgc_motion(tmp_path, caplog):
    from portrait_animation.motion.hellomeme import pdfgc

    expected = randomised(pdfgc.FanEncoder(), 7)
    assert any(k.endswith("running_var") for k in expected)
    released = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}  # counters omitted
    g = torch.Generator().manual_seed(0)
    released.update({"to_headpose.0.weight": torch.randn(512, 512, generator=g),
                     "to_headpose.0.bias": torch.zeros(512),
                     "headpose_embed.1.weight": torch.randn(6, 512, generator=g),
                     "headpose_embed.1.bias": torch.zeros(6)})

    def write(sd, folder):
        folder.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"_class_name": "FanEncoder", "_diffusers_version": "0.33.1",
                                                        "pose_dim": 6, "eye_dim": 6}))
        return folder

    folder = write(released, tmp_path / "pd_fgc_motion")
    with caplog.at_level(logging.INFO, logger=POLICY_LOG):
        enc = pdfgc.load_fan_encoder(folder)
    assert_loaded(enc, {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")})
    report = enc.load_report
    assert sorted(dropped(report, "head pose")) == sorted(k for k in released if "headpose" in k)
    assert report.filled and all(k.endswith("num_batches_tracked") for k in report.filled)
    assert logged(caplog, "to_headpose")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pdfgc.load_fan_encoder(write(dict(released, **{"to_pose.weight": torch.zeros(2)}), tmp_path / "extra"))
    assert warned(caplog, "to_pose.weight")
    broken = write({k: v for k, v in released.items() if k != "emo_embed.1.weight"}, tmp_path / "broken")
    with pytest.raises(CheckpointKeyError) as e:
        pdfgc.load_fan_encoder(broken)
    assert "broken" in str(e.value) and "emo_embed.1.weight" in str(e.value)


# ---- rows 8 and 13: MEMO folders ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def memo_nets(tmp_path_factory) -> Path:
    root = runner.parity_root()
    if not root.is_dir():
        pytest.fail(f"parity root {root} not found (set PARITY_ROOT)")
    out = tmp_path_factory.mktemp("memo_nets")
    return runner._materialize_module(root).materialize(root / "memo" / "pipeline_short" / "weights.json", out)


def test_row8_memo_diffusion_net_with_and_without_pe(tmp_path, memo_nets):
    from portrait_animation.memo.loading import load_diffusion_net

    folder = memo_nets / "diffusion_net"
    sd = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    pe = [k for k in sd if k.endswith("pos_encoder.pe")]
    assert pe, "the parity diffusion_net is expected to carry the PE buffers"
    net = load_diffusion_net(folder)
    assert_loaded(net, sd)
    without = tmp_path / "diffusion_net"
    without.mkdir()
    shutil.copy(folder / "config.json", without / "config.json")
    save_file({k: v for k, v in sd.items() if k not in pe}, str(without / "diffusion_pytorch_model.safetensors"))
    net = load_diffusion_net(without)
    assert not [k for k in net.state_dict() if k.endswith("pos_encoder.pe")]
    assert_loaded(net, {k: v for k, v in sd.items() if k not in pe})


def test_row13_memo_strict_folders(tmp_path, caplog, memo_nets):
    """reference_net, image_proj, audio_proj, emotion classifier: fp32 folders whose keys equal the classes'."""
    from portrait_animation.memo import loading
    from portrait_animation.memo.emotion_classifier import EmotionClassifier

    root = tmp_path / "memo"
    for part in ("reference_net", "image_proj"):
        shutil.copytree(memo_nets / part, root / part)
    (root / "image_proj" / "config.json").write_text(
        '{\n  "_class_name": "ImageProjModel",\n  "_diffusers_version": "0.31.0"\n}\n')  # the released 72 B config
    audio = {"proj1.weight": torch.randn(8, 40), "proj1.bias": torch.zeros(8), "proj2.weight": torch.randn(8, 8),
             "proj2.bias": torch.zeros(8), "proj3.weight": torch.randn(32 * 4, 8), "proj3.bias": torch.zeros(32 * 4),
             "norm.weight": torch.ones(4), "norm.bias": torch.zeros(4)}
    (root / "audio_proj").mkdir()
    save_file(audio, str(root / "audio_proj" / "diffusion_pytorch_model.safetensors"))
    (root / "audio_proj" / "config.json").write_text(
        '{"_class_name": "AudioProjModel", "_diffusers_version": "0.31.0"}')
    classifier = randomised(EmotionClassifier(), 4)
    emotion = root / "misc" / "audio_emotion_classifier"
    emotion.mkdir(parents=True)
    save_file(classifier, str(emotion / "diffusion_pytorch_model.safetensors"))
    (emotion / "config.json").write_text('{"_class_name": "AudioEmotionClassifierModel"}')

    parts = ("reference_net", "image_proj", "audio_proj", "emotion_classifier")
    models = loading.load_memo(root, parts=parts)                         # what load_memo_bundle calls, part by part
    for part, folder in (("reference_net", "reference_net"), ("image_proj", "image_proj"), ("audio_proj", "audio_proj"),
                         ("emotion_classifier", "misc/audio_emotion_classifier")):
        expected = load_file(str(root / folder / "diffusion_pytorch_model.safetensors"))
        module = getattr(models, part)
        assert_loaded(module, expected)
        assert module.load_report.file_dtype == "float32" and not module.load_report.dropped
    # an extra key warns (diffusers did the same), a missing key fails naming the file
    ref = root / "reference_net" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(ref))
    save_file(dict(sd, **{"extra_head.weight": torch.zeros(1)}), str(ref))
    with caplog.at_level(logging.WARNING):
        loading.load_reference_net(root / "reference_net")
    assert warned(caplog, "extra_head.weight")
    victim = sorted(sd)[0]
    save_file({k: v for k, v in sd.items() if k != victim}, str(ref))
    with pytest.raises(CheckpointKeyError) as e:
        loading.load_reference_net(root / "reference_net")
    assert str(ref) in str(e.value) and victim in str(e.value)


# ---- row 9: HelloMeme hm* adapters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_row9_hellomeme_adapters(tmp_path, caplog, dtype):
    from helpers.tiny_models import hellomeme_control_widths
    from portrait_animation.sk_attention.adapters import build_hellomeme_module, load_hellomeme_module
    from portrait_animation.sk_attention.control import ControlProjector

    config = {"_class_name": "HM5bReferenceAdapter", "_diffusers_version": "0.33.1",
              "_name_or_path": "songkey/hm5b_reference", "block_down_channels": [8, 8, 8, 8],
              "block_up_channels": [16, 16, 16, 8], "num_attention_heads": 8, "use_3d": False}
    expected = {k: v.to(dtype) for k, v in randomised(build_hellomeme_module(config), 5).items()}
    folder = tmp_path / "hm5b_reference"
    folder.mkdir()
    save_file(expected, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    module = load_hellomeme_module(folder)
    assert_loaded(module, expected)                                      # the file's dtype, nothing cast
    assert module.load_report.file_dtype == str(dtype).replace("torch.", "")
    assert_loaded(load_hellomeme_module(folder, dtype=torch.float32), expected, dtype=torch.float32)
    # a control projector with the released class-name-only config
    _, projections = hellomeme_control_widths((32, 32, 64, 64))
    proj_sd = {k: v.to(dtype) for k, v in randomised(ControlProjector(projections), 6).items()}
    pfolder = tmp_path / "hm5c_control_proj"
    pfolder.mkdir()
    save_file(proj_sd, str(pfolder / "diffusion_pytorch_model.safetensors"))
    (pfolder / "config.json").write_text('{"_class_name": "HM5SD15ControlProj", "_diffusers_version": "0.33.1"}')
    assert_loaded(load_hellomeme_module(pfolder), proj_sd)
    # extra warns, missing fails naming the folder and key
    save_file(dict(expected, **{"reference_modules_down.0.weight": torch.zeros(1, dtype=dtype)}),
              str(folder / "diffusion_pytorch_model.safetensors"))
    with caplog.at_level(logging.WARNING):
        load_hellomeme_module(folder)
    assert warned(caplog, "reference_modules_down.0.weight")
    victim = sorted(expected)[-1]
    save_file({k: v for k, v in expected.items() if k != victim}, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointKeyError) as e:
        load_hellomeme_module(folder)
    assert "hm5b_reference" in str(e.value) and victim in str(e.value)
