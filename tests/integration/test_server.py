"""The pack inside a real ComfyUI: registration, schemas, errors, workflows, cancellation. Every example workflow
runs from the UI in ``test_browser`` (its prompt equals the API file, checked there) with the result checks of
``example_checks``."""
from __future__ import annotations

import json
import sys
import time

import pytest

from .comfy import ROOT, fast, load_api_workflow, status_messages

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
