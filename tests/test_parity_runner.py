"""The parity runner itself: discovery, selection, dispatch (unhandled fails), tolerance checks, cleanup."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from parity import runner


def make_case(root: Path, family: str, name: str, component: str, expected: dict, tol=None, weights=True):
    d = root / family / name
    d.mkdir(parents=True)
    spec = {"family": family, "component": component, "tolerance": tol or {"per_output": {}}}
    (d / "case.json").write_text(json.dumps(spec))
    save_file({"x": torch.arange(4.0)}, d / "inputs.safetensors")
    save_file(expected, d / "expected.safetensors")
    if weights:
        (d / "weights.json").write_text(json.dumps({"seed": 1, "files": [{"path": "m/w.safetensors", "tensors": [
            {"key": "w", "shape": [4], "dtype": "float32", "init": {"kind": "const", "value": 2.0}}]}]}))
    return d


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    root = tmp_path / "parity"
    root.mkdir()
    shutil.copy(runner.DEFAULT_PARITY_ROOT / "materialize.py", root / "materialize.py")
    monkeypatch.setenv("PARITY_ROOT", str(root))
    seen = {}

    def double_with_weights(case, ckpt):
        from portrait_animation.loaders.checkpoint import read_state_dict

        seen["dir"] = ckpt
        w = read_state_dict(ckpt / "m/w.safetensors")["w"]
        return {"y": case.inputs()["x"] * w, "label": torch.tensor([3], dtype=torch.int64)}

    monkeypatch.setitem(runner.HANDLERS, "selftest.double", double_with_weights)
    return root, seen


def test_pass_fail_and_unhandled(fake_root):
    root, seen = fake_root
    exact = {"y": torch.arange(4.0) * 2, "label": torch.tensor([3])}
    make_case(root, "selftest", "ok", "selftest.double", exact, {"per_output": {"y": {"atol": 1e-6, "rtol": 0}}})
    off = {"y": torch.arange(4.0) * 2 + torch.tensor([0, 0, 0, 1e-3]), "label": torch.tensor([3])}
    make_case(root, "selftest", "off", "selftest.double", off, {"per_output": {"y": {"atol": 1e-4, "rtol": 0}}})
    make_case(root, "selftest", "loose", "selftest.double", off, {"per_output": {"y": {"atol": 2e-3, "rtol": 0}}})
    wrong_int = {"y": torch.arange(4.0) * 2, "label": torch.tensor([4])}
    make_case(root, "selftest", "int", "selftest.double", wrong_int, {"atol": 1.0})
    make_case(root, "selftest", "new", "selftest.unknown", exact)

    cases = {c.path.name: c for c in runner.discover(root)}
    assert set(cases) == {"ok", "off", "loose", "int", "new"}
    assert runner.run_case(cases["ok"], root) == []
    assert not seen["dir"].exists()  # materialised weights are deleted after the case
    assert "exceed atol=0.0001" in runner.run_case(cases["off"], root)[0]
    assert runner.run_case(cases["loose"], root) == []
    assert "integer values differ" in runner.run_case(cases["int"], root)[0]
    assert "no handler for component 'selftest.unknown'" in runner.run_case(cases["new"], root)[0]


def test_shape_and_missing_outputs_fail():
    exp = {"a": torch.zeros(2, 3), "b": torch.zeros(1)}
    problems = runner.compare({"a": torch.zeros(3, 2)}, exp, {})
    assert any("shape" in p for p in problems) and any("b: not produced" in p for p in problems)
    assert runner.compare({"a": torch.full((2, 3), float("nan")), "b": torch.zeros(1)}, exp, {"atol": 1})


def test_family_selection(monkeypatch, fake_root):
    root, _ = fake_root
    make_case(root, "memo", "a", "memo.x", {"y": torch.zeros(1)})
    make_case(root, "hellomeme", "b", "hellomeme.x", {"y": torch.zeros(1)})
    cases = runner.discover(root)
    monkeypatch.setenv("PARITY_FAMILIES", "memo")
    chosen, left = runner.split_cases(cases)
    assert [c.family for c in chosen] == ["memo"] and [c.family for c in left] == ["hellomeme"]
    monkeypatch.setenv("PARITY_FAMILIES", "all")
    assert len(runner.split_cases(cases)[0]) == 2
    monkeypatch.delenv("PARITY_FAMILIES")
    monkeypatch.setattr(runner, "DONE", {"memo": ("memo.x",), "hellomeme": ("hellomeme.other",)})
    chosen, left = runner.split_cases(cases)
    assert [c.component for c in chosen] == ["memo.x"] and [c.component for c in left] == ["hellomeme.x"]
    monkeypatch.setattr(runner, "DONE", {"hellomeme": "*"})
    chosen, _ = runner.split_cases(cases)
    assert [c.component for c in chosen] == ["hellomeme.x"]


def test_every_shared_case_is_well_formed():
    cases = runner.discover(runner.DEFAULT_PARITY_ROOT)
    assert len(cases) > 50
    for c in cases:
        assert c.family in runner.FAMILIES, c.id
        assert c.component.startswith(c.family + "."), c.id
        assert (c.path / "expected.safetensors").is_file(), c.id
