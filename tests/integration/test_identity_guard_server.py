"""Identity Guard through a real ComfyUI server with the stand-in models: HunyuanPortrait re-anchors every window a
threshold of 1 fails and reports it (sampler UI JSON, the identity_report output through a preview), with the frame
count unchanged; threshold 0 is the unguarded run; MEMO's report output, and the clear error when MEMO's identity
models are off."""
from __future__ import annotations

import json

import numpy as np

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files, status_messages

WORKFLOW = ROOT / "workflows" / "api" / "Identity guard (HunyuanPortrait).json"


def _node(graph: dict, class_type: str) -> str:
    return next(k for k, v in graph.items() if v["class_type"] == class_type)


def _saved_video(server, graph: dict, entry: dict) -> np.ndarray:
    saved = [f for nid, f in output_files(entry) if graph[nid]["class_type"] == "SaveVideo"]
    assert len(saved) == 1, entry["outputs"]
    return decode_media(fetch_view(server, saved[0]), saved[0]["filename"])


def _guard_graph(**guard) -> dict:
    graph = fast(load_api_workflow(WORKFLOW))
    graph[_node(graph, "PortraitAnim_IdentityGuard")]["inputs"].update(guard)
    return graph


def test_hunyuan_guard_re_anchors_failing_windows_and_reports_them(comfy_server):
    graph = _guard_graph(threshold=1.0, max_retries=1, action="re-anchor")  # every window fails
    entry = comfy_server.run(graph, timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    sampler = _node(graph, "PortraitAnim_HunyuanPortraitSampler")
    ui = json.loads(entry["outputs"][sampler]["text"][0])
    frames = _saved_video(comfy_server, graph, entry)
    n = len(ui["per_frame"])
    assert frames.shape[0] == n and np.isfinite(frames).all() and frames.std() > 0.01
    windows = ui["windows"]
    window = graph[sampler]["inputs"]["window"]
    assert [w["frames"] for w in windows] == [[s, min(s + window, n) - 1] for s in range(0, n, window)]
    assert ui["identity_guard"]["threshold"] == 1.0 and ui["flagged"] == [w["frames"] for w in windows]
    for w in windows:
        assert w["attempts"] == 2 and w["action"] in ("re-anchored", "kept original"), w
        assert w["after"] >= w["before"]
    report = entry["outputs"][_node(graph, "PreviewAny")]["text"][0]
    assert "identity guard (HunyuanPortrait" in report and f"{len(windows)} of {len(windows)} windows" in report
    assert f"frames 0-{window - 1}" in report


def test_hunyuan_guard_threshold_zero_is_the_unguarded_run(comfy_server):
    off = _guard_graph(threshold=0.0)
    plain = json.loads(json.dumps(off))
    sampler = _node(plain, "PortraitAnim_HunyuanPortraitSampler")
    del plain[sampler]["inputs"]["identity_guard"]
    del plain[_node(plain, "PortraitAnim_IdentityGuard")]
    results = []
    for graph in (plain, off):
        entry = comfy_server.run(graph, timeout=900)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
        results.append((_saved_video(comfy_server, graph, entry), entry["outputs"][_node(graph, "PreviewAny")]))
    (video_plain, text_plain), (video_off, text_off) = results
    assert text_plain == text_off and "identity guard" not in text_off["text"][0]
    assert video_plain.shape == video_off.shape and np.array_equal(video_plain, video_off)


def _memo_graph(**guard) -> dict:
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / "MEMO talking portrait.json"))
    sampler = _node(graph, "PortraitAnim_MemoSampler")
    graph["guard"] = {"class_type": "PortraitAnim_IdentityGuard",
                      "inputs": {"threshold": 0.5, "action": "re-anchor", "max_retries": 1, "statistic": "mean",
                                 "guidance_boost": 0.5, "blend_frames": 4, **guard}}
    graph[sampler]["inputs"]["identity_guard"] = ["guard", 0]
    graph["report"] = {"class_type": "PreviewAny", "inputs": {"source": [sampler, 4]}}
    return graph


def test_memo_guard_needs_the_identity_models(comfy_server):
    graph = _memo_graph()  # the fast settings load MEMO without its identity models
    entry = comfy_server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "error"
    err = status_messages(entry)["execution_error"]
    assert err["node_type"] == "PortraitAnim_MemoSampler", err
    assert "turn on 'identity' on MEMO Loader" in err["exception_message"], err["exception_message"]


def test_memo_report_output_is_empty_when_the_guard_is_off(comfy_server):
    graph = _memo_graph(threshold=0.0)
    entry = comfy_server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    assert entry["outputs"]["report"]["text"] == [""]
    sampler = _node(graph, "PortraitAnim_MemoSampler")
    assert "text" not in entry["outputs"].get(sampler, {})
    saved = [f for nid, f in output_files(entry) if graph[nid]["class_type"] == "SaveVideo"]
    frames = decode_media(fetch_view(comfy_server, saved[0]), saved[0]["filename"])
    assert frames.shape[0] > 1 and np.isfinite(frames).all() and frames.std() > 0.01
