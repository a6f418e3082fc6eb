"""HelloMeme v1-v4 control networks (``KnittedControlNet``, ``ControlEncoder`` v4, ``ControlProjector`` v4) loaded
as released folders: class-name-only configs sized from the tensors, fp16 files, the output names the denoisers
consume, the expression branch each released class takes, and frames staying independent."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from portrait_animation.sk_attention.adapters import build_hellomeme_module, load_hellomeme_module
from portrait_animation.sk_attention.control import (RELEASED_CONTROL_NETS, ControlEncoder, ControlEncoderConfig,
                                                     ControlProjector, KnittedControlNet, KnittedControlNetConfig,
                                                     control_projections)

SMALL = dict(block_out_channels=(8, 16, 16, 24, 32), cross_attention_dim=16)  # v2 / v3: 4 blocks from 1/4
SMALL_V1 = dict(block_out_channels=(8, 16, 24, 32), cross_attention_dim=16)  # v1: 3 blocks from 1/8


def _sizes(class_name: str) -> dict:
    if class_name in ("HMControlNet", "HMControlNet2"):
        return SMALL_V1
    return dict(SMALL, down_projection_channels=(8, 16)) if class_name == "HMV3ControlNet" else SMALL


def _net(class_name: str, **sizes) -> KnittedControlNet:
    sizes = sizes or _sizes(class_name)
    return KnittedControlNet(KnittedControlNetConfig(**{**RELEASED_CONTROL_NETS[class_name], **sizes}))


def _randomise(module: torch.nn.Module, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) - 0.5) * 0.4 for k, v in module.state_dict().items()}


def _save(folder, sd: dict, config: dict, dtype=torch.float32):
    folder.mkdir(parents=True)
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _inputs(b=1, f=2, size=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(condition=torch.rand(b, 3, f, size, size, generator=g) * 2 - 1,
                drive_coeff=torch.rand(b, f, 51, generator=g),
                face_parts=torch.randn(b, f, 3, 1024, generator=g) * 0.5,
                emo_embedding=torch.randn(b, f, 548, generator=g) * 0.5)


@pytest.mark.parametrize("class_name,names", [
    ("HMControlNet", ["down_0", "down_1", "down_2"]),
    ("HMControlNet2", ["down2_0", "down2_1", "down2_2"]),
    ("HMV2ControlNet", ["up_v2_3", "up_v2_2", "up_v2_1", "up_v2_0"]),
    ("HMV2ControlNet2", ["up2_v2_3", "up2_v2_2", "up2_v2_1", "up2_v2_0"]),
    ("HMV3ControlNet", ["up3_3", "up3_2", "down3_0", "up3_1", "down3_1", "up3_0", "down3_2", "down3_3"]),
])
def test_class_name_only_fp16_folder_loads_with_released_output_names(tmp_path, class_name, names):
    """v2 / v3 configs hold only the class name: the widths come from the tensors; the file's fp16 is kept."""
    sd = _randomise(_net(class_name))
    folder = _save(tmp_path / class_name, sd, {"_class_name": class_name, "_diffusers_version": "0.32.2"},
                   dtype=torch.float16)
    net = load_hellomeme_module(folder)
    assert net.dtype == torch.float16
    assert net.config.block_out_channels == _sizes(class_name)["block_out_channels"]
    assert net.config.cross_attention_dim == 16
    x = _inputs()
    net32 = load_hellomeme_module(folder, dtype=torch.float32)
    with torch.no_grad():
        out = net32(**{k: v for k, v in x.items()})
    assert list(out) == names
    scale = RELEASED_CONTROL_NETS[class_name].get("scale_factor", 8)
    first = out[names[0]]
    assert first.shape == (1, 16, 2, 128 // scale // 2, 128 // scale // 2)
    if class_name == "HMV3ControlNet":
        assert out["down3_2"] is out["up3_0"] and out["down3_3"] is out["up3_0"]
        assert out["down3_0"].shape[1] == 8 and out["down3_1"].shape[1] == 16


def test_fp16_file_read_as_fp32_equals_the_rounded_weights(tmp_path):
    sd = _randomise(_net("HMControlNet"))
    folder = _save(tmp_path / "hm_control", sd, {"_class_name": "HMControlNet", **{
        k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_V1.items()}}, dtype=torch.float16)
    loaded = load_hellomeme_module(folder, dtype=torch.float32)
    reference = _net("HMControlNet")
    reference.load_state_dict({k: v.half().float() for k, v in sd.items()})
    x = _inputs()
    x.pop("emo_embedding")
    with torch.no_grad():
        for name, value in reference.eval()(**x).items():
            torch.testing.assert_close(loaded(**x)[name], value, rtol=0, atol=0)


def test_expression_branch_per_released_class():
    x = _inputs()
    arkit = _net("HMControlNet").eval()
    with pytest.raises(ValueError, match="face_parts"):
        arkit(x["condition"], drive_coeff=x["drive_coeff"])
    pdfgc = _net("HMControlNet2").eval()
    assert not hasattr(pdfgc, "exp_proj") and not hasattr(arkit, "emo_proj")
    assert pdfgc.encode_expression(emo_embedding=x["emo_embedding"]).shape == (1, 2, 548, 16)
    assert arkit.encode_expression(drive_coeff=x["drive_coeff"], face_parts=x["face_parts"]).shape == (1, 2, 54, 16)
    # v3 holds both: ARKit only when drive_coeff AND face_parts are given, PD-FGC otherwise
    mix = _net("HMV3ControlNet").eval()
    with torch.no_grad():
        only_coeff = mix.encode_expression(emo_embedding=x["emo_embedding"], drive_coeff=x["drive_coeff"])
        emo = mix.encode_expression(emo_embedding=x["emo_embedding"])
        both = mix.encode_expression(emo_embedding=x["emo_embedding"], drive_coeff=x["drive_coeff"],
                                     face_parts=x["face_parts"])
    torch.testing.assert_close(only_coeff, emo, rtol=0, atol=0)
    assert both.shape == (1, 2, 54, 16)
    with pytest.raises(ValueError, match="emo_embedding"):
        mix.encode_expression(drive_coeff=x["drive_coeff"])


def test_frames_are_independent():
    """Each frame attends to its own expression tokens only: a 3-frame clip equals its frames run one by one."""
    torch.manual_seed(0)
    net = _net("HMV2ControlNet").eval()
    net.load_state_dict(_randomise(net, 3))
    x = _inputs(b=1, f=3)
    with torch.no_grad():
        clip = net(x["condition"], drive_coeff=x["drive_coeff"], face_parts=x["face_parts"])
        for i in range(3):
            one = net(x["condition"][:, :, i:i + 1], drive_coeff=x["drive_coeff"][:, i:i + 1],
                      face_parts=x["face_parts"][:, i:i + 1])
            for name, value in one.items():
                torch.testing.assert_close(clip[name][:, :, i:i + 1], value, rtol=1e-5, atol=1e-6)
    # and the expression matters
    with torch.no_grad():
        other = net(x["condition"], drive_coeff=x["drive_coeff"].flip(1), face_parts=x["face_parts"])
    assert not torch.allclose(other["up_v2_0"], clip["up_v2_0"])


def test_v4_projector_is_plain_convs(tmp_path):
    projections = {p: (feat, name, c_in // 40, c_out // 40) for p, (feat, name, c_in, c_out) in
                   control_projections().items()}
    sd = _randomise(ControlProjector(projections, attention=False))
    assert all(k.endswith(".weight") and k.count(".") == 1 for k in sd)  # map640_to_640.weight, no bias
    folder = _save(tmp_path / "hm4_control_proj", sd, {"_class_name": "HM4SD15ControlProj"})
    proj = load_hellomeme_module(folder)
    feats = {f"feat_{i}": torch.randn(1, c, 2, 2 ** i, 2 ** i) for i, c in enumerate((32, 16, 8, 8))}
    with torch.no_grad():
        out = proj(feats)
    assert list(out) == ["up3_0", "up3_1", "up3_2", "up3_3", "down3_0", "down3_1", "down3_2", "down3_3"]
    for point, (feat, name, _, _) in projections.items():
        x = feats[feat]
        frames = [F.conv2d(x[:, :, t], sd[f"{name}.weight"], padding=1) for t in range(x.shape[2])]
        torch.testing.assert_close(out[point], torch.stack(frames, dim=2), rtol=1e-5, atol=1e-6)


def test_v4_control_base_keeps_stored_tables_and_v5_class_computes_them(tmp_path):
    config = ControlEncoderConfig(cross_attention_dim=32, out_channels=8, mid_channels=(8, 16, 16), token_dim=16,
                                  num_tokens=4, position_table_lengths=(64, 8))
    v4 = ControlEncoder(config)
    sd = _randomise(v4, 5)
    assert sd["ctrl_attn.attn_blocks.1.pos_embed.pe"].shape == (1, 64, 16)
    folder = _save(tmp_path / "hm_control_base", sd,
                   {"_class_name": "HMControlNetBase", "in_channels": 3, "cross_attention_dim": 32})
    loaded = load_hellomeme_module(folder)
    assert loaded.config.position_table_lengths == (64, 8) and loaded.config.mid_channels == (8, 16, 16)
    torch.testing.assert_close(loaded.ctrl_attn.attn_blocks[0].pos_embed_hidden.pe, sd[
        "ctrl_attn.attn_blocks.0.pos_embed_hidden.pe"], rtol=0, atol=0)
    x = _inputs(f=1)
    with torch.no_grad():
        out = loaded(x["condition"], emo_embedding=x["emo_embedding"])
    assert list(out) == ["feat_0", "feat_1", "feat_2", "feat_3"] and out["feat_3"].shape == (1, 8, 1, 16, 16)
    # the released config (no shapes): the class's 512 / 1024 tables; HM5ControlNetBase: none
    with torch.device("meta"):
        released = build_hellomeme_module({"_class_name": "HMControlNetBase"})
        v5 = build_hellomeme_module({"_class_name": "HM5ControlNetBase"})
    assert released.ctrl_attn.attn_blocks[2].pos_embed.pe.shape == (1, 512, 1280)
    assert released.ctrl_attn.attn_blocks[2].pos_embed_hidden.pe.shape == (1, 1024, 2048)
    assert not any("pos_embed" in k for k in v5.state_dict())
