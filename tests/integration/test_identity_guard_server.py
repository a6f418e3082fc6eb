"""Identity Guard through a real ComfyUI server with the stand-in models: HunyuanPortrait and MEMO (their example
workflows) re-anchor every window a threshold of 1 fails and report it (sampler UI JSON, the identity_report output
through a preview), with the frame count unchanged; threshold 0 is HunyuanPortrait's unguarded run; MEMO's report
output is empty without the guard, and the error is clear when MEMO's identity models are off. MEMO's identity
models are the test server's stand-ins (``helpers.tiny_insightface``: a face in every frame)."""
from __future__ import annotations

import json

import numpy as np

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files, status_messages

WORKFLOW = ROOT / "workflows" / "api" / "Identity guard (HunyuanPortrait).json"
MEMO_WORKFLOW = ROOT / "workflows" / "api" / "Identity guard (MEMO).json"


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


def test_memo_guard_re_anchors_every_clip_and_reports_it(comfy_server):
    from portrait_animation.media.audio import audio_duration, load_audio

    graph = fast(load_api_workflow(MEMO_WORKFLOW))
    graph[_node(graph, "PortraitAnim_IdentityGuard")]["inputs"].update(threshold=1.0, max_retries=1,
                                                                      action="re-anchor")  # every clip fails
    assert graph[_node(graph, "PortraitAnim_MemoLoader")]["inputs"]["identity"] is True  # kept on by fast()
    sampler = _node(graph, "PortraitAnim_MemoSampler")
    entry, bar = _run_with_progress(comfy_server, graph, sampler, timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    ui = json.loads(entry["outputs"][sampler]["text"][0])
    frames = _saved_video(comfy_server, graph, entry)

    cond = graph[graph[sampler]["inputs"]["conditions"][0]]["inputs"]
    speech = load_audio(comfy_server.input_dir / graph[cond["audio"][0]]["inputs"]["audio_file"])
    n = round(audio_duration(speech) * float(cond["fps"]))  # one frame per 1/fps s of speech, as unguarded
    clip = cond["clip_length"]
    assert frames.shape[0] == n and np.isfinite(frames).all() and frames.std() > 0.01
    assert np.abs(np.diff(frames, axis=0)).mean() > 1e-3  # the frames move
    windows = ui["windows"]
    assert [w["frames"] for w in windows] == [[s, min(s + clip, n) - 1] for s in range(0, n, clip)]
    assert ui["identity_guard"]["family"] == "MEMO" and ui["identity_guard"]["threshold"] == 1.0
    assert ui["flagged"] == [w["frames"] for w in windows]
    for w in windows:
        assert w["attempts"] == 2 and w["action"] in ("re-anchored", "kept original"), w
        assert w["before"] is not None and w["after"] == max(w["scores"]) >= w["before"], w
    assert ui["re_anchored"] == [w["frames"] for w in windows if w["action"] == "re-anchored"]
    report = entry["outputs"][_node(graph, "PreviewAny")]["text"][0]
    assert "identity guard (MEMO" in report and f"{len(windows)} of {len(windows)} windows" in report
    assert f"frames 0-{clip - 1}" in report and f"frames {windows[-1]['frames'][0]}-{n - 1}" in report
    # the sampler's progress bar counts every retry's steps and ends at exactly 100%: its total grows when a retry
    # starts (without that the bar reached 100% halfway and stayed there)
    steps = graph[sampler]["inputs"]["steps"]
    assert bar and bar[-1] == (2 * len(windows) * steps,) * 2, bar
    assert all(v <= t for v, t in bar) and bar[0][1] == len(windows) * steps, bar


def _run_with_progress(server, graph: dict, node: str, timeout: float) -> tuple[dict, list]:
    """Run ``graph``; its history entry and the (value, max) of every progress message of ``node``."""
    import time

    import websocket

    ws = server.ws()
    bar = []
    try:
        status, body = server.queue(graph)
        assert status == 200, body
        pid, deadline = body["prompt_id"], time.time() + timeout
        while time.time() < deadline:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if not isinstance(raw, str):
                continue
            msg = json.loads(raw)
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, pid):
                continue
            if msg["type"] == "progress" and data.get("node") == node:
                bar.append((data["value"], data["max"]))
            if msg["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                break
    finally:
        ws.close()
    return server.wait(pid, 60), bar


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
