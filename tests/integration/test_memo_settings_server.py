"""MEMO settings a model cannot take, refused by a real ComfyUI server before any work: a frame size when the prompt
is queued (the sampler's ``validate_inputs``), a clip length beyond the loaded model's temporal position table when
the audio node starts (the stand-in models' table has 32 rows)."""
from __future__ import annotations

import json

from .comfy import ROOT, fast, load_api_workflow, status_messages


def _memo_graph() -> dict:
    return fast(load_api_workflow(ROOT / "workflows" / "api" / "MEMO talking portrait.json"))


def _node(graph: dict, class_type: str) -> str:
    return next(k for k, v in graph.items() if v["class_type"] == class_type)


def test_a_size_the_vae_cannot_take_is_refused_when_queued(comfy_server):
    graph = _memo_graph()
    sampler = _node(graph, "PortraitAnim_MemoSampler")
    graph[sampler]["inputs"]["resolution"] = 100
    status, body = comfy_server.queue(graph)
    # the workflow's Model Files report does not depend on the sampler, so the prompt may still be queued for it
    assert status in (200, 400) and sampler in body.get("node_errors", {}), body
    details = json.dumps(body["node_errors"][sampler]["errors"])
    assert "input 'resolution' is 100" in details and "multiple of 8 from 64 to 2048" in details, details


def test_the_other_inputs_keep_comfyui_range_checks(comfy_server):
    graph = _memo_graph()
    sampler = _node(graph, "PortraitAnim_MemoSampler")
    graph[sampler]["inputs"]["steps"] = 0  # below the widget's min: still ComfyUI's own check
    status, body = comfy_server.queue(graph)
    assert status in (200, 400) and sampler in body.get("node_errors", {}), body
    errors = body["node_errors"][sampler]["errors"]
    assert any(e["extra_info"].get("input_name") == "steps" for e in errors), errors


def test_a_clip_longer_than_the_position_table_stops_the_audio_node(comfy_server):
    graph = _memo_graph()
    audio = _node(graph, "PortraitAnim_MemoAudio")
    graph[audio]["inputs"]["clip_length"] = 40
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "error"
    err = status_messages(entry)["execution_error"]
    assert err["node_type"] == "PortraitAnim_MemoAudio"
    assert "'clip_length' is 40" in err["exception_message"] and "from 1 to 32" in err["exception_message"]
