"""Resume Options node and the samplers' optional 'resume' input, read through the stand-in ``comfy_api.v0_0_2``:
the input is appended last on the three samplers, unconnected means on in ComfyUI's output folder (kept across a
restart, unlike the temp folder), and the node's folder / enabled / keep / max_gb reach the samplers."""
from __future__ import annotations

import importlib
import os
import types

import pytest

from helpers.comfy_stub import forget_stub_nodes, install_stub_comfy_api


@pytest.fixture
def nodes(monkeypatch, tmp_path):
    api = install_stub_comfy_api(monkeypatch)
    api.io.NodeOutput = lambda *args, **kw: types.SimpleNamespace(args=args)
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_output_directory = lambda: str(tmp_path / "output")
    folder_paths.get_temp_directory = lambda: str(tmp_path / "temp")
    monkeypatch.setitem(importlib.sys.modules, "folder_paths", folder_paths)
    yield types.SimpleNamespace(**{name: importlib.import_module(f"portrait_animation.nodes.{name}")
                                   for name in ("resume", "memo", "hunyuan_portrait", "hellomeme")}), tmp_path
    forget_stub_nodes()


def test_samplers_take_resume_as_their_last_input(nodes):
    mods, _ = nodes
    for node in (mods.memo.MemoSampler, mods.hunyuan_portrait.HunyuanPortraitSampler, mods.hellomeme.HelloMemeVideo):
        last = node.define_schema()["inputs"][-1]
        assert last["id"] == "resume" and last["kind"] == "PA_RESUME_OPTIONS" and last["optional"], node
        assert "output/portrait_animation/resume" in last["tooltip"]


def test_defaults_and_options(nodes):
    mods, tmp = nodes
    schema = mods.resume.ResumeOptionsNode.define_schema()
    assert all(i.get("tooltip") for i in schema["inputs"]) and schema["outputs"][0]["kind"] == "PA_RESUME_OPTIONS"
    default = mods.resume.resume_options(None)  # unconnected: on, in the output folder
    assert default.active and default.folder == os.path.join(str(tmp / "output"), "portrait_animation", "resume")
    assert not default.keep
    run = mods.resume.ResumeOptionsNode.execute
    assert run(True, "", False, 8.0).args[0].folder == default.folder
    relative = run(True, "my_cache", True, 2.0).args[0]
    assert relative.folder == os.path.join(str(tmp / "output"), "my_cache") and relative.keep and relative.max_gb == 2.0
    assert run(True, str(tmp / "abs"), False, 8.0).args[0].folder == str(tmp / "abs")
    off = run(False, "", False, 8.0).args[0]
    assert not off.active and mods.resume.resume_options(off) is off
