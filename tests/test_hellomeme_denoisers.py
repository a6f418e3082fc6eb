"""HelloMeme v1-v4 denoisers (SKDenoiser with a version's injection scheme, AnimateDiff blocks): what the parity
cases cannot see. Tiny SD1.5-topology UNet (CrossAttnDown x3 + Down, Up + CrossAttnUp x3)."""
from __future__ import annotations

import pytest
import torch
from helpers.tiny_sd15 import UNET, tiny_unet

from portrait_animation.sk_attention.adapters import ReferenceAdapter, build_hellomeme_module
from portrait_animation.sk_attention.denoiser import (DeepFeature, SKDenoiser, V1_SCHEME, V3_SCHEME, animatediff_unet,
                                                      build_denoiser, scheme_for)

TEXT = UNET["cross_attention_dim"]
DOWN = UNET["block_out_channels"]  # output channels of the down blocks
UP = (64, 64, 64, 32)  # input channels of the up blocks
HW = 16  # latent side: down block outputs 8, 4, 2, 2


def _hm_reference(version: str, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_hellomeme_module({
        "_class_name": "HMReferenceAdapter", "block_out_channels": list(DOWN), "num_attention_heads": 8,
        "down_block_types": list(UNET["down_block_types"]), "up_block_types": list(UNET["up_block_types"]),
        "version": version}).eval()


def _animatediff(seed: int = 2, mid: bool = True) -> torch.nn.Module:
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=DOWN, motion_layers_per_block=UNET["layers_per_block"],
                            motion_num_attention_heads=4, motion_norm_num_groups=32, motion_max_seq_length=32,
                            use_motion_mid_block=mid)
    # the released adapters' temporal output projections are trained (non-zero); diffusers zero-inits them
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "proj_out" in name:
                p.normal_(0, 0.05)
    return adapter.eval()


def _v1_control(frames: int, batch: int = 1, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sides = (8, 4, 2, 2)
    out = {}
    for i, (c, s) in enumerate(zip(DOWN, sides)):
        out[f"down_{i}"] = torch.randn(batch, c, frames, s, s, generator=g)
        out[f"down2_{i}"] = torch.randn(batch, c, frames, s, s, generator=g)
    for i, (c, s) in enumerate(zip(UP, (2, 4, 8, 16))):
        out[f"up_v2_{i}"] = torch.randn(batch, c, frames, s, s, generator=g)
        out[f"up2_v2_{i}"] = torch.randn(batch, c, frames, s, s, generator=g)
    return out


def _inputs(batch: int, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, frames, HW, HW, generator=g), torch.randn(batch, 5, TEXT, generator=g),
            torch.randn(batch, 4, HW, HW, generator=g))


# ---- schemes and cache keys --------------------------------------------------------------------------------------
def test_reference_cache_keys_follow_the_version_scheme():
    unet = tiny_unet(0)
    _, text, latent = _inputs(2, 1)
    v1 = build_denoiser("v1", unet).eval()
    v3 = build_denoiser("v4", unet).eval()
    assert v1.scheme is V1_SCHEME and build_denoiser("v2", unet).scheme is V1_SCHEME
    assert v3.scheme is V3_SCHEME and scheme_for("v5c") is V3_SCHEME
    c1, c3 = v1.reference_features(latent, text), v3.reference_features(latent, text)
    # v1/v2: cross-attention down blocks, the mid block, cross-attention up blocks (inputs)
    assert list(c1) == ["down_0", "down_1", "down_2", "mid", "up_1", "up_2", "up_3"] == list(v1.cache_keys)
    assert list(c3) == [f"down_{i}" for i in range(4)] + [f"up_{i}" for i in range(4)] == list(v3.cache_keys)
    for key in ("down_0", "down_1", "down_2", "up_1", "up_2", "up_3"):  # the same UNet computes the same features
        torch.testing.assert_close(c1[key], c3[key], rtol=0, atol=0)
    torch.testing.assert_close(c1["mid"], c3["up_0"], rtol=0, atol=0)  # no reference in the reference role
    assert c1["up_3"].shape == (2, UP[3], HW, HW)
    with pytest.raises(ValueError, match="unknown HelloMeme version"):
        scheme_for("v6")


