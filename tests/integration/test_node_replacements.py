"""The pack's renamed node ids through ComfyUI's node replacement API, on every install under test.

Where the server has the API (``app/node_replace_manager.py``, ComfyUI 0.33+), ``GET /node_replacements`` (what the
frontend reads when a workflow has missing nodes) must offer each old ``PortraitAnim<Name>`` id's current node, and a
workflow saved with the old ids must load (UI format: every link and widget maps by name onto the new node) and run
(API format, through tools/queue_batch.py). Where it does not (0.3.64), the pack must load as before and register
nothing.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "queue_batch.py"
WORKFLOWS = ROOT / "workflows"
RENAMED = ("FaceDetector", "DetectFaceLandmarks", "FaceCrop", "FacePasteBack", "LoadAudio", "PrepareAudio",
           "LoadVideoFrames", "VideoToFrames", "FramesToVideo")  # b07f5e9: PortraitAnim<Name> -> PortraitAnim_<Name>
OLD = {f"PortraitAnim_{name}": f"PortraitAnim{name}" for name in RENAMED}


def has_replacement_api(install: Path) -> bool:
    return (install / "app" / "node_replace_manager.py").is_file()


def node_inputs(info: dict) -> set[str]:
    groups = info["input"]
    return {name for group in ("required", "optional") for name in groups.get(group, {})}


def test_renames_are_registered_where_the_api_exists(comfy_server, comfy_install):
    object_info = comfy_server.get("/object_info")
    assert set(OLD) <= set(object_info), "the pack's nodes did not load"
    status, table = comfy_server.request("GET", "/node_replacements")
    log = comfy_server.log_text()
    assert "could not register node replacement" not in log
    if not has_replacement_api(comfy_install):
        assert status == 404, f"ComfyUI without node_replace_manager answered /node_replacements: {status} {table}"
        return
    assert status == 200, table
    for new, old in OLD.items():
        assert old not in object_info
        (entry,) = table[old]  # offered exactly once, to this pack's current node
        assert entry["old_node_id"] == old and entry["new_node_id"] == new, entry
        assert entry["input_mapping"] is None and entry["output_mapping"] is None, \
            f"{old} is a pure rename: the frontend maps links and widgets by name only without a mapping"


def test_ui_workflow_with_old_ids_is_offered_the_fix(comfy_server, comfy_install):
    """What the frontend does on load: every node type it does not know and that has a replacement is offered the
    swap; without a mapping it carries each old input link and widget value over by name, so the new node must have
    every input the old one is saved with (and the same outputs)."""
    if not has_replacement_api(comfy_install):
        return  # nothing to offer on this version; the other test checks that the pack loads
    object_info = comfy_server.get("/object_info")
    table = comfy_server.get("/node_replacements")
    seen = set()
    for path in sorted(WORKFLOWS.glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] not in OLD:
                continue
            old = OLD[node["type"]]  # as saved before the rename
            seen.add(old)
            assert old not in object_info, f"{path.name}: {old} would not even be missing"
            new = table[old][0]["new_node_id"]
            info = object_info[new]
            saved_inputs = {i["name"] for i in node.get("inputs", [])}
            assert saved_inputs <= node_inputs(info), f"{path.name}: {old} inputs {saved_inputs} vs {new}"
            saved_outputs = [o["name"] for o in node.get("outputs", [])]
            assert saved_outputs == list(info["output_name"])[: len(saved_outputs)], f"{path.name}: {old} outputs"
    assert seen == set(OLD.values()), f"renamed nodes no example workflow uses: {set(OLD.values()) - seen}"


def test_api_workflow_with_old_ids_runs(comfy_server, comfy_install, data_dir, tmp_path):
    graph = json.loads((WORKFLOWS / "api" / "Face crop and paste back.json").read_text())
    for node in graph.values():
        if isinstance(node, dict):
            node["class_type"] = OLD.get(node["class_type"], node["class_type"])
    assert {"PortraitAnimFaceCrop", "PortraitAnimFacePasteBack"} <= {n["class_type"] for n in graph.values()}
    workflow = tmp_path / "old_ids_api.json"
    workflow.write_text(json.dumps(graph))
    summary = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(TOOL), str(workflow), "--server", comfy_server.url, "--media",
                           "Portrait.image", str(data_dir / "harris.jpg"), "--out", str(tmp_path / "out"),
                           "--summary", str(summary), "--timeout", "600"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    detail = f"\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}\n--- server\n" \
             f"{comfy_server.log_tail()}"
    (job,) = json.loads(summary.read_text())["jobs"]
    if has_replacement_api(comfy_install):
        assert proc.returncode == 0 and job["status"] == "success" and job["outputs"], detail
        assert "'PortraitAnimFaceCrop', an old id" in proc.stderr, detail
    else:  # no replacements: the old ids are unknown node types, and the tool says which
        assert proc.returncode == 1 and job["status"] == "failed", detail
        assert "PortraitAnimFace" in job["error"], detail
