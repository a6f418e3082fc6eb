"""HelloMeme parity handlers: the v1-v4 control networks and their block.

The block case ships a ``module.safetensors`` holding ``SKCrossAttention``'s own state dict: the pack's
:class:`KnittedDownCrossAttention` is built from the case's constructor arguments and loaded strictly. The control
cases ship a released-layout folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), loaded with
``load_hellomeme_module`` exactly as a user's download; sizes, frames and branches come from the case's files.
"""
from __future__ import annotations

from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.layers.embeddings import coefficient_tokens
from portrait_animation.loaders.checkpoint import build_and_load, read_state_dict
from portrait_animation.sk_attention.adapters import load_hellomeme_module
from portrait_animation.sk_attention.control import (ARKIT_SCALE, PDFGC_SCALE, ControlEncoder, KnittedControlNet,
                                                     KnittedDownCrossAttention)


def _kwargs(case: Case) -> dict:
    return dict(case.spec.get("constructor", {}).get("kwargs", {}))


def _checkpoint_folder(case: Case, ckpt_dir: Path) -> Path:
    return ckpt_dir / case.spec["checkpoints"][0]["folder"]


@handler("hellomeme.block_sk_cross_attention")
def sk_cross_attention(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    path = ckpt_dir / "module.safetensors"
    block = build_and_load(lambda: KnittedDownCrossAttention(
        kw["channel_in"], kw["channel_out"], kw.get("heads", 8), kw.get("cross_attention_dim", 320),
        position_table_lengths=(kw.get("num_positional_embeddings", 64), kw.get("num_positional_embeddings_hidden", 64)),
        norm_eps=kw.get("norm_eps", 1e-5)), read_state_dict(path), source=str(path)).eval()
    x = case.inputs()
    return {"out": block(x["x"], x["context"])}


def _branches(inputs: dict) -> dict[str, dict[str, torch.Tensor]]:
    """{output prefix: inputs of one call}: cases with several calls prefix their inputs ('arkit.condition')."""
    if "condition" in inputs:
        return {"": inputs}
    branches: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in inputs.items():
        branch, _, name = key.partition(".")
        branches.setdefault(f"{branch}.", {})[name] = value
    return branches


@handler("hellomeme.control_hm_control", "hellomeme.control_hm_control2", "hellomeme.control_hm2_control",
         "hellomeme.control_hm2_control2", "hellomeme.control_hm3_control_mix", "hellomeme.control_hm_control_base")
def control_network(case: Case, ckpt_dir: Path) -> dict:
    net = load_hellomeme_module(_checkpoint_folder(case, ckpt_dir))
    assert isinstance(net, (KnittedControlNet, ControlEncoder)), type(net)
    out = {}
    for prefix, x in _branches(case.inputs()).items():
        expression = {k: x.get(k) for k in ("emo_embedding", "drive_coeff", "face_parts")}
        # the tokens before any projection, as the original encodes them (x500 ARKit, x20 PD-FGC)
        if expression["drive_coeff"] is not None:
            out[f"{prefix}tokens.exp_embedding"] = coefficient_tokens(expression["drive_coeff"], net.token_dim,
                                                                      ARKIT_SCALE)
        if expression["emo_embedding"] is not None:
            out[f"{prefix}tokens.emo_embedding"] = coefficient_tokens(expression["emo_embedding"], net.token_dim,
                                                                      PDFGC_SCALE)
        context = net.encode_expression(**expression)  # (B, F, T, D)
        # v1-v3 hand their blocks (B*F, T, D); v4 / v5 their U-Net (B, F, T, D)
        out[f"{prefix}context"] = context.flatten(0, 1) if isinstance(net, KnittedControlNet) else context
        for name, feat in net(x["condition"].float(), **expression).items():
            out[f"{prefix}{name}"] = feat
    return out


@handler("hellomeme.control_hm4_control_proj")
def control_projector(case: Case, ckpt_dir: Path) -> dict:
    net = load_hellomeme_module(_checkpoint_folder(case, ckpt_dir))
    return net(case.inputs())
