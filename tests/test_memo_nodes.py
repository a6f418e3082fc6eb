"""MEMO nodes without ComfyUI: the sampler's ``validate_inputs`` and the node defaults, read through a stand-in
``comfy_api.v0_0_2`` that records what ``define_schema`` declares. The example workflows carry the same defaults."""
from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pytest

from portrait_animation.memo import pipeline

from helpers.comfy_stub import forget_stub_nodes, install_stub_comfy_api

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def memo_nodes(monkeypatch):
    install_stub_comfy_api(monkeypatch)
    yield importlib.import_module("portrait_animation.nodes.memo")
    forget_stub_nodes()


def _inputs(node) -> dict:
    return {i["id"]: i for i in node.define_schema()["inputs"]}


@pytest.mark.parametrize("resolution", [64, 512, 520, 2048, None])
def test_validate_accepts_sizes_the_model_takes(memo_nodes, resolution):
    assert memo_nodes.MemoSampler.validate_inputs(resolution=resolution) is True  # None: a linked input


@pytest.mark.parametrize("resolution", [500, 516, 56, 4096])
def test_validate_rejects_other_sizes_naming_input_and_range(memo_nodes, resolution):
    message = memo_nodes.MemoSampler.validate_inputs(resolution=resolution)
    assert isinstance(message, str)
    assert f"'resolution' is {resolution}" in message and "multiple of 8 from 64 to 2048" in message
    suggested = int(message.split("e.g. ")[1].split(";")[0])
    assert pipeline.resolution_problem(suggested) is None


def test_validate_names_only_the_input_it_checks(memo_nodes):
    # ComfyUI skips its own min/max/combo checks for inputs named by validate_inputs, and for all inputs when it
    # takes **kwargs: naming only `resolution` keeps them for the others
    spec = inspect.getfullargspec(memo_nodes.MemoSampler.validate_inputs)
    assert spec.varkw is None and spec.args[1:] == ["resolution"]


def test_node_defaults_are_the_released_ones(memo_nodes):
    sampler = _inputs(memo_nodes.MemoSampler)
    assert sampler["faithful"]["default"] is True
    res = sampler["resolution"]
    assert (res["default"], res["min"], res["max"], res["step"]) == (512, pipeline.RESOLUTION_MIN,
                                                                     pipeline.RESOLUTION_MAX, pipeline.RESOLUTION_STEP)
    assert pipeline.resolution_problem(res["min"]) is None and pipeline.resolution_problem(res["max"]) is None
    assert _inputs(memo_nodes.MemoLoader)["dtype"]["default"] == "auto"
    assert pipeline.MemoSettings().faithful is True


def test_example_workflows_use_the_released_batching():
    api = json.loads((ROOT / "workflows" / "api" / "MEMO talking portrait.json").read_text())
    samplers = [n for n in api.values() if n.get("class_type") == "PortraitAnim_MemoSampler"]
    assert samplers and all(n["inputs"]["faithful"] is True for n in samplers)
    ui = json.loads((ROOT / "workflows" / "MEMO talking portrait.json").read_text())
    nodes = [n for n in ui["nodes"] if n["type"] == "PortraitAnim_MemoSampler"]
    # widgets in input order: seed, control_after_generate, steps, cfg, past_frames, resolution, on_missing_face,
    # faithful
    assert nodes and all(n["widgets_values"][-1] is True and n["widgets_values"][5] == 512 for n in nodes)
