"""HelloMeme v1-v4 adapters: layout of the v1/v2 reference adapter, behaviour of the v3/v4 motion block, and the
AnimateDiff motion adapter folders (read strictly, in the file's or a target dtype, usable by diffusers'
``UNetMotionModel.from_unet2d``). Numerical agreement with the original is the parity cases' job
(``adapter_hm*_reference``, ``adapter_hm3_motion``, ``block_sk_motion``)."""
from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
from safetensors.torch import save_file

from portrait_animation.loaders.checkpoint import CheckpointKeyError
from portrait_animation.sk_attention.adapters import (build_hellomeme_module, load_animatediff_adapter,
                                                      load_hellomeme_module)
from portrait_animation.sk_attention.keyframe_motion import AnchoredTemporalAttention

HM_REFERENCE = {"_class_name": "HMReferenceAdapter", "block_out_channels": [16, 24, 32, 32],
                "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "num_attention_heads": 8}

ANIMATEDIFF = {"_class_name": "MotionAdapter", "_diffusers_version": "0.31.0",
               "_name_or_path": "songkey/animatediff-motion-adapter-v1-5-3", "block_out_channels": [32, 32, 64, 64],
               "motion_layers_per_block": 2, "motion_transformer_layers_per_block": 1,
               "motion_mid_block_layers_per_block": 1, "motion_transformer_layers_per_mid_block": 1,
               "motion_num_attention_heads": 8, "motion_norm_num_groups": 32, "motion_max_seq_length": 32,
               "use_motion_mid_block": False, "conv_in_channels": None}


def _random_state(module: torch.nn.Module, seed: int, dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * 0.1).to(dtype) for k, v in module.state_dict().items()}


