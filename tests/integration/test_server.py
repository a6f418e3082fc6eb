"""The pack inside a real ComfyUI: registration, schemas, errors, workflows, cancellation."""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files, status_messages

PACK_CATEGORY = "Portrait Animation"
API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.json"))


CROP_DEFAULTS = {"size": 512, "scale": 2.0, "offset_y": -0.1, "stability": "smooth", "smoothing_window": 9,
                 "padding": "replicate"}


def face_crop(images, **over) -> dict:
    return {"class_type": "PortraitAnim_FaceCrop", "inputs": {"images": images, **CROP_DEFAULTS, **over}}


def pack_nodes(object_info: dict) -> dict[str, dict]:
    return {k: v for k, v in object_info.items() if k.startswith("PortraitAnim_")}


def test_pack_imports_without_errors(comfy_server):
    log = comfy_server.log_text()
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, comfy_server.log_tail()
    assert "Error while calling comfy_entrypoint" not in log, comfy_server.log_tail()
    assert "nodes in" not in log or "are unavailable" not in log, comfy_server.log_tail()


def test_every_node_is_listed_with_tooltips(comfy_server):
    nodes = pack_nodes(comfy_server.get("/object_info"))
    expected = {"PortraitAnim_ModelFiles", "PortraitAnim_FaceCrop", "PortraitAnim_FacePasteBack"}
    assert expected <= set(nodes), sorted(nodes)
    for node_id, info in nodes.items():
        assert info["category"].startswith(PACK_CATEGORY), node_id
        assert info["description"], f"{node_id} has no description"
        assert info["python_module"].startswith("custom_nodes."), node_id
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
        tips = info.get("output_tooltips") or []
        assert len(tips) == len(info["output"]) and all(tips), f"{node_id} outputs lack tooltips: {tips}"


# Nodes that cannot be in a workflow that runs as shipped, and why (each is documented in the README instead).
NOT_IN_WORKFLOWS = {
    "PortraitAnim_LipSyncMetric": "needs syncnet_v2.model, which is placed by hand (never downloaded: plain http, no "
                                  "published checksum); tests/test_syncnet.py runs it on stand-in weights",
}


def test_every_node_appears_in_an_example_workflow(comfy_server):
    used = {node["class_type"] for path in API_WORKFLOWS for node in load_api_workflow(path).values()}
    unused = sorted(set(pack_nodes(comfy_server.get("/object_info"))) - used - set(NOT_IN_WORKFLOWS))
    assert not unused, f"nodes without an example workflow: {unused}"


def test_missing_weights_error_lists_file_source_destination(comfy_server):
    prompt = {"1": {"class_type": "PortraitAnim_ModelFiles",
                    "inputs": {"family": "hellomeme", "groups": "v5b,expression_arkit", "download": False,
                               "verify_checksums": False}}}
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    err = status_messages(entry)["execution_error"]
    msg = err["exception_message"]
    assert err["node_type"] == "PortraitAnim_ModelFiles"
    assert "missing" in msg and "downloading is off" in msg
    # the dialog gets a short summary; the full list (each source and destination) is in the server's log
    assert "source:" not in msg and len(msg.splitlines()) <= 8, msg
    log = comfy_server.log_text()
    assert "source:" in log and "huggingface.co/songkey/hm5b_reference" in log  # no stand-in of it
    # the folder configured in extra_model_paths.yaml comes first and receives downloads
    assert str(comfy_server.extra_models_dir / "hellomeme") in msg
    assert "destination:" in log and str(comfy_server.extra_models_dir / "hellomeme" / "hm5b_reference") in log
    assert str(comfy_server.models_dir / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors") in log


def test_bad_input_is_rejected_with_its_name(comfy_server):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "harris.jpg"}},
        "2": face_crop(["1", 0], size=3),
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    status, body = comfy_server.queue(prompt)
    assert status == 400, body
    errors = body["node_errors"]["2"]["errors"]
    assert any(e["extra_info"].get("input_name") == "size" for e in errors), errors


def test_no_face_is_a_clear_runtime_error_naming_the_frame(comfy_server):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "harris.jpg"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": face_crop(["3", 0]),
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    msg = status_messages(entry)["execution_error"]["exception_message"]
    assert "no face found in frame 1 of 2 of input 'images'" in msg, msg


SAVE_NODES = ("SaveImage", "SaveVideo")
MODEL_NODES = ("PortraitAnim_HelloMemeImage", "PortraitAnim_HelloMemeVideo", "PortraitAnim_MemoSampler",
               "PortraitAnim_HunyuanPortraitSampler")


