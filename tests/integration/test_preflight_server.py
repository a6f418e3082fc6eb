"""Preflight in a real ComfyUI: the Preflight node reports an estimate (text, JSON, numbers) for a loaded model, and
a sampler refuses, before any work, a run that does not fit the memory budget (a server started with
``PORTRAIT_ANIMATION_MEMORY_MB`` set to a budget smaller than the stand-in models' weights)."""
from __future__ import annotations

import json

import pytest

from .comfy import ROOT, ComfyServer, fast, load_api_workflow, stage_inputs, status_messages


def _preflight_graph(**inputs) -> dict:
    settings = {"frames": 10, "steps": 2, "size": 64, "window": 8, "decode_chunk": 0, "clip_length": 4,
                "output": "frames", **inputs}
    return {
        "1": {"class_type": "PortraitAnim_HunyuanPortraitLoader",
              "inputs": {"dtype": "fp32", "arcface": False, "download": False}},
        "2": {"class_type": "PortraitAnim_Preflight", "inputs": {**settings, "hunyuan_portrait": ["1", 0]}},
    }


def test_preflight_node_reports_the_estimate(comfy_server):
    entry = comfy_server.run(_preflight_graph())
    assert entry["status"]["status_str"] == "success", status_messages(entry)
    report = json.loads(entry["outputs"]["2"]["text"][0])
    assert report["model"] == "HunyuanPortrait" and report["fits"] is True
    assert report["peak"] > report["weights"] > 0 and report["seconds"] >= 0
    assert report["settings"]["frames"] == 10 and report["settings"]["decode_chunk"] >= 1   # 0 = auto: a size
    longer = comfy_server.run(_preflight_graph(frames=200))
    assert json.loads(longer["outputs"]["2"]["text"][0])["peak"] > report["peak"]
    # with the sampler's Speed Options: traced with them (tests/test_preflight.py measures that), named in the settings
    graph = _preflight_graph()
    graph["3"] = {"class_type": "PortraitAnim_SpeedOptions",
                  "inputs": {"attention": "sdpa_math", "compile": "off", "cache_interval": 1}}
    graph["2"]["inputs"]["speed"] = ["3", 0]
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "success", status_messages(entry)
    fast_report = json.loads(entry["outputs"]["2"]["text"][0])
    assert fast_report["settings"]["attention"] == "sdpa_math" and "attention" not in report["settings"]
    assert fast_report["peak"] >= report["peak"] and fast_report["fits"] is True


def test_preflight_node_wants_one_model(comfy_server):
    graph = _preflight_graph()
    del graph["2"]["inputs"]["hunyuan_portrait"]
    entry = comfy_server.run(graph)
    err = status_messages(entry)["execution_error"]
    assert "connect exactly one model" in err["exception_message"]


@pytest.fixture(scope="module")
def tight_server(comfy_install, tmp_path_factory, data_dir, parity_root):
    """A server whose pack plans for 1 MB: less than the stand-in HunyuanPortrait's weights."""
    from helpers.tiny_models import write_hunyuan_models

    server = ComfyServer(comfy_install, tmp_path_factory.mktemp("comfy-tight"),
                         env={"PORTRAIT_ANIMATION_MEMORY_MB": "1"})
    write_hunyuan_models(server.models_dir, parity_root)
    server.start()
    stage_inputs(server, sorted(data_dir.iterdir()))
    yield server
    server.stop()


def test_sampler_refuses_a_run_over_the_budget_before_any_work(tight_server):
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / "HunyuanPortrait video.json"))
    entry = tight_server.run(graph)
    assert entry["status"]["status_str"] == "error"
    err = status_messages(entry)["execution_error"]
    assert err["node_type"] == "PortraitAnim_HunyuanPortraitSampler", err
    message = err["exception_message"]
    assert err["exception_type"] == "PreflightError", err
    assert "HunyuanPortrait will not fit" in message and "1 MB is free" in message and "Nothing was run" in message
    assert "decode_chunk" in message and "window" in message                  # the fixes
    assert "SaveVideo" not in json.dumps(entry["outputs"])                     # nothing was produced
