"""MEMO parity handlers for the networks: temporal memory attention, audio modules, projections, emotion classifier,
Reference Net and Diffusion Net. Whole models load through ``memo.loading`` exactly as a download would; sub-module
cases hold only one sub-module's keys (``case.json -> checkpoint.prefix``), stripped and loaded strictly."""
from __future__ import annotations

from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.loaders.checkpoint import load_strict, read_state_dict
from portrait_animation.memo import loading


def _submodule_state(case: Case, ckpt_dir: Path) -> tuple[dict, str]:
    ck = case.spec["checkpoint"]
    path = ckpt_dir / ck["file"]
    sd = read_state_dict(path)
    prefix = ck.get("prefix", "")
    outside = [k for k in sd if not k.startswith(prefix)]
    assert not outside, f"keys outside {prefix!r}: {outside[:5]}"
    return {k[len(prefix):]: v for k, v in sd.items()}, str(path)


def _loaded(module: torch.nn.Module, sd: dict, source: str) -> torch.nn.Module:
    load_strict(module, sd, source=source)
    return module.eval()


def _flags(call: dict) -> tuple[bool, bool]:
    return bool(call["is_new_audio"]), bool(call["update_past_memory"])


# ---- temporal memory ---------------------------------------------------------------------------------------------


@handler("memo.motion_attn_memory")
def motion_attn_memory(case: Case, ckpt_dir: Path) -> dict:
    from portrait_animation.motion.memory_attention import MemoryLinearAttention

    s = case.settings
    sd, source = _submodule_state(case, ckpt_dir)
    c, heads = s["channels"], s["heads"]
    pe = "pos_encoder.pe" in sd
    max_len = sd["pos_encoder.pe"].shape[1] if pe else s.get("temporal_position_encoding_max_len", 24)
    layer = _loaded(MemoryLinearAttention(c, heads, s.get("head_dim", c // heads), positional_encoding=pe,
                                          max_len=max_len), sd, source)
    b, f, n = s["batch"], s["frames_per_clip"], s["motion_frames"]
    inputs, out = case.inputs(), {}
    for call in case.spec["calls"]:
        i = call["index"]
        x, m = inputs[f"call{i}.x"], inputs[f"call{i}.motion"]  # (B*F, S, C), (B*N, S, C)
        tokens = x.shape[1]
        seq = x.view(b, f, tokens, c).transpose(1, 2).reshape(b * tokens, f, c)
        past = m.view(b, n, tokens, c).transpose(1, 2).reshape(b * tokens, n, c)
        y = layer(seq, past, *_flags(call))
        out[f"call{i}.out"] = y.view(b, tokens, f, c).transpose(1, 2).reshape(b * f, tokens, c)
        out[f"call{i}.memory_kv"] = layer.memory.kv.clone()
        out[f"call{i}.memory_z"] = layer.memory.z.clone()
    return out


@handler("memo.motion_module")
def motion_module(case: Case, ckpt_dir: Path) -> dict:
    from portrait_animation.motion.memory_attention import MemoryTemporalModule, MotionModuleConfig

    s = case.settings
    sd, source = _submodule_state(case, ckpt_dir)
    pe_key = "temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    cfg = MotionModuleConfig(
        num_attention_heads=s["heads"], num_transformer_block=s.get("num_transformer_block", 1),
        attention_block_types=tuple(s.get("attention_block_types", ("Temporal_Self", "Temporal_Self"))),
        temporal_attention_dim_div=s.get("temporal_attention_dim_div", 1),
        temporal_position_encoding=pe_key in sd,
        temporal_position_encoding_max_len=sd[pe_key].shape[1] if pe_key in sd
        else s.get("temporal_position_encoding_max_len", 24))
    module = _loaded(MemoryTemporalModule(s["channels"], cfg, s.get("groupnorm_groups", 32)), sd, source)
    layers = list(module.memory_layers())
    inputs, out = case.inputs(), {}
    for call in case.spec["calls"]:
        i = call["index"]
        out[f"call{i}.out"] = module(inputs[f"call{i}.hidden"], inputs[f"call{i}.motion"], *_flags(call))
        for j, layer in enumerate(layers):
            out[f"call{i}.layer{j}.memory_kv"] = layer.memory.kv.clone()
            out[f"call{i}.layer{j}.memory_z"] = layer.memory.z.clone()
    return out


# ---- audio modules -----------------------------------------------------------------------------------------------


@handler("memo.audio_joint_block")
def audio_joint_block(case: Case, ckpt_dir: Path) -> dict:
    from portrait_animation.audio.emotion_modules import JointAudioBlock

    s = case.settings
    sd, source = _submodule_state(case, ckpt_dir)
    null_class = sd["norm1.class_embedder.embedding_table.weight"].shape[0] > s.get("null_emotion", 9)
    block = _loaded(JointAudioBlock(s["dim"], s["audio_dim"], s["heads"], s["dim"] // s["heads"],
                                    is_final=s.get("is_final_block", False), emotion_null_class=null_class),
                    sd, source)
    inputs, out = case.inputs(), {}
    for call in case.spec["calls"]:
        i = call["index"]
        x, a = block(inputs[f"call{i}.hidden"], inputs[f"call{i}.audio"], inputs[f"call{i}.emotion"])
        out[f"call{i}.hidden_out"] = x
        if a is not None:
            out[f"call{i}.audio_out"] = a
    return out


