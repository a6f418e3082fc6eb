"""Checkpoint reading: formats, weights_only, strict keys with useful errors, meta-device loading, dtype."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from portrait_animation.loaders.checkpoint import (CheckpointKeyError, build_and_load, embedded_config, load_strict,
                                                   read_checkpoint, read_diffusers_folder, read_state_dict,
                                                   UnsafeCheckpoint)
from portrait_animation.loaders.store import CorruptModelFile


class Toy(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.proj = torch.nn.Linear(4, width)
        self.norm = torch.nn.LayerNorm(width)
        self.register_buffer("scale", torch.full((width,), 2.0), persistent=False)

    def forward(self, x):
        return self.norm(self.proj(x)) * self.scale


def toy_sd(width=8):
    torch.manual_seed(0)
    return {k: torch.randn_like(v) for k, v in Toy(width).state_dict().items()}


def test_safetensors_and_pth_read_identically(tmp_path):
    sd = toy_sd()
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    torch.save({"state_dict": sd}, tmp_path / "wrapped.bin")
    for name in ("w.safetensors", "w.pth", "wrapped.bin"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd), name


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"w": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpoint) as e:
        read_state_dict(tmp_path / "evil.pth")
    assert "evil.pth" in str(e.value) and "weights_only=True" in str(e.value)


def test_corrupt_file_is_named(tmp_path):
    p = tmp_path / "broken.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CorruptModelFile) as e:
        read_state_dict(p)
    assert "broken.safetensors" in str(e.value)


def test_strict_load_names_file_and_keys(tmp_path):
    sd = toy_sd()
    sd["extra.weight"] = torch.zeros(3)
    del sd["norm.bias"]
    sd["proj.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointKeyError) as e:
        load_strict(Toy(), sd, source="models/toy/w.safetensors")
    msg = str(e.value)
    assert "models/toy/w.safetensors" in msg
    assert "missing keys (1): norm.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "proj.weight file (5, 4) vs model (8, 4)" in msg
    assert e.value.missing == ["norm.bias"] and e.value.unexpected == ["extra.weight"]


def test_build_on_meta_and_cast(tmp_path):
    sd = toy_sd()
    m = build_and_load(lambda: Toy(), sd, source="toy", dtype=torch.float16)
    assert all(not p.is_meta for p in m.parameters()) and m.proj.weight.dtype == torch.float16
    assert torch.equal(m.proj.weight, sd["proj.weight"].half())
    assert torch.equal(m.scale, torch.full((8,), 2.0, dtype=torch.float16))  # non-persistent buffer rebuilt
    x = torch.randn(2, 4)
    ref = Toy()
    ref.load_state_dict(sd)
    assert torch.allclose(m.float()(x), ref(x), atol=1e-2)


def test_diffusers_folder_single_and_sharded(tmp_path):
    sd = toy_sd()
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text(json.dumps({"_class_name": "Toy", "width": 8}))
    save_file(sd, single / "diffusion_pytorch_model.safetensors")
    cfg, got = read_diffusers_folder(single)
    assert cfg["width"] == 8 and set(got) == set(sd)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:2]}, sharded / "part1.safetensors")
    save_file({k: sd[k] for k in keys[2:]}, sharded / "part2.safetensors")
    index = {"weight_map": {k: ("part1.safetensors" if i < 2 else "part2.safetensors") for i, k in enumerate(keys)}}
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    got = read_checkpoint(sharded, dtype=torch.bfloat16)
    assert set(got) == set(sd) and got["proj.weight"].dtype == torch.bfloat16

    _, got = read_diffusers_folder(sharded, config={"width": 8})  # explicit config, no config.json needed
    assert set(got) == set(sd)
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_diffusers_folder(sharded)


def test_unknown_embedded_config_lists_known():
    with pytest.raises(KeyError, match="no embedded config"):
        embedded_config("does_not_exist")


# ---- loading policy ------------------------------------------------------------------------------------------------
def test_policy_converts_drops_and_reports(caplog):
    import logging

    from portrait_animation.loaders.checkpoint import load_with_policy
    from portrait_animation.loaders.policy import Drop, LoadPolicy, prefix_drop

    sd = toy_sd()
    file = {"module." + k: v for k, v in sd.items()}
    file.update({"module.head.weight": torch.zeros(2), "module.head.bias": torch.zeros(2),
                 "module.betas": torch.ones(3)})
    policy = LoadPolicy("toy", strip_prefixes=("module.",),
                        drops=(prefix_drop("head.", "unused head"), Drop(r"betas$", "schedule")))
    with caplog.at_level(logging.INFO, logger="portrait_animation.loaders.policy"):
        m = load_with_policy(lambda: Toy(), {"state_dict": file}, policy.with_(unwrap=("state_dict",)), "toy.pth")
    assert torch.equal(m.proj.weight, sd["proj.weight"]) and torch.equal(m.scale, torch.full((8,), 2.0))
    r = m.load_report
    assert r.dropped == {"unused head": ["head.weight", "head.bias"], "schedule": ["betas"]}
    assert r.converted == ["stripped prefix 'module.': 7 keys"] and r.file_dtype == "float32"
    msgs = [rec.getMessage() for rec in caplog.records]
    assert any("dropped 2 keys (unused head): head.* (2)" in s for s in msgs)
    assert any("toy.pth" in s and "schedule" in s for s in msgs)


def test_policy_missing_is_an_error_unexpected_a_warning_optional_filled(caplog):
    import logging

    from portrait_animation.loaders.checkpoint import load_with_policy
    from portrait_animation.loaders.policy import LoadPolicy

    class WithBN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.bn = torch.nn.BatchNorm1d(4)

    full = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
            for k, v in WithBN().state_dict().items()}
    policy = LoadPolicy("bn", optional=(r"num_batches_tracked$",))
    without = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    with caplog.at_level(logging.WARNING):
        m = load_with_policy(WithBN, dict(without, extra=torch.zeros(1)), policy, "bn.safetensors")
    assert m.load_report.filled == ["bn.num_batches_tracked"] and int(m.bn.num_batches_tracked) == 0
    assert m.load_report.unexpected == ["extra"]
    assert any(r.levelno == logging.WARNING and "extra" in r.getMessage() for r in caplog.records)
    assert not any(t.is_meta for t in m.state_dict().values())
    with pytest.raises(CheckpointKeyError) as e:
        load_with_policy(WithBN, {k: v for k, v in without.items() if k != "lin.bias"}, policy, "bn.safetensors")
    assert "bn.safetensors" in str(e.value) and "lin.bias" in str(e.value) and "wrong file or version" in str(e.value)
    with pytest.raises(CheckpointKeyError, match="shape mismatches"):
        load_with_policy(WithBN, dict(without, **{"lin.bias": torch.zeros(5)}), policy, "bn.safetensors")
    with pytest.raises(CheckpointKeyError, match="unexpected keys"):
        load_with_policy(WithBN, dict(without, extra=torch.zeros(1)), policy.with_(unexpected="error"), "bn")


def test_policy_keeps_the_file_dtype_unless_asked():
    from portrait_animation.loaders.checkpoint import load_with_policy
    from portrait_animation.loaders.policy import LoadPolicy

    half = {k: v.half() for k, v in toy_sd().items()}
    m = load_with_policy(lambda: Toy(), half, LoadPolicy("toy"), "named-fp32.safetensors")
    assert m.proj.weight.dtype == torch.float16 and m.load_report.file_dtype == "float16"
    m = load_with_policy(lambda: Toy(), half, LoadPolicy("toy"), "x", dtype=torch.float32)
    assert m.proj.weight.dtype == torch.float32 and m.load_report.file_dtype == "float16"


def test_legacy_attention_and_weight_norm_conversions():
    from portrait_animation.loaders.policy import rename_legacy_attention, weight_norm_names

    w = torch.randn(8, 8)
    sd = {"decoder.mid_block.attentions.0.query.weight": w[:, :, None, None],
          "decoder.mid_block.attentions.0.proj_attn.bias": torch.ones(8),
          "decoder.mid_block.attentions.0.group_norm.weight": torch.ones(8)}
    out, n = rename_legacy_attention(sd)
    assert n == 2 and torch.equal(out["decoder.mid_block.attentions.0.to_q.weight"], w)
    assert set(out) == {"decoder.mid_block.attentions.0.to_q.weight", "decoder.mid_block.attentions.0.to_out.0.bias",
                        "decoder.mid_block.attentions.0.group_norm.weight"}
    conv = weight_norm_names("pos.conv")
    out, n = conv.apply({"pos.conv.parametrizations.weight.original0": torch.ones(1),
                         "pos.conv.parametrizations.weight.original1": torch.zeros(2), "pos.conv.bias": torch.ones(2)})
    assert n == 2 and set(out) == {"pos.conv.weight_g", "pos.conv.weight_v", "pos.conv.bias"}
    back, n = weight_norm_names("pos.conv", to="parametrizations").apply(out)
    assert n == 2 and "pos.conv.parametrizations.weight.original1" in back


def test_training_checkpoint_unwrap_reports_siblings(tmp_path):
    from portrait_animation.loaders.policy import LoadReport

    sd = toy_sd()
    torch.save({"model": sd, "optimizer": {"lr": torch.tensor(0.1)}, "epoch": torch.tensor(3)}, tmp_path / "t.pt")
    report = LoadReport("t.pt")
    got = read_state_dict(tmp_path / "t.pt", unwrap=("state_dict", "model"), report=report)
    assert set(got) == set(sd) and sorted(report.dropped["training-checkpoint entries beside 'model'"]) == \
        ["epoch", "optimizer"]