def test_v1_reference_blocks_serve_down_mid_and_cross_attention_up_blocks_v2_only_up():
    unet, ref_unet = tiny_unet(0), tiny_unet(5)
    x, text, latent = _inputs(1, 2)
    for version, expect in (("v1", {"down.0", "down.1", "down.2", "mid", "up.0", "up.1", "up.2"}),
                            ("v2", {"up.0", "up.1", "up.2"})):
        adapter = _hm_reference(version)
        seen: dict[str, tuple] = {}
        for name, module in adapter.named_children():
            blocks = module if isinstance(module, torch.nn.ModuleList) else [module]
            for j, block in enumerate(blocks):
                key = name.replace("reference_modules_", "") + ("" if name.endswith("mid") else f".{j}")
                block.register_forward_hook(lambda m, a, o, key=key: seen.__setitem__(key, tuple(a[0].shape)))
        den = build_denoiser(version, unet, reference=adapter).eval()
        cache = build_denoiser(version, ref_unet).reference_features(latent, text)
        with torch.no_grad():
            den(x, 400, text, reference_cache=cache, collect_cache=False)
        assert set(seen) == expect, version  # reference_modules_down[3] exists in v1 files and is never used
        # reference_modules_up[j] serves up block j + 1: its input has that block's width and size
        assert [seen[f"up.{j}"][1:] for j in range(3)] == [(UP[j + 1], 2 ** (j + 2), 2 ** (j + 2)) for j in range(3)]


def test_each_scheme_reads_only_its_own_control_keys():
    unet = tiny_unet(0)
    x, text, _ = _inputs(1, 2)
    v1_control = _v1_control(2)
    v3_control = {k.replace("down_", "down3_").replace("up_v2_", "up3_"): v for k, v in v1_control.items()
                  if not k.startswith(("down2_", "up2_"))}
    with torch.no_grad():
        for version, own, other in (("v1", v1_control, v3_control), ("v3", v3_control, v1_control)):
            den = build_denoiser(version, unet).eval()
            bare = den(x, 400, text, collect_cache=False)[0]
            assert torch.equal(den(x, 400, text, control=other, collect_cache=False)[0], bare), version
            for key in own:  # every key of the scheme changes the prediction
                one = den(x, 400, text, control={key: own[key]}, collect_cache=False)[0]
                assert not torch.allclose(one, bare, atol=1e-4), (version, key)


def test_v1_down_control_also_enters_the_blocks_last_skip():
    """The original adds the control in place to the down block's output, which is also that block's last skip
    tensor: the up block that consumes the skip sees output + control (down_i, then down2_i)."""
    unet = tiny_unet(0)
    x, text, _ = _inputs(1, 1)
    den = build_denoiser("v1", unet).eval()
    control = _v1_control(1)
    seen = {}
    unet.down_blocks[2].register_forward_hook(lambda m, a, kw, o: seen.__setitem__("out", o[0].clone()),
                                              with_kwargs=True)
    # skips: conv_in, (resnet, downsampler) x 3, resnet; up block 0 takes down block 2's downsampler output first
    unet.up_blocks[0].register_forward_hook(
        lambda m, a, kw, o: seen.__setitem__("skip", kw["res_hidden_states_tuple"][0].clone()), with_kwargs=True)
    with torch.no_grad():
        den(x, 400, text, control={k: control[k] for k in ("down_2", "down2_2")}, collect_cache=False)
    torch.testing.assert_close(seen["skip"], seen["out"] + control["down_2"][:, :, 0] + control["down2_2"][:, :, 0],
                               rtol=0, atol=1e-6)


# ---- feature reuse -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,animatediff", [("v1", False), ("v2", True), ("v3", False), ("v4", True)])
def test_a_reuse_call_on_unchanged_inputs_equals_the_full_call(version, animatediff):
    unet, ref_unet = tiny_unet(0), tiny_unet(5)
    frames = 3 if animatediff else 1
    x, text, latent = _inputs(2, frames)
    reference = _hm_reference(version) if version in ("v1", "v2") else ReferenceAdapter(block_up_channels=UP,
                                                                                        variant="v3").eval()
    den = build_denoiser(version, unet, reference=reference, animatediff=_animatediff() if animatediff else None)
    den.eval()
    cache = build_denoiser(version, ref_unet).reference_features(latent, text)
    control = _v1_control(frames, batch=2) if version in ("v1", "v2") else None
    deep = DeepFeature()
    with torch.no_grad():
        full = den(x, 500, text, reference_cache=cache, control=control, collect_cache=False, deep=deep)[0]
        deep.reuse = True
        again = den(x, 500, text, reference_cache=cache, control=control, collect_cache=False, deep=deep)[0]
        other = den(x + 1, 500, text, reference_cache=cache, control=control, collect_cache=False, deep=deep)[0]
    torch.testing.assert_close(again, full, rtol=0, atol=1e-5)
    assert not torch.allclose(other, full, atol=1e-3)