def _save(folder, config: dict, sd: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def _channels(blocks) -> list[int]:
    return [b.proj.in_channels for b in blocks]


def test_v1_reference_adapter_has_down_mid_and_up_blocks():
    v1 = build_hellomeme_module({**HM_REFERENCE, "version": "v1"})
    assert _channels(v1.reference_modules_down) == [16, 24, 32, 32]
    assert v1.reference_modules_mid.proj.in_channels == 32
    # up module j serves up block j + 1, whose input is up block j's output: reversed(block_out_channels)[j]
    assert _channels(v1.reference_modules_up) == [32, 32, 24] and v1.first_up_block == 1
    assert all(b.pos_embed.pe.shape[1] == 128 for b in v1.modules() if hasattr(b, "pos_embed"))
    # any other version string: up blocks only (hm2_reference)
    v2 = build_hellomeme_module({**HM_REFERENCE, "version": "v2"})
    assert not hasattr(v2, "reference_modules_down") and not hasattr(v2, "reference_modules_mid")
    assert _channels(v2.reference_modules_up) == [32, 32, 24]
    assert set(v2.state_dict()) == {k for k in v1.state_dict() if k.startswith("reference_modules_up.")}


def test_v1_reference_adapter_heads_per_block():
    adapter = build_hellomeme_module({**HM_REFERENCE, "num_attention_heads": [1, 2, 4, 8], "version": "v1"})
    assert [b.attn1.heads for b in adapter.reference_modules_down] == [1, 2, 4, 8]
    assert adapter.reference_modules_mid.attn1.heads == 8
    assert [b.attn1.heads for b in adapter.reference_modules_up] == [4, 2, 1]  # reversed heads of up blocks 1..3


def test_v3_reference_adapter_serves_every_up_block():
    adapter = build_hellomeme_module({"_class_name": "HM3ReferenceAdapter", "block_down_channels": [8, 8, 16, 16],
                                      "block_up_channels": [16, 16, 16, 8], "num_attention_heads": 8})
    assert _channels(adapter.reference_modules_up) == [16, 16, 16, 8] and adapter.first_up_block == 0
    assert not hasattr(adapter.reference_modules_up[0], "time_emb_proj")  # the v5 extra layer is absent


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_hm2_reference_either_upload_dtype_loads(tmp_path, dtype):
    """hm2_reference was uploaded in fp32, then re-uploaded in fp16: both load, in the file's or a target dtype."""
    config = {**HM_REFERENCE, "version": "v2"}
    sd = _random_state(build_hellomeme_module(config), 3, dtype)
    folder = _save(tmp_path / "hm2_reference", config, sd)
    assert all(v.dtype == dtype for v in load_hellomeme_module(folder).state_dict().values())
    loaded = load_hellomeme_module(folder, dtype=torch.bfloat16).state_dict()
    for k, v in sd.items():
        assert loaded[k].dtype == torch.bfloat16 and torch.equal(loaded[k], v.to(torch.bfloat16)), k


def _motion_block(seed: int = 0) -> AnchoredTemporalAttention:
    torch.manual_seed(seed)
    block = AnchoredTemporalAttention(16, 4, time_embed_dim=12, position_table_length=10).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    return block


def test_v3_motion_reads_the_first_frame_time_embedding_only():
    block, f = _motion_block(), 3
    hidden, pads, temb = torch.randn(2 * f, 16, 3, 2), torch.randn(2, 16, 2, 3, 2), torch.randn(2 * f, 12)
    with torch.no_grad():
        out = block(hidden, pads, temb, f)
        later = temb.clone()
        later[1:f] += torch.randn_like(later[1:f])  # not the first frame of clip 0
        torch.testing.assert_close(block(hidden, pads, later, f), out)
        first = temb.clone()
        first[f] += torch.randn_like(first[f])  # the first frame of clip 1 changes clip 1 only
        changed = block(hidden, pads, first, f)
    torch.testing.assert_close(changed[:f], out[:f])
    assert (changed[f:] - out[f:]).abs().max() > 1e-3


def test_v3_motion_clips_are_independent_and_anchored_by_their_pads():
    block, f = _motion_block(1), 4
    hidden, pads, temb = torch.randn(2 * f, 16, 2, 3), torch.randn(2, 16, 2, 2, 3), torch.randn(2 * f, 12)
    with torch.no_grad():
        both = block(hidden, pads, temb, f)
        torch.testing.assert_close(both[f:], block(hidden[f:], pads[1:], temb[f:], f))
        moved = pads.clone()
        moved[:, :, 1] += torch.randn_like(moved[:, :, 1])  # the last keyframe steers every frame of its clip
        assert ((block(hidden, moved, temb, f) - both).flatten(1).abs().amax(1) > 1e-4).all()
        with pytest.raises(ValueError, match="pad"):
            block(hidden, None, temb, f)
        with pytest.raises(ValueError, match="longer than the stored position table"):
            block(hidden.repeat(3, 1, 1, 1), pads, temb.repeat(3, 1), 3 * f)  # 14 > 10 positions


def test_v3_motion_adapter_blocks_share_the_v5_call():
    config = {"_class_name": "HM3MotionAdapter", "block_down_channels": [8, 16, 16, 16],
              "block_up_channels": [16, 16, 16, 8], "num_attention_heads": 8, "use_3d": True}
    adapter = build_hellomeme_module(config)
    assert adapter.needs_pads and len(adapter.motion_down) == len(adapter.motion_up) == 4
    assert [b.time_emb_proj.in_features for b in adapter.motion_down] == [1280] * 4
    hidden, pads, temb = torch.randn(6, 8, 4, 4), torch.randn(2, 8, 2, 4, 4), torch.randn(6, 1280)
    with torch.no_grad():
        assert adapter.motion_down[0](hidden, pads, temb, 3).shape == hidden.shape


def test_animatediff_adapter_loads_strictly_in_file_or_target_dtype(tmp_path, caplog):
    from diffusers import MotionAdapter as AnimateDiffMotionAdapter

    with torch.device("meta"):
        reference = build_hellomeme_module(ANIMATEDIFF)
    assert isinstance(reference, AnimateDiffMotionAdapter)
    sd = _random_state(reference, 7, torch.float16)  # the released files are fp16
    assert any(k.endswith("pos_embed.pe") for k in sd)  # the stored tables are part of the file
    folder = _save(tmp_path / "hm3_animatediff", ANIMATEDIFF, sd)
    adapter = load_animatediff_adapter(folder)
    got = adapter.state_dict()
    assert set(got) == set(sd) and all(torch.equal(got[k], v) for k, v in sd.items())
    assert adapter.load_report.file_dtype == "float16" and not adapter.training
    as32 = load_animatediff_adapter(folder, dtype=torch.float32).state_dict()
    assert all(as32[k].dtype == torch.float32 and torch.equal(as32[k], v.float()) for k, v in sd.items())

    victim = sorted(sd)[3]
    _save(folder, ANIMATEDIFF, {k: v for k, v in sd.items() if k != victim})
    with pytest.raises(CheckpointKeyError) as e:
        load_animatediff_adapter(folder)
    assert "hm3_animatediff" in str(e.value) and victim in str(e.value)

    other = _save(tmp_path / "hm3_motion", {"_class_name": "HM3MotionAdapter"}, {})
    with pytest.raises(ValueError, match="hm3_motion.*HM3MotionAdapter.*not an AnimateDiff"):
        load_animatediff_adapter(other)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.device("meta"):
            build_hellomeme_module({**ANIMATEDIFF, "made_up_field": 1})
    assert any("made_up_field" in str(w.message) for w in caught)


def test_animatediff_adapter_goes_into_a_motion_unet(tmp_path):
    """The loaded adapter is what diffusers' UNetMotionModel.from_unet2d expects (the v1-v4 video UNet)."""
    from diffusers import UNet2DConditionModel, UNetMotionModel

    sd = _random_state(build_hellomeme_module(ANIMATEDIFF), 11)
    adapter = load_animatediff_adapter(_save(tmp_path / "hm_animatediff_frame12", ANIMATEDIFF, sd))
    unet = UNet2DConditionModel(block_out_channels=(32, 32, 64, 64), layers_per_block=2, cross_attention_dim=16,
                                attention_head_dim=8, sample_size=8, norm_num_groups=32)
    motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
    inserted = motion_unet.state_dict()
    for key in ("down_blocks.0.motion_modules.1.transformer_blocks.0.pos_embed.pe",
                "up_blocks.3.motion_modules.2.proj_out.weight"):
        assert torch.equal(inserted[key], sd[key]), key