def talking_frames(graph: dict, memo_sampler: dict, media_dir) -> tuple[float, float]:
    """(frames, fps) of a MEMO sampler: one frame per 1/fps s of the speech its conditioner reads."""
    from portrait_animation.media.audio import audio_duration, load_audio

    cond = graph[memo_sampler["inputs"]["conditions"][0]]["inputs"]
    audio = graph[cond["audio"][0]]["inputs"]["audio_file"]
    fps = float(cond["fps"])
    return audio_duration(load_audio(media_dir / audio)) * fps, fps


def driving_frames(graph: dict, conditions: dict, media_dir) -> tuple[float, float, float]:
    """(frames, fps, tolerance) of what drives a conditions node: a Load Video (Frames) after frame_cap and
    select_every_nth, or a MEMO talking head (the speech examples; the tests' stand-in face blended over it keeps
    its frames)."""
    from portrait_animation.media.video import video_info

    source = graph[conditions["driving"][0]]
    if source["class_type"] == "ImageBlend":  # comfy.standin_talking_head
        source = graph[source["inputs"]["image2"][0]]
    if source["class_type"] == "PortraitAnim_MemoSampler":
        n, fps = talking_frames(graph, source, media_dir)
        return n, fps, 1
    loader = source["inputs"]
    info = video_info(media_dir / loader["video"])
    n = len(range(loader["start_frame"], info["frames"], loader["select_every_nth"]))
    return min(n, loader["frame_cap"] or n), float(info["fps"]) / loader["select_every_nth"], 0


def expected_frames(graph: dict, media_dir, original_frames: int) -> tuple[float, float]:
    """(frames, tolerance) the saved result must have, worked out from the graph's inputs: a driven video has one
    frame per driving frame (after frame_cap and resampling to the conditions' ``driving_fps``), a talking portrait
    one per 1/fps s of speech, an image one, and a plain paste-back as many as its original. A talking head that
    drives HelloMeme or HunyuanPortrait counts as their driving video."""
    by_class = {v["class_type"]: v["inputs"] for v in graph.values()}
    if "PortraitAnim_HunyuanPortraitSampler" in by_class:  # one output frame per driving frame, no resampling
        n, _, tolerance = driving_frames(graph, by_class["PortraitAnim_HunyuanPortraitConditions"], media_dir)
        return n, tolerance
    if "PortraitAnim_HelloMemeVideo" in by_class:
        cond = by_class["PortraitAnim_HelloMemeConditions"]
        n, source_fps, tolerance = driving_frames(graph, cond, media_dir)
        target_fps = cond.get("driving_fps") or 0
        return (n * target_fps / source_fps, 1) if target_fps else (n, tolerance)
    if "PortraitAnim_MemoSampler" in by_class:
        sampler = next(v for v in graph.values() if v["class_type"] == "PortraitAnim_MemoSampler")
        return talking_frames(graph, sampler, media_dir)[0], 1
    if "PortraitAnim_HelloMemeImage" in by_class:
        return 1, 0
    return original_frames, 0


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_runs(comfy_server, path):
    """Every example runs with the stand-in models and its result is a real picture: finite, not constant, the size
    of the original, the expected frame count, and the face changed (by the model, or by the stand-in edit and
    nowhere else)."""
    graph = fast(load_api_workflow(path))
    entry = comfy_server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    files = output_files(entry)
    assert files, f"{path.name} produced no output files: {entry['outputs']}"
    for node_id, f in files:  # every listed file (previews too) comes back through /view and is a real image
        frames = decode_media(fetch_view(comfy_server, f), f["filename"])
        assert np.isfinite(frames).all() and frames.std() > 0.01, f"{path.stem}: {f} is constant or not finite"

    saved = [(nid, f) for nid, f in files if graph[nid]["class_type"] in SAVE_NODES]
    assert len(saved) == 1, f"{path.stem}: expected one saved result, got {saved}"
    result = decode_media(fetch_view(comfy_server, saved[0][1]), saved[0][1]["filename"])
    source = next(v for v in graph[saved[0][0]]["inputs"].values() if isinstance(v, list))[0]
    if graph[source]["class_type"] == "PortraitAnim_LabelledImageGrid":  # a comparison of several results
        check_comparison_grid(graph, source, result, path.stem)
        return
    original_name = paste_back_original(graph)
    original = decode_media((comfy_server.input_dir / original_name).read_bytes(), original_name)
    n, height, width = original.shape[:3]
    if graph[saved[0][0]]["class_type"] == "SaveVideo":  # FramesToVideo pads to even sizes for h264
        height, width = height + height % 2, width + width % 2
    assert result.shape[1:3] == (height, width), f"{path.stem}: result {result.shape}, original {original.shape}"
    frames, tolerance = expected_frames(graph, comfy_server.input_dir, n)
    assert abs(result.shape[0] - frames) <= tolerance, f"{path.stem}: {result.shape[0]} frames, expected {frames}"

    # the face (found in the original by the pack's detector) changed
    box = face_box(original[0])
    inside, border = change_inside_outside(result[0, : original.shape[1], : original.shape[2]], original[0], box)
    if any(v["class_type"] in MODEL_NODES for v in graph.values()):
        assert inside > 0.05, f"{path.stem}: the model did not change the face ({inside:.4f})"
        assert "clip missing" not in comfy_server.log_text(), "the stand-in CLIP did not load completely"
    else:  # the stand-in edit (sharpening) shows on the face, and the frame's border keeps the original
        assert inside > 0.004 and inside > 3 * border, f"{path.stem}: face change {inside:.4f}, border {border:.4f}"


