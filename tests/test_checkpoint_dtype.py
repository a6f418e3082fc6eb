"""Reading checkpoints in the target dtype: each tensor is cast as it is read (safetensors without a memory map, .pth
memory-mapped and cast per tensor); values equal a read-then-cast; the report keeps the file's own dtypes; corrupt
files are still named; strict key checks still name the file."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from portrait_animation.loaders.checkpoint import (CheckpointKeyError, load_file_with_policy, read_diffusers_folder,
                                                   read_state_dict)
from portrait_animation.loaders.policy import LoadPolicy
from portrait_animation.loaders.store import CorruptModelFile


def mixed_sd():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(7, 5, generator=g), "a.bias": torch.randn(7, generator=g).half(),
            "b.weight": torch.randn(3, 2, 4, generator=g).bfloat16(), "bn.num_batches_tracked": torch.tensor(11),
            "ids": torch.arange(6, dtype=torch.int32).reshape(2, 3), "mask": torch.tensor([True, False]),
            "empty": torch.zeros(0, 4), "scalar": torch.tensor(1.5, dtype=torch.float64)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_cast_while_reading_equals_read_then_cast(tmp_path, dtype, suffix):
    sd = mixed_sd()
    path = tmp_path / f"w{suffix}"
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    got = read_state_dict(path, dtype=dtype)
    assert list(got) == list(load_file(path)) if suffix == ".safetensors" else set(got) == set(sd)
    for k, v in sd.items():
        want = v.to(dtype) if v.is_floating_point() else v
        assert got[k].dtype == want.dtype and got[k].shape == want.shape and torch.equal(got[k], want), k
    assert got.file_dtypes == {"float32": 2, "float16": 1, "bfloat16": 1, "int64": 1, "int32": 1, "bool": 1,
                               "float64": 1}


def test_sharded_folder_keeps_the_file_dtypes(tmp_path):
    sd = mixed_sd()
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:3]}, tmp_path / "p1.safetensors")
    save_file({k: sd[k] for k in keys[3:]}, tmp_path / "p2.safetensors")
    index = {"weight_map": {k: ("p1.safetensors" if i < 3 else "p2.safetensors") for i, k in enumerate(keys)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    _, got = read_diffusers_folder(tmp_path, dtype=torch.float16, config={})
    assert set(got) == set(sd) and got["a.weight"].dtype == torch.float16
    assert sum(got.file_dtypes.values()) == len(sd) and got.file_dtypes["float32"] == 2


def _header_file(path, header: dict, payload: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + payload)


@pytest.mark.parametrize("case", ["short", "bad_json", "offsets", "truncated", "dtype"])
def test_malformed_safetensors_are_named_when_casting(tmp_path, case):
    p = tmp_path / f"{case}.safetensors"
    if case == "short":
        p.write_bytes(b"\x10\x00")
    elif case == "bad_json":
        p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    elif case == "offsets":
        _header_file(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, bytes(16))
    elif case == "truncated":
        _header_file(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8))
    else:
        _header_file(p, {"w": {"dtype": "X9", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(CorruptModelFile) as e:
        read_state_dict(p, dtype=torch.bfloat16)
    assert p.name in str(e.value)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 6)
        self.bn = torch.nn.BatchNorm1d(6)


def test_policy_load_in_target_dtype_reports_file_dtype_and_checks_keys(tmp_path):
    sd = {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in Net().state_dict().items()}
    save_file(sd, tmp_path / "net.safetensors")
    m = load_file_with_policy(tmp_path / "net.safetensors", Net, LoadPolicy("net"), dtype=torch.bfloat16)
    assert m.lin.weight.dtype == torch.bfloat16 and torch.equal(m.lin.weight, sd["lin.weight"].bfloat16())
    assert m.bn.num_batches_tracked.dtype == torch.int64
    assert m.load_report.file_dtype == "float32"
    del sd["lin.bias"]
    save_file(sd, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointKeyError) as e:
        load_file_with_policy(tmp_path / "partial.safetensors", Net, LoadPolicy("net"), dtype=torch.bfloat16)
    assert "partial.safetensors" in str(e.value) and "lin.bias" in str(e.value)