@handler("memo.audio_transformer", "memo.audio_transformer_final")
def audio_transformer(case: Case, ckpt_dir: Path) -> dict:
    from portrait_animation.audio.emotion_modules import AudioModule

    s = case.settings
    sd, source = _submodule_state(case, ckpt_dir)
    heads, inner = s["heads"], s["inner_dim"]
    groups = s.get("groupnorm_groups", s.get("groups", 32))
    module = _loaded(AudioModule(s["channels"], heads, inner // heads, s["audio_dim"], groups,
                                 is_final=s.get("is_final_block", False)), sd, source)
    inputs, expected = case.inputs(), case.expected()
    emotion = inputs.get("emotion", torch.tensor(s["emotion"]))
    out = {}
    for call in case.spec["calls"]:
        i = call["index"]
        audio = inputs.get(f"call{i}.audio")
        if audio is None:  # carried stream: the previous call's recorded audio output
            audio = expected[f"call{i - 1}.audio_out"]
        x, a = module(inputs[f"call{i}.hidden"], audio, emotion)
        out[f"call{i}.hidden_out"] = x
        if a is not None:
            out[f"call{i}.audio_out"] = a
    return out


# ---- projections and classifier ----------------------------------------------------------------------------------


@handler("memo.image_proj")
def image_proj(case: Case, ckpt_dir: Path) -> dict:
    model = loading.load_image_proj(ckpt_dir / case.spec["checkpoint"]["folder"])
    return {"tokens": model(case.inputs()["face_emb"])}


@handler("memo.audio_proj")
def audio_proj(case: Case, ckpt_dir: Path) -> dict:
    model = loading.load_audio_proj(ckpt_dir / case.spec["checkpoint"]["folder"])
    return {"tokens": model(case.inputs()["audio_windows"])}


@handler("memo.emotion_classifier")
def emotion_classifier(case: Case, ckpt_dir: Path) -> dict:
    model = loading.load_emotion_classifier(ckpt_dir / case.spec["checkpoint"]["folder"])
    probs = model(case.inputs()["features"])
    # the official labelling applies a second softmax before argmax (same argmax)
    return {"probs": probs, "labels": torch.softmax(probs, dim=-1).argmax(dim=-1)}


# ---- UNets -------------------------------------------------------------------------------------------------------


def _nest(flat: dict[str, torch.Tensor], prefix: str) -> dict:
    """``{prefix + "<level>.<block>.<layer>": t}`` -> ``{"down": [[t, ...], ...], "mid": [[t]], "up": [...]}``."""
    nested: dict[str, dict[int, dict[int, torch.Tensor]]] = {"down": {}, "mid": {}, "up": {}}
    for name, t in flat.items():
        if not name.startswith(prefix):
            continue
        level, block, layer = name[len(prefix):].split(".")
        nested[level].setdefault(int(block), {})[int(layer)] = t
    return {level: [[layers[j] for j in sorted(layers)] for _, layers in sorted(blocks.items())]
            for level, blocks in nested.items()}


def _flatten(features: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{level}.{i}.{j}": t for level, blocks in features.items()
            for i, layers in enumerate(blocks) for j, t in enumerate(layers)}


@handler("memo.reference_net")
def reference_net(case: Case, ckpt_dir: Path) -> dict:
    net = loading.load_reference_net(ckpt_dir / case.spec["checkpoint"]["folder"])
    inputs = case.inputs()
    features = net(inputs["ref_latents"], inputs["timestep"], inputs["encoder_hidden_states"])
    return _flatten(features, "ref.")


@handler("memo.diffusion_net_cfg")
def diffusion_net_cfg(case: Case, ckpt_dir: Path) -> dict:
    net = loading.load_diffusion_net(ckpt_dir / case.spec["checkpoint"]["folder"])
    s = case.settings
    inputs, out = case.inputs(), {}
    for call in case.spec["calls"]:
        i = call["index"]
        ref = _nest(inputs, f"refset{call['refset']}.")
        emotion = inputs.get(f"call{i}.emotion", torch.tensor(call["emotion"]))
        timestep = inputs.get(f"call{i}.timestep", torch.tensor(call["timestep"], dtype=torch.float32))
        pred = net(inputs[f"call{i}.sample"], ref, timestep, inputs["encoder_hidden_states"],
                   inputs[f"call{i}.audio"], emotion, uc_mask=inputs.get("uc_mask"),
                   is_new_audio=call["is_new_audio"], update_past_memory=call["update_past_memory"])
        out[f"call{i}.noise_pred"] = pred
        u, c = pred.chunk(2)
        out[f"call{i}.velocity_cfg"] = u + s.get("guidance_scale", 3.5) * (c - u)
    return out