def check_comparison_grid(graph: dict, grid_id: str, result: np.ndarray, name: str) -> None:
    """A saved Labelled Image Grid: as many panels as connected images, laid out by ``columns`` with a caption bar
    under each; the first panel is HelloMeme's 512 reference crop (its size is every panel's); every panel is a
    real picture, every caption has text, and each sampler's panel differs from the reference crop (the model
    changed the face) and from every other sampler's (each version's models give their own result)."""
    inputs = graph[grid_id]["inputs"]
    panels = [inputs[f"image_{i}"] for i in range(1, 9) if isinstance(inputs.get(f"image_{i}"), list)]
    columns = min(int(inputs["columns"]), len(panels))
    rows = -(-len(panels) // columns)
    label = int(inputs["label_height"])
    assert result.shape[0] == 1, f"{name}: {result.shape[0]} frames"
    height, width = result.shape[1] // rows - label, result.shape[2] // columns
    assert (height, width) == (512, 512) and result.shape[1:3] == (rows * (512 + label), columns * 512), \
        f"{name}: grid {result.shape} for {len(panels)} panels in {columns} columns"
    cells = []
    for i, source in enumerate(panels):
        r, c = divmod(i, columns)
        y, x = r * (height + label), c * width
        cell, bar = result[0, y:y + height, x:x + width], result[0, y + height:y + height + label, x:x + width]
        assert np.isfinite(cell).all() and cell.std() > 0.01, f"{name}: panel {i + 1} is constant"
        assert bar.max() > 0.5 and bar.std() > 0.02, f"{name}: panel {i + 1} has no caption"
        cells.append((graph[source[0]]["class_type"], cell))
    reference = cells[0][1]
    generated = [cell for cls, cell in cells if cls in MODEL_NODES]
    assert len(generated) >= 2, f"{name}: {len(generated)} generated panels"
    for i, cell in enumerate(generated):
        assert np.abs(cell - reference).mean() > 0.05, f"{name}: generated panel {i + 1} is the reference"
        for j, other in enumerate(generated[:i]):
            assert np.abs(cell - other).mean() > 0.005, f"{name}: generated panels {j + 1} and {i + 1} are equal"


def paste_back_original(graph: dict) -> str:
    """The media file that reaches the paste-back node's ``original`` (through frame extraction, if any), or the
    reference of a sampler that pastes back itself (HunyuanPortrait)."""
    paste = next((v for v in graph.values() if v["class_type"] == "PortraitAnim_FacePasteBack"), None)
    if paste is not None:
        node = graph[paste["inputs"]["original"][0]]
    else:
        cond = next(v for v in graph.values() if v["class_type"] == "PortraitAnim_HunyuanPortraitConditions")
        node = graph[cond["inputs"]["reference"][0]]
    while True:
        files = [v for k, v in node["inputs"].items() if k in ("image", "video", "file") and isinstance(v, str)]
        if files:
            return files[0]
        node = graph[next(v for v in node["inputs"].values() if isinstance(v, list))[0]]


def face_box(frame: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the largest face (MediaPipe landmarks' box)."""
    import torch

    from portrait_animation.face import FaceDetector

    det = FaceDetector(backend="bundled")
    try:
        track = det.track(torch.from_numpy(frame)[None])
    finally:
        det.close()
    x0, y0, x1, y1 = track.boxes[0]
    return int(x0), int(y0), int(x1), int(y1)


def change_inside_outside(result: np.ndarray, original: np.ndarray, box) -> tuple[float, float]:
    """Mean absolute change inside the face box, and in the least changed of the frame's four border bands (an
    eighth of the side wide): the face crop of these portraits does not reach all four sides, so one band at least
    must keep the original where only the paste-back examples' stand-in edit ran (up to video coding noise)."""
    diff = np.abs(result - original).mean(-1)
    x0, y0, x1, y1 = box
    inside = float(diff[y0:y1, x0:x1].mean())
    h, w = diff.shape
    bh, bw = max(1, h // 8), max(1, w // 8)
    bands = (diff[:bh], diff[-bh:], diff[:, :bw], diff[:, -bw:])
    return inside, float(min(b.mean() for b in bands))


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_converts_back_to_the_api_workflow(comfy_server, path):
    """The UI file (template) describes the same graph as the API file, widget by widget, for this server."""
    sys.path.insert(0, str(ROOT / "tools"))
    import workflow_ui

    info = comfy_server.get("/object_info")
    ui = json.loads((ROOT / "workflows" / path.name).read_text())
    api = json.loads(path.read_text())
    assert workflow_ui.same_graph(api, workflow_ui.ui_to_api(ui, info), info), path.name


def test_workflow_folder_has_ui_and_api_versions():
    ui = {p.stem for p in (ROOT / "workflows").glob("*.json")}
    api = {p.stem for p in API_WORKFLOWS}
    assert api, "no API-format workflows in workflows/api"
    assert ui == api, f"UI and API workflows differ: ui-only {sorted(ui - api)}, api-only {sorted(api - ui)}"
    for stem in ui:
        graph = json.loads((ROOT / "workflows" / f"{stem}.json").read_text())
        assert "nodes" in graph and "links" in graph, f"workflows/{stem}.json is not UI format"


def long_face_crop_job() -> tuple[dict, str]:
    """Landmarks on a video's frames repeated many times (several seconds of work)."""
    return {
        "1": {"class_type": "PortraitAnim_LoadVideoFrames",
              "inputs": {"video": "driving_video.mp4", "start_frame": 0, "frame_cap": 0, "select_every_nth": 1}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 20}},
        "3": face_crop(["2", 0]),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }, "3"


def model_job(workflow: str, sampler_class: str, **sampler_inputs) -> tuple[dict, str]:
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / f"{workflow}.json"))
    node = next(k for k, v in graph.items() if v["class_type"] == sampler_class)
    graph[node]["inputs"].update(sampler_inputs)
    return graph, node


JOBS = {
    "face_crop": long_face_crop_job,
    "memo_sampler": lambda: model_job("MEMO talking portrait", "PortraitAnim_MemoSampler", steps=6),
    "hellomeme_video": lambda: model_job("HelloMeme video", "PortraitAnim_HelloMemeVideo", steps=6),
    "hunyuan_portrait_sampler": lambda: model_job("HunyuanPortrait video", "PortraitAnim_HunyuanPortraitSampler",
                                                  steps=6),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_interrupt_stops_a_running_job_and_server_keeps_serving(comfy_server, job):
    prompt, node = JOBS[job]()
    ws = comfy_server.ws()
    try:
        status, body = comfy_server.queue(prompt)
        assert status == 200, body
        pid = body["prompt_id"]
        deadline = time.time() + 600
        interrupted = False
        msg = {}
        import websocket

        while time.time() < deadline:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:  # a quiet minute (model loading on a busy CPU) is not failure
                continue
            if not isinstance(raw, str):
                continue
            msg = json.loads(raw)
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, pid):
                continue
            if msg["type"] == "progress" and data.get("node") == node and not interrupted:
                comfy_server.request("POST", "/interrupt", {})
                interrupted = True
            if msg["type"] in ("execution_interrupted", "execution_success", "execution_error"):
                break
        assert interrupted, f"never saw progress from node {node}"
        assert msg["type"] == "execution_interrupted", msg
    finally:
        ws.close()
    # the server still serves: a small job succeeds afterwards
    quick = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert comfy_server.run(quick)["status"]["status_str"] == "success"


def test_templates_are_served_with_titles_and_thumbnails(comfy_server):
    """The template browser's sources: /api/workflow_templates lists the pack's examples under their titles (the
    file names), and each one's workflow and thumbnail come back from the URLs the frontends build."""
    import urllib.parse
    import urllib.request

    from .comfy import PACK_LINK_NAME

    listed = comfy_server.get("/api/workflow_templates")
    ui = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    assert sorted(listed.get(PACK_LINK_NAME, [])) == ui, listed
    for name in ui:
        base = f"{comfy_server.url}/api/workflow_templates/{PACK_LINK_NAME}/{urllib.parse.quote(name)}"
        with urllib.request.urlopen(base + ".json", timeout=30) as r:
            assert json.loads(r.read())["nodes"], name
        with urllib.request.urlopen(base + ".jpg", timeout=30) as r:
            data = r.read()
            assert r.status == 200 and data[:3] == b"\xff\xd8\xff" and len(data) > 10_000, name
