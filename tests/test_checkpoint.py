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
