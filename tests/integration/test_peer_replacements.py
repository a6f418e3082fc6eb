"""Workflows saved with the other packs' node ids (tests/peers/*.json, built from their recorded signatures), on every
install under test.

Server side: where the server has the node replacement API (ComfyUI 0.33+), ``GET /node_replacements`` must offer each
mapped peer id (nodes/replacements.py) with its mapping and none of the ids listed as not mapping; where it does not
(0.3.64), nothing is offered and the pack loads as before.

In the real frontend (headless Chromium, as tests/integration/test_browser.py; frontend 1.49.x on ComfyUI 0.33.0): each
peer workflow is opened as a file, the error panel must offer "Replace Node" for exactly the mapped peer nodes, and the
real "Replace All" button must leave this pack's nodes with the saved values and links carried:

* BobRandomNumber's HunyuanPortrait graph converts whole (loader, preprocessor, generator) and runs when queued with
  the Run button (stand-in models);
* the official HelloMeme graphs keep only nodes listed as not mapping (face analysis, pipelines); their loaders come
  over with the settings carried, and the converted loader and toolkit run in the pack's HelloMeme video example;
* IF_MemoAvatar's graph is offered nothing (nothing maps).

On frontend 1.27 (ComfyUI 0.3.64, no replacement API) the peer nodes show as missing and the pack logs no console
error. API-format peer workflows run through tools/queue_batch.py, which applies the server's table itself.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files
from .test_browser import PACK_MARKERS, Frontend, browser, history_ids, wait_new_prompt  # noqa: F401 (fixture)

sys.path.insert(0, str(ROOT / "tests"))
from helpers.comfy_stub import load_file_module  # noqa: E402

PEERS = ROOT / "tests" / "peers"
SIGNATURES = json.loads((PEERS / "signatures.json").read_text())["nodes"]
TOOL = ROOT / "tools" / "queue_batch.py"
HUNYUAN = PEERS / "HunyuanPortrait (BobRandomNumber).json"

TABLE = load_file_module(ROOT / "nodes" / "replacements.py", "_pa_replacements_it")
PEER_ROWS = {r.old_id: r for r in TABLE.REPLACEMENTS if r.source != "this pack"}
FIXTURES = sorted(PEERS.glob("* (*).json"))


def pack_console_errors(frontend: Frontend) -> list[str]:
    """Console errors that name the pack, less the frontend's own look-ups of a workflow's node ids in the Comfy
    registry (api.comfy.org/comfy-nodes/<id>/node, made for workflows with missing nodes; blocked offline)."""
    return [m for m in frontend.console if any(k in m.lower() for k in PACK_MARKERS) and "api.comfy.org" not in m]


def has_replacement_api(install: Path) -> bool:
    return (install / "app" / "node_replace_manager.py").is_file()


def check_outputs(comfy_server, entry: dict, frames: int | None = None) -> None:
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    files = output_files(entry)
    assert files, "no output files"
    if frames is not None:
        assert len(files) == frames, f"{len(files)} images saved, expected one per driving frame ({frames})"
    for _, f in files:
        pixels = decode_media(fetch_view(comfy_server, f), f["filename"])
        assert np.isfinite(pixels).all() and pixels.std() > 0.01, f"{f} is constant or not finite"


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


# ---- in the real frontend -----------------------------------------------------------------------------------------
GRAPH_JS = """() => ({
    nodes: window.app.graph._nodes.map(n => ({
        id: String(n.id), type: n.type, known: !!window.LiteGraph.registered_node_types[n.type],
        has_errors: !!n.has_errors, widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value])),
        inputs: (n.inputs || []).map(i => [i.name, i.link]),
        outputs: (n.outputs || []).map(o => [o.name, o.links || []]),
    })),
    links: window.app.graph._nodes.flatMap(n => (n.inputs || []).map((i, slot) => [i.link, n.id, slot]))
        .filter(([id]) => id != null).map(([id, target, slot]) => {
            const links = window.app.graph.links;
            const l = links instanceof Map ? links.get(id) : links[id];
            return [String(l.origin_id), l.origin_slot, String(target), slot];
        }),
})"""


@pytest.fixture
def page(browser, comfy_server):  # noqa: F811 (browser: test_browser's fixture)
    """A fresh page per workflow: the error panel starts closed."""
    p = browser.new_page(viewport={"width": 1920, "height": 1080})
    yield Frontend(p, comfy_server).open()
    p.close()


def open_file(frontend: Frontend, path: Path) -> None:
    """As the user does: Workflow > Open (the page's file input) with the saved workflow."""
    frontend.page.locator("#comfy-file-input").set_input_files(str(path))
    frontend.page.wait_for_function("(n) => window.app.graph._nodes.length === n",
                                    arg=len(json.loads(path.read_text())["nodes"]), timeout=30_000)
    frontend.page.wait_for_timeout(1500)


def body_text(frontend: Frontend) -> str:
    return frontend.page.evaluate("() => document.body.innerText")


def offered_in_error_panel(frontend: Frontend) -> dict[str, str]:
    """Opens the error panel from the load notice ("View details") and reads its "Swap Nodes" group: old node type ->
    "This node will be replaced by: <new>"."""
    frontend.page.get_by_text("View details").first.click(timeout=30_000)
    frontend.page.wait_for_function("() => /errors? detected/i.test(document.body.innerText)", timeout=30_000)
    frontend.page.wait_for_timeout(500)
    return dict(re.findall(r"(\S+)\s*\n\s*This node will be replaced by: (\S+)", body_text(frontend)))


def replace_all(frontend: Frontend, count: int) -> None:
    frontend.page.get_by_role("button", name="Replace All").click()
    frontend.page.wait_for_function("(t) => document.body.innerText.includes(t)",
                                    arg=f"Replaced {count} node type(s)", timeout=30_000)
    frontend.page.wait_for_timeout(500)


def expected_offers(path: Path) -> dict[str, str]:
    types = {n["type"] for n in json.loads(path.read_text())["nodes"]}
    return {old: row.new_id for old, row in PEER_ROWS.items() if old in types}


def check_loaded_and_offered(frontend: Frontend, comfy_install, path: Path, shot: Path) -> dict[str, str]:
    """Open ``path``; on a frontend without the API only check that its peer nodes show as missing."""
    frontend.console.clear()
    open_file(frontend, path)
    frontend.page.screenshot(path=str(shot))
    saved = json.loads(path.read_text())
    peers = {n["type"] for n in saved["nodes"] if n["type"] in SIGNATURES}
    missing = {n["type"] for n in frontend.nodes() if not n["known"]}
    assert missing == peers, f"{path.name}: missing {missing}, the peer nodes are {peers} (screenshot {shot})"
    assert not pack_console_errors(frontend), f"{path.name}: {pack_console_errors(frontend)}"
    if not has_replacement_api(comfy_install):  # frontend 1.27: the missing-nodes dialog lists them, nothing more
        shown = "\n".join(frontend.visible_problems())
        assert all(t in shown for t in peers), f"{path.name}: the missing-nodes dialog shows {shown[:1500]!r}"
        assert "replace" not in shown.lower(), shown[:1500]
        return {}
    offered = offered_in_error_panel(frontend)
    assert offered == expected_offers(path), f"{path.name}: the error panel offers {offered} (screenshot {shot})"
    return offered


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_peer_workflow_opens_with_the_fix_offered(page, comfy_server, comfy_install, path, tmp_path):
    """Every peer workflow opens with its peer nodes missing; on 1.49 the error panel offers exactly the mapped ones
    (none for IF_MemoAvatar, whose panel has no Replace All), on 1.27 nothing is offered and nothing breaks."""
    offered = check_loaded_and_offered(page, comfy_install, path, tmp_path / f"{path.stem}.png")
    if offered == {} and has_replacement_api(comfy_install):
        assert not page.page.get_by_role("button", name="Replace All").is_visible()
        assert "if-ai/ComfyUI-IF_MemoAvatar" in body_text(page)  # listed as a missing pack instead


def test_hunyuan_portrait_workflow_replaced_in_the_editor_runs(page, comfy_server, comfy_install, tmp_path):
    if not has_replacement_api(comfy_install):
        pytest.skip("ComfyUI 0.3.64 (frontend 1.27) has no node replacement: the opening test covers it")
    offered = check_loaded_and_offered(page, comfy_install, HUNYUAN, tmp_path / "loaded.png")
    replace_all(page, len(offered))
    page.page.screenshot(path=str(tmp_path / "replaced.png"))
    graph = page.page.evaluate(GRAPH_JS)
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert {n["type"] for n in nodes.values()} == {
        "PortraitAnim_HunyuanPortraitLoader", "PortraitAnim_HunyuanPortraitConditions",
        "PortraitAnim_HunyuanPortraitSampler", "LoadImage", "PortraitAnim_LoadVideoFrames", "SaveImage"}
    assert all(n["known"] and not n["has_errors"] for n in nodes.values())
    text = body_text(page)
    assert not re.search(r"errors? detected|Swap Nodes", text), text[:2000]  # the missing-node state is gone
    assert not page.page.get_by_role("button", name="Replace All").is_visible()
    # the saved values, carried (tests/peers: precision fp32; crop 64, fps 25; the generator's CPU-test settings)
    loader, cond, sampler = nodes["1"]["widgets"], nodes["2"]["widgets"], nodes["3"]["widgets"]
    assert loader == {"dtype": "fp32", "arcface": True, "download": False}
    assert {k: cond[k] for k in ("size", "fps", "intensity_chunk", "on_missing")} == \
        {"size": 64, "fps": 25, "intensity_chunk": 25, "on_missing": "error"}
    assert {k: sampler[k] for k in ("seed", "steps", "appearance_guidance", "motion_guidance", "window", "overlap",
                                     "shift", "pad_frames", "fps_id", "motion_bucket", "noise_aug", "decode_chunk")} \
        == {"seed": 42, "steps": 1, "appearance_guidance": 2.5, "motion_guidance": 3, "window": 8, "overlap": 1,
            "shift": 2, "pad_frames": 2, "fps_id": 25, "motion_bucket": 127, "noise_aug": 0.02, "decode_chunk": 4}
    # the links the inputs hold: every saved one but the generator's driving_data (the conditions carry the frames)
    slot = {nid: {name: k for k, (name, _) in enumerate(n["inputs"])} for nid, n in nodes.items()}
    assert sorted(map(tuple, graph["links"])) == sorted([
        ("1", 0, "2", slot["2"]["hunyuan_portrait"]), ("4", 0, "2", slot["2"]["reference"]),
        ("5", 0, "2", slot["2"]["driving"]), ("1", 0, "3", slot["3"]["hunyuan_portrait"]),
        ("2", 0, "3", slot["3"]["conditions"]), ("3", 0, "6", slot["6"]["images"])])
    # saved and opened again (what the user keeps): the same nodes, values and links
    saved = page.page.evaluate("() => window.app.graph.serialize()")
    assert {n["type"] for n in saved["nodes"]} == {n["type"] for n in nodes.values()}
    page.load(saved)
    again = page.page.evaluate(GRAPH_JS)
    assert sorted(map(tuple, again["links"])) == sorted(map(tuple, graph["links"]))
    assert {n["id"]: n["widgets"] for n in again["nodes"]} == {k: n["widgets"] for k, n in nodes.items()}
    assert all(n["known"] and not n["has_errors"] for n in again["nodes"])
    # queued with the Run button; the stand-in models
    before = history_ids(comfy_server)
    page.page.locator("[data-testid=queue-button]").click()
    entry = wait_new_prompt(comfy_server, before, rejected=page.node_errors, timeout=900)
    check_outputs(comfy_server, entry, frames=8)  # the fixture's driving video is capped at 8 frames
    assert not pack_console_errors(page), pack_console_errors(page)


def test_hellomeme_loaders_replaced_in_the_editor_run_in_the_packs_graph(
        browser, comfy_server, comfy_install, tmp_path):  # noqa: F811 (browser: test_browser's fixture)
    """Official HelloMeme graphs: the loaders come over with their settings, the face-analysis and pipeline nodes stay
    missing (not mapped). The user's next step, wiring the converted loader and toolkit as in the pack's HelloMeme
    video example, runs (the tests' CPU settings on top, as for every example)."""
    if not has_replacement_api(comfy_install):
        pytest.skip("ComfyUI 0.3.64 (frontend 1.27) has no node replacement: the opening test covers it")
    converted = {}
    for name, expected in (
            ("HelloMeme video (official).json",
             {"version": "v5", "mode": "video", "stylize": "x1", "lora_scale": 0.8, "dtype": "fp32"}),
            ("HelloMeme image (official).json",
             {"version": "v5c", "mode": "image", "stylize": "x2", "lora_scale": 1.0, "dtype": "fp16"})):
        page = Frontend(browser.new_page(viewport={"width": 1920, "height": 1080}), comfy_server).open()
        try:
            offered = check_loaded_and_offered(page, comfy_install, PEERS / name, tmp_path / f"{name}.png")
            replace_all(page, len(offered))
            nodes = page.page.evaluate(GRAPH_JS)["nodes"]
            left = {n["type"] for n in nodes if not n["known"]}
            assert left and left <= set(TABLE.NOT_MAPPED), (name, left)
            assert "Swap Nodes" not in body_text(page)  # only the not-mapped nodes remain, as a missing pack
            (loader,) = [n for n in nodes if n["type"] == "PortraitAnim_HelloMemeLoader"]
            (toolkit,) = [n for n in nodes if n["type"] == "PortraitAnim_HelloMemeToolkit"]
            assert {k: loader["widgets"][k] for k in expected} == expected, (name, loader)
            # not carried (the official names are not the pack's): the pack's own defaults
            assert (loader["widgets"]["checkpoint"], loader["widgets"]["lora"], loader["widgets"]["download"]) == \
                ("official SD1.5", "none", True)
            assert toolkit["widgets"] == {"head_pose": "3dmm", "expression": "pdfgc", "download": True}
            # the loader's and toolkit's output links to the (missing) face and pipeline nodes are carried
            saved = {str(n["id"]): n for n in json.loads((PEERS / name).read_text())["nodes"]}
            for node in (loader, toolkit):
                assert len(node["outputs"][0][1]) == len(saved[node["id"]]["outputs"][0]["links"]) > 0, (name, node)
            converted[name] = (loader["widgets"], toolkit["widgets"])
        finally:
            page.page.close()

    loader, toolkit = converted["HelloMeme video (official).json"]
    graph = load_api_workflow(ROOT / "workflows" / "api" / "HelloMeme video.json")
    ids = {n["class_type"]: k for k, n in graph.items()}
    graph[ids["PortraitAnim_HelloMemeLoader"]]["inputs"] = dict(loader)
    graph[ids["PortraitAnim_HelloMemeToolkit"]]["inputs"] = dict(toolkit)
    graph = fast(graph)
    graph[ids["PortraitAnim_LoadVideoFrames"]]["inputs"]["frame_cap"] = 4
    assert graph[ids["PortraitAnim_HelloMemeLoader"]]["inputs"]["lora_scale"] == 0.8  # carried, not the example's
    check_outputs(comfy_server, comfy_server.run(graph, timeout=900))


# ---- API format: tools/queue_batch.py -----------------------------------------------------------------------------
def test_api_peer_workflow_runs_through_queue_batch(comfy_server, comfy_install, tmp_path):
    """``queue_batch.py peer_api.json``: the tool rewrites the peer nodes with the server's table and fills the new
    nodes' defaults (the server's own rewrite keeps only mapped inputs and fails "required input missing"). A job
    value may name the peer node's input (num_inference_steps -> steps)."""
    summary = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(TOOL), str(PEERS / "api" / HUNYUAN.name), "--server", comfy_server.url,
                           "--set", "3.num_inference_steps=1", "--out", str(tmp_path / "out"), "--summary",
                           str(summary), "--timeout", "900"],
                          capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    detail = f"\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}\n--- server\n" \
             f"{comfy_server.log_tail()}"
    (job,) = json.loads(summary.read_text())["jobs"]
    if not has_replacement_api(comfy_install):  # no table: the peer ids are unknown node types, and the tool says so
        assert proc.returncode == 1 and job["status"] == "failed", detail
        assert "HunyuanPortrait_" in job["error"], detail
        return
    assert proc.returncode == 0 and job["status"] == "success", detail
    assert len(job["outputs"]) == 8, detail
    for old in ("HunyuanPortrait_ModelLoader", "HunyuanPortrait_Preprocessor", "HunyuanPortrait_Generator"):
        assert f"{old!r}, an old id" in proc.stderr, detail
    prompt = comfy_server.get(f"/history/{job['prompt_id']}")[job["prompt_id"]]["prompt"][2]
    assert prompt["1"] == {"class_type": "PortraitAnim_HunyuanPortraitLoader", "_meta": prompt["1"]["_meta"],
                           "inputs": {"dtype": "fp32", "download": False, "arcface": True}}
    assert prompt["2"]["inputs"]["size"] == 64 and prompt["2"]["inputs"]["driving"] == ["5", 0]
    assert prompt["3"]["inputs"]["steps"] == 1 and prompt["3"]["inputs"]["conditions"] == ["2", 0]
    assert "driving_data" not in prompt["3"]["inputs"]
