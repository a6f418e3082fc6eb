"""Workflows saved with the other packs' node ids (tests/peers/*.json, built from their recorded signatures), on every
install under test.

Where the server has the node replacement API (ComfyUI 0.33+), ``GET /node_replacements`` must offer each mapped peer
id (nodes/replacements.py) with its mapping and none of the ids listed as not mapping; the peer workflows are then
converted as the frontend's "Replace" does (``helpers/node_replace.py``, after frontend 1.49.6) and built into the
prompt the frontend would queue (``tools/workflow_ui.py``):

* BobRandomNumber's HunyuanPortrait graph converts whole (loader, preprocessor, generator) and runs;
* the official HelloMeme graphs keep only nodes listed as not mapping (face analysis, pipelines); their
  loaders come over with the settings carried, and run in the pack's HelloMeme example in place of its loaders;
* IF_MemoAvatar's graph stays as it is (nothing maps).

The conversion helper is checked against the installed frontend's own ``replaceWithMapping`` (run with Node.js where
it is installed; skipped otherwise).

Where the API is missing (0.3.64), nothing is offered and the pack loads as before.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files

sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import workflow_ui  # noqa: E402
from helpers.comfy_stub import load_file_module  # noqa: E402
from helpers.node_replace import new_node, replace_missing  # noqa: E402

PEERS = ROOT / "tests" / "peers"
SIGNATURES = json.loads((PEERS / "signatures.json").read_text())["nodes"]


TABLE = load_file_module(ROOT / "nodes" / "replacements.py", "_pa_replacements_it")
PEER_ROWS = {r.old_id: r for r in TABLE.REPLACEMENTS if r.source != "this pack"}


def has_replacement_api(install: Path) -> bool:
    return (install / "app" / "node_replace_manager.py").is_file()


def converted(comfy_server, name: str) -> tuple[dict, list[str], dict]:
    """(the API prompt the frontend builds after "Replace all", the types replaced, the UI graph after it)."""
    info = comfy_server.get("/object_info")
    ui, replaced = replace_missing(json.loads((PEERS / name).read_text()), comfy_server.get("/node_replacements"),
                                   info)
    return workflow_ui.ui_to_api(ui, info), replaced, ui


def check_outputs(comfy_server, entry: dict) -> None:
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    files = output_files(entry)
    assert files, "no output files"
    for _, f in files:
        frames = decode_media(fetch_view(comfy_server, f), f["filename"])
        assert np.isfinite(frames).all() and frames.std() > 0.01, f"{f} is constant or not finite"


def test_peer_ids_are_offered_where_the_api_exists(comfy_server, comfy_install):
    object_info = comfy_server.get("/object_info")
    status, table = comfy_server.request("GET", "/node_replacements")
    assert "could not register node replacement" not in comfy_server.log_text()
    assert not set(SIGNATURES) & set(object_info), "a peer pack is installed in the test server"
    if not has_replacement_api(comfy_install):
        assert status == 404, f"ComfyUI without node_replace_manager answered /node_replacements: {status}"
        return
    assert status == 200, table
    for old_id, row in PEER_ROWS.items():
        (entry,) = table[old_id]
        assert entry == row.as_kwargs(), entry
        assert entry["new_node_id"] in object_info
    assert not set(TABLE.NOT_MAPPED) & set(table), "a peer node listed as not mapping is offered a replacement"


def test_hunyuan_portrait_workflow_converts_whole_and_runs(comfy_server, comfy_install):
    if not has_replacement_api(comfy_install):
        return  # nothing is offered there (the test above)
    api, replaced, _ = converted(comfy_server, "HunyuanPortrait (BobRandomNumber).json")
    assert sorted(replaced) == sorted(k for k, r in PEER_ROWS.items() if r.source == TABLE.BOB_HUNYUAN)
    assert {n["class_type"] for n in api.values()} == {
        "PortraitAnim_HunyuanPortraitLoader", "PortraitAnim_HunyuanPortraitConditions",
        "PortraitAnim_HunyuanPortraitSampler", "LoadImage", "PortraitAnim_LoadVideoFrames", "SaveImage"}
    loader, cond, sampler = api["1"]["inputs"], api["2"]["inputs"], api["3"]["inputs"]
    # the saved values, carried (tests/peers: precision fp32; crop 64, fps 25; the generator's CPU-test settings)
    assert loader == {"dtype": "fp32", "arcface": True, "download": False}
    assert cond["hunyuan_portrait"] == ["1", 0] and cond["reference"] == ["4", 0] and cond["driving"] == ["5", 0]
    assert (cond["size"], cond["fps"], cond["intensity_chunk"], cond["on_missing"]) == (64, 25, 25, "error")
    assert sampler["hunyuan_portrait"] == ["1", 0] and sampler["conditions"] == ["2", 0]
    assert {k: sampler[k] for k in ("seed", "steps", "appearance_guidance", "motion_guidance", "window", "overlap",
                                     "shift", "pad_frames", "fps_id", "motion_bucket", "noise_aug", "decode_chunk")} \
        == {"seed": 42, "steps": 1, "appearance_guidance": 2.5, "motion_guidance": 3, "window": 8, "overlap": 1,
            "shift": 2, "pad_frames": 2, "fps_id": 25, "motion_bucket": 127, "noise_aug": 0.02, "decode_chunk": 4}
    assert api["6"]["inputs"]["images"] == ["3", 0]  # the generator's IMAGE is the sampler's frames
    entry = comfy_server.run(api, timeout=900)
    check_outputs(comfy_server, entry)


def test_hellomeme_workflows_keep_only_the_nodes_that_do_not_map(comfy_server, comfy_install):
    if not has_replacement_api(comfy_install):
        return
    object_info = comfy_server.get("/object_info")
    for name, loader_type, expected in (
            ("HelloMeme video (official).json", "HMVideoPipelineLoader",
             {"version": "v5", "mode": "video", "stylize": "x1", "lora_scale": 0.8, "dtype": "fp32"}),
            ("HelloMeme image (official).json", "HMImagePipelineLoader",
             {"version": "v5c", "mode": "image", "stylize": "x2", "lora_scale": 1.0, "dtype": "fp16"})):
        api, replaced, ui = converted(comfy_server, name)
        assert sorted(replaced) == sorted([loader_type, "HMFaceToolkitsLoader"]), (name, replaced)
        left = {n["type"] for n in ui["nodes"] if n["type"] not in object_info}
        assert left and left <= set(TABLE.NOT_MAPPED), (name, left)
        (loader,) = [n["inputs"] for n in api.values() if n["class_type"] == "PortraitAnim_HelloMemeLoader"]
        assert {k: loader[k] for k in expected} == expected, (name, loader)
        # not carried (the official names are not the pack's): the pack's own defaults
        assert (loader["checkpoint"], loader["lora"], loader["download"]) == ("official SD1.5", "none", True)
        (toolkit,) = [n["inputs"] for n in api.values() if n["class_type"] == "PortraitAnim_HelloMemeToolkit"]
        assert toolkit == {"head_pose": "3dmm", "expression": "pdfgc", "download": True}


def test_converted_hellomeme_loaders_run_in_the_packs_graph(comfy_server, comfy_install):
    """The user's next step: the pack's HelloMeme video graph with the converted loader and toolkit in place of its
    own (the tests' CPU settings on top, as for every example)."""
    if not has_replacement_api(comfy_install):
        return
    api, _, _ = converted(comfy_server, "HelloMeme video (official).json")
    (loader,) = [n for n in api.values() if n["class_type"] == "PortraitAnim_HelloMemeLoader"]
    (toolkit,) = [n for n in api.values() if n["class_type"] == "PortraitAnim_HelloMemeToolkit"]
    graph = load_api_workflow(ROOT / "workflows" / "api" / "HelloMeme video.json")
    ids = {n["class_type"]: k for k, n in graph.items()}
    graph[ids["PortraitAnim_HelloMemeLoader"]]["inputs"] = dict(loader["inputs"])
    graph[ids["PortraitAnim_HelloMemeToolkit"]]["inputs"] = dict(toolkit["inputs"])
    graph = fast(graph)
    graph[ids["PortraitAnim_LoadVideoFrames"]]["inputs"]["frame_cap"] = 4
    assert graph[ids["PortraitAnim_HelloMemeLoader"]]["inputs"]["lora_scale"] == 0.8  # carried, not the example's
    entry = comfy_server.run(graph, timeout=900)
    check_outputs(comfy_server, entry)


def test_if_memo_avatar_workflow_is_left_as_it_is(comfy_server, comfy_install):
    if not has_replacement_api(comfy_install):
        return
    original = json.loads((PEERS / "MEMO (IF_MemoAvatar).json").read_text())
    _, replaced, ui = converted(comfy_server, "MEMO (IF_MemoAvatar).json")
    assert replaced == [] and ui["nodes"] == original["nodes"]


def _frontend_bundle(comfy_install: Path) -> Path | None:
    """The installed frontend's script that holds its node replacement code, if any."""
    from .comfy import comfy_python

    proc = subprocess.run([comfy_python(comfy_install), "-c", "import comfyui_frontend_package as f, os; "
                           "print(os.path.dirname(f.__file__))"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return None
    for path in sorted((Path(proc.stdout.strip()) / "static" / "assets").glob("*.js")):
        text = path.read_text(errors="replace")
        if "function replaceWithMapping(" in text and "function transferInputConnection(" in text:
            return path
    return None


def test_conversion_is_the_frontends_own(comfy_server, comfy_install, tmp_path):
    """helpers/node_replace.py gives what the installed frontend's replaceWithMapping does (run with Node.js) on
    every peer fixture: the same widget values, input and output links, and link table."""

    if not has_replacement_api(comfy_install):
        return
    node_js = shutil.which("node")
    bundle = _frontend_bundle(comfy_install)
    if node_js is None or bundle is None:
        pytest.skip("needs Node.js and a frontend with replaceWithMapping (1.49+) to compare against")
    info, table = comfy_server.get("/object_info"), comfy_server.get("/node_replacements")
    for path in sorted(PEERS.glob("* (*).json")):
        ui = json.loads(path.read_text())
        jobs = [{"old": n, "new": new_node(n["id"], table[n["type"]][0]["new_node_id"],
                                           info[table[n["type"]][0]["new_node_id"]]), "row": table[n["type"]][0]}
                for n in ui["nodes"] if n["type"] not in info and n["type"] in table]
        request = tmp_path / f"{path.stem}.json"
        request.write_text(json.dumps({"nodes": [{"id": n["id"]} for n in ui["nodes"]], "links": ui["links"],
                                       "jobs": jobs}))
        proc = subprocess.run([node_js, str(ROOT / "tests" / "helpers" / "frontend_replace.js"), str(bundle),
                               str(request)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        theirs = json.loads(proc.stdout)
        ours, _ = replace_missing(ui, table, info)
        by_id = {n["id"]: n for n in ours["nodes"]}
        for job, got in zip(jobs, theirs["jobs"]):
            mine = by_id[job["old"]["id"]]
            where = f"{path.name}: {job['old']['type']}"
            assert got["widgets"] == [list(w) for w in zip(mine["widget_names"], mine["widgets_values"])], where
            assert got["inputs"] == [[i["name"], i["link"]] for i in mine["inputs"]], where
            assert got["outputs"] == [[o["name"], o["links"]] for o in mine["outputs"]], where
        assert sorted(theirs["links"]) == sorted(link[:5] for link in ours["links"]), path.name
        assert len(jobs) == sum(1 for n in ui["nodes"] if n["type"] in PEER_ROWS), path.name
