"""HelloMeme parity handlers: v1-v4 reference and motion adapters, and the v3/v4 motion block.

Adapter cases ship a released-layout folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) loaded with
``load_hellomeme_module`` exactly as a user's download; ``blocks_run`` maps each output to the adapter block that
computes it (``<name>.hidden_states`` / ``.ref_stats`` / ``.pad_states`` / ``.temb`` are its inputs). Block cases
ship the block's own state dict (``module.safetensors``) and its constructor arguments.
"""
from __future__ import annotations

from pathlib import Path

from parity.runner import Case, handler
from portrait_animation.sk_attention.adapters import load_hellomeme_module
from portrait_animation.sk_attention.keyframe_motion import AnchoredTemporalAttention

from .blocks import _block, _checkpoint_folder, _kwargs, _num_frames


@handler("hellomeme.adapter_hm_reference", "hellomeme.adapter_hm2_reference", "hellomeme.adapter_hm3_reference",
         "hellomeme.adapter_hm4_reference")
def reference_adapter(case: Case, ckpt_dir: Path) -> dict:
    adapter = load_hellomeme_module(_checkpoint_folder(case, ckpt_dir))
    x = case.inputs()
    out = {}
    for name, path in case.spec["blocks_run"].items():
        hidden, ref = x[f"{name}.hidden_states"], x[f"{name}.ref_stats"]
        out[name] = adapter.get_submodule(path)(hidden, ref, _num_frames(case, hidden.shape[0], ref))
    return out


@handler("hellomeme.adapter_hm3_motion", "hellomeme.adapter_hm4_motion")
def motion_adapter(case: Case, ckpt_dir: Path) -> dict:
    adapter = load_hellomeme_module(_checkpoint_folder(case, ckpt_dir))
    x = case.inputs()
    out = {}
    for name, path in case.spec["blocks_run"].items():
        hidden, pads = x[f"{name}.hidden_states"], x[f"{name}.pad_states"]
        out[name] = adapter.get_submodule(path)(hidden, pads, x[f"{name}.temb"],
                                                _num_frames(case, hidden.shape[0], pads))
    return out


@handler("hellomeme.block_sk_motion")
def sk_motion(case: Case, ckpt_dir: Path) -> dict:
    kw = _kwargs(case)
    block = _block(case, ckpt_dir, lambda: AnchoredTemporalAttention(
        kw["in_channels"], kw.get("num_attention_heads", 1), time_embed_dim=kw.get("blocks_time_embed_dim", 1280),
        position_table_length=kw.get("num_positional_embeddings_t", 154), norm_eps=kw.get("norm_eps", 1e-5)))
    x = case.inputs()
    hidden, pads = x["hidden_states"], x["pad_states"]
    return {"out": block(hidden, pads, x["temb"], _num_frames(case, hidden.shape[0], pads))}
