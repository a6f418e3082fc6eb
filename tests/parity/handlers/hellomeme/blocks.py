"""HelloMeme parity handlers: v5/v5b/v5c blocks, adapters and control networks.

Block cases ship a ``module.safetensors`` holding the block's own state dict: the pack's block is built from the
case's constructor arguments and loaded strictly. Adapter and control cases ship a released-layout folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``), loaded with ``load_hellomeme_module`` exactly as a
user's download.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.layers.embeddings import coefficient_tokens
from portrait_animation.loaders.checkpoint import build_and_load, read_state_dict
from portrait_animation.sk_attention.adapters import load_hellomeme_module
from portrait_animation.sk_attention.control import ARKIT_SCALE, PDFGC_SCALE, KnittedControlUNet, KnittedCrossAttention
from portrait_animation.sk_attention.knitting import (KnittedAttention, KnittedReferenceAttention,
                                                       KnittedReferenceModule)
from portrait_animation.sk_attention.motion import AnchoredMotionModule


def _kwargs(case: Case) -> dict:
    return dict(case.spec.get("constructor", {}).get("kwargs", {}))


def _no_temporal(kw: dict) -> None:
    if kw.pop("temporal_attn", False):
        raise NotImplementedError("temporal_attn=True: no released HelloMeme checkpoint uses it")


def _block(case: Case, ckpt_dir: Path, factory):
    sd = read_state_dict(ckpt_dir / "module.safetensors")
    return build_and_load(factory, sd, source=str(ckpt_dir / "module.safetensors")).eval()


def _num_frames(case: Case, frames_total: int, per_clip: torch.Tensor | None = None) -> int:
    """Frames per clip: the case's setting, else the ``num_frames=`` of its call, else B*F / B of a per-clip input."""
    if "num_frames" in case.settings:
        return int(case.settings["num_frames"])
    match = re.search(r"num_frames\s*=\s*(\d+)", case.spec.get("call", ""))
    if match:
        return int(match.group(1))
    if per_clip is not None:
        return frames_total // per_clip.shape[0]
    raise ValueError(f"{case.id}: cannot tell the number of frames per clip")


def _checkpoint_folder(case: Case, ckpt_dir: Path) -> Path:
    return ckpt_dir / case.spec["checkpoints"][0]["folder"]