# ---- AnimateDiff -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mid", [True, False])
def test_animatediff_denoiser_equals_diffusers_motion_unet_and_shares_the_unet(mid):
    from diffusers import UNetMotionModel

    unet, adapter = tiny_unet(0), _animatediff(mid=mid)
    motion_unet = animatediff_unet(unet, adapter)
    # the UNet's and the adapter's parameters are taken, not copied
    assert motion_unet.conv_in.weight is unet.conv_in.weight
    assert motion_unet.up_blocks[3].attentions[0].proj_out.weight is unet.up_blocks[3].attentions[0].proj_out.weight
    assert motion_unet.down_blocks[1].motion_modules[0].proj_out.weight is \
        adapter.down_blocks[1].motion_modules[0].proj_out.weight
    assert hasattr(motion_unet.mid_block, "motion_modules") == mid
    den = SKDenoiser(motion_unet, scheme=V1_SCHEME).eval()
    expected_model = UNetMotionModel.from_unet2d(unet, adapter).eval()
    x, text, _ = _inputs(2, 4)
    with torch.no_grad():
        ours = den(x, 321, text, collect_cache=False)[0]
        expected = expected_model(x, 321, text.repeat_interleave(x.shape[2], 0)).sample  # (b f) text
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_animatediff_frames_mix_within_a_clip_never_across_clips():
    """'(b f)' layout: the temporal modules see the frames of one clip; clips of a batch stay independent."""
    den = build_denoiser("v2", tiny_unet(0), animatediff=_animatediff()).eval()
    x, text, _ = _inputs(2, 3)
    moved_frame = x.clone()
    moved_frame[0, :, 2] += 1  # clip 0, last frame
    moved_clip = x.clone()
    moved_clip[1] += 1  # all of clip 1
    with torch.no_grad():
        base = den(x, 400, text, collect_cache=False)[0]
        by_frame = den(moved_frame, 400, text, collect_cache=False)[0]
        by_clip = den(moved_clip, 400, text, collect_cache=False)[0]
    assert not torch.allclose(by_frame[0, :, 0], base[0, :, 0], atol=1e-4)  # frame 0 hears frame 2
    torch.testing.assert_close(by_frame[1], base[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(by_clip[0], base[0], rtol=0, atol=1e-6)  # clip 0 never hears clip 1
    # the plain image UNet (the v1-v4 pre-pass) keeps frames independent
    image = build_denoiser("v2", tiny_unet(0)).eval()
    with torch.no_grad():
        a, b = image(x, 400, text, collect_cache=False)[0], image(moved_frame, 400, text, collect_cache=False)[0]
    torch.testing.assert_close(b[0, :, :2], a[0, :, :2], rtol=0, atol=1e-6)


def test_animatediff_unet_refuses_a_motion_unet_and_names_keys_that_do_not_fit():
    unet, adapter = tiny_unet(0), _animatediff()
    with pytest.raises(TypeError):
        animatediff_unet(animatediff_unet(unet, adapter), adapter)
    from diffusers import MotionAdapter

    wrong = MotionAdapter(block_out_channels=DOWN, motion_layers_per_block=2, motion_num_attention_heads=4,
                          motion_norm_num_groups=32)
    with pytest.raises(ValueError, match="layers per block"):
        animatediff_unet(unet, wrong)


def test_animatediff_unet_takes_an_fp16_adapter_in_the_unets_dtype():
    """The released hm*_animatediff* files are fp16; the motion modules run in the UNet's dtype (cast once)."""
    unet, adapter = tiny_unet(0), _animatediff()
    half = _animatediff().half()
    motion_unet = animatediff_unet(unet, half)
    assert {p.dtype for p in motion_unet.parameters()} == {torch.float32}
    rounded = _animatediff()
    rounded.load_state_dict({k: v.half().float() for k, v in adapter.state_dict().items()})
    x, text, _ = _inputs(1, 3)
    with torch.no_grad():
        ours = SKDenoiser(motion_unet, scheme=V1_SCHEME)(x, 100, text, collect_cache=False)[0]
        expected = SKDenoiser(animatediff_unet(tiny_unet(0), rounded), scheme=V1_SCHEME)(x, 100, text,
                                                                                         collect_cache=False)[0]
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