@handler("hellomeme.block_sk_reference_v5")
def sk_reference_v5(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    block = _block(case, ckpt_dir, lambda: KnittedReferenceAttention(
        kw["in_channels"], kw.get("num_attention_heads", 1),
        unused_time_embed_dim=kw.get("blocks_time_embed_dim", 1280), norm_eps=kw.get("norm_eps", 1e-5)))
    x = case.inputs()
    f = _num_frames(case, x["hidden_states"].shape[0], x["ref_stats"])
    return {"out": block(x["hidden_states"], x["ref_stats"], f)}


@handler("hellomeme.block_stk_attention_v5")
def stk_attention_v5(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    _no_temporal(kw)
    block = _block(case, ckpt_dir, lambda: KnittedAttention(
        kw.get("in_channels", 16), kw.get("mid_channels", 16), kw.get("num_attention_heads", 8),
        time_embed_dim=kw.get("time_embed_dim", 512), norm_eps=kw.get("norm_eps", 1e-5)))
    x = case.inputs()
    hidden, ref = x["hidden_states"], x["ref_stats"]
    return {
        "out_ref_residual": block(hidden, ref, residual=True),
        "out_ref_noresidual": block(hidden, ref, residual=False),
        "out_self_residual": block(hidden, residual=True),
        "out_self_noresidual": block(hidden, residual=False),
    }


@handler("hellomeme.block_stk_reference_module")
def stk_reference_module(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    block = _block(case, ckpt_dir, lambda: KnittedReferenceModule(
        kw["in_channels"], kw.get("num_attention_heads", 1), norm_eps=kw.get("norm_eps", 1e-5)))
    x = case.inputs()
    f = _num_frames(case, x["hidden_states"].shape[0], x["ref_stats"])
    return {"out": block(x["hidden_states"], x["ref_stats"], f)}


@handler("hellomeme.block_stk_cross_attention_v5")
def stk_cross_attention_v5(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    _no_temporal(kw)
    block = _block(case, ckpt_dir, lambda: KnittedCrossAttention(
        kw["channel_in"], kw["channel_mid"], kw.get("heads", 8), kw.get("cross_attention_dim", 320),
        norm_eps=kw.get("norm_eps", 1e-5)))
    x = case.inputs()
    return {"out": block(x["x"], x["context"])}


@handler("hellomeme.block_small_unet_v5")
def small_unet_v5(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    _no_temporal(kw)
    block = _block(case, ckpt_dir, lambda: KnittedControlUNet(
        kw.get("in_channels", 3), kw.get("out_channels", 16), kw.get("cross_attention_dim", 1024),
        tuple(kw.get("mid_channels", (320, 640, 1280)))))
    x = case.inputs()
    return block(x["x"], x["context"])


@handler("hellomeme.block_sk_motion_v5")
def sk_motion_v5(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    block = _block(case, ckpt_dir, lambda: AnchoredMotionModule(kw["in_channels"], kw.get("num_attention_heads", 8)))
    x = case.inputs()
    hidden, pads, temb = x["hidden_states"], x.get("pad_states"), x.get("temb")
    f = _num_frames(case, hidden.shape[0], pads)
    out = {"out_without_pads": block(hidden, None, temb, f)}
    if pads is not None:
        out["out_with_pads"] = block(hidden, pads, temb, f)
    return out


@handler("hellomeme.adapter_hm5_reference", "hellomeme.adapter_hm5b_reference")
def reference_adapter(case: Case, ckpt_dir: Path) -> dict:
    adapter = load_hellomeme_module(_checkpoint_folder(case, ckpt_dir))
    x = case.inputs()
    out = {}
    for name, path in case.spec["blocks_run"].items():
        hidden, ref = x[f"{name}.hidden_states"], x[f"{name}.ref_stats"]
        f = _num_frames(case, hidden.shape[0], ref)
        out[name] = adapter.get_submodule(path)(hidden, ref, f)
    return out


@handler("hellomeme.adapter_hm5_motion")
def motion_adapter(case: Case, ckpt_dir: Path) -> dict:
    adapter = load_hellomeme_module(_checkpoint_folder(case, ckpt_dir))
    x = case.inputs()
    blocks = case.spec["blocks_run"]
    # every block of the case runs on clips of the same length; the blocks with pads tell it
    pads = next((x[f"{n}.pad_states"] for n in blocks if f"{n}.pad_states" in x), None)
    first = x[f"{next(iter(blocks))}.hidden_states"]
    f = _num_frames(case, first.shape[0], pads)
    out = {}
    for name, path in blocks.items():
        out[name] = adapter.get_submodule(path)(x[f"{name}.hidden_states"], x.get(f"{name}.pad_states"),
                                                x.get(f"{name}.temb"), f)
    return out


@handler("hellomeme.control_hm5_control_base")
def control_encoder(case: Case, ckpt_dir: Path) -> dict:
    net = load_hellomeme_module(_checkpoint_folder(case, ckpt_dir))
    x = case.inputs()
    out = {}
    for branch in sorted({k.split(".")[0] for k in x if k.endswith(".condition")}):
        get = lambda name: x.get(f"{branch}.{name}")  # noqa: E731
        condition = get("condition").float()
        expression = dict(emo_embedding=get("emo_embedding"), drive_coeff=get("drive_coeff"),
                          face_parts=get("face_parts"))
        d = net.config.token_dim
        if expression["drive_coeff"] is not None:
            out[f"{branch}.tokens.exp_embedding"] = coefficient_tokens(expression["drive_coeff"], d, ARKIT_SCALE)
        elif expression["emo_embedding"] is not None:
            out[f"{branch}.tokens.emo_embedding"] = coefficient_tokens(expression["emo_embedding"], d, PDFGC_SCALE)
        out[f"{branch}.context"] = net.encode_expression(**expression)
        for name, feat in net(condition, **expression).items():
            out[f"{branch}.{name}"] = feat
    return out


@handler("hellomeme.control_hm5_control_proj")
def control_projector(case: Case, ckpt_dir: Path) -> dict:
    net = load_hellomeme_module(_checkpoint_folder(case, ckpt_dir))
    return net(case.inputs())


# ---- earlier-version blocks that the same parameterised classes compute (stored PE-A tables) -------------------------
@handler("hellomeme.block_sk_reference_v1", "hellomeme.block_sk_reference_v3")
def sk_reference_stored_table(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    block = _block(case, ckpt_dir, lambda: KnittedReferenceAttention(
        kw["in_channels"], kw.get("num_attention_heads", 8),
        position_table_length=kw.get("num_positional_embeddings", 128), unused_time_embed_dim=None))
    x = case.inputs()
    f = _num_frames(case, x["hidden_states"].shape[0], x["ref_stats"])
    return {"out": block(x["hidden_states"], x["ref_stats"], f)}


@handler("hellomeme.block_stk_cross_attention")
def stk_cross_attention_stored_tables(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    _no_temporal(kw)
    block = _block(case, ckpt_dir, lambda: KnittedCrossAttention(
        kw["channel_in"], kw["channel_mid"], kw.get("heads", 8), kw.get("cross_attention_dim", 320),
        position_table_lengths=(kw.get("num_positional_embeddings", 512),
                                kw.get("num_positional_embeddings_hidden", 1024))))
    x = case.inputs()
    return {"out": block(x["x"], x["context"])}


@handler("hellomeme.block_small_unet")
def small_unet_stored_tables(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    _no_temporal(kw)
    block = _block(case, ckpt_dir, lambda: KnittedControlUNet(
        kw.get("in_channels", 3), kw.get("out_channels", 320), kw.get("cross_attention_dim", 2048),
        tuple(kw.get("mid_channels", (320, 640, 1280))), position_table_lengths=(512, 1024)))
    x = case.inputs()
    return block(x["x"], x["context"])
