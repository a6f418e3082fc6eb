"""Lay out the example workflows by stage and save a thumbnail of each, as the real frontend draws it.

Why a browser: a node's size in the JSON is only a starting point; the frontend grows it to fit its widgets, so a
layout computed from the JSON alone overlaps (the Soundtrack node under a video preview, a loader's values under a
prompt). This script asks the frontend for each node's minimum size (``node.computeSize()``), stacks the nodes of
each stage (Inputs, Face, Model, Sampling, Output) in one column under a titled group, puts a Note on top, writes the
UI JSON back (node ids, links and widget values unchanged) and saves ``workflows/<name>.jpg``, the template
browser's thumbnail (it asks ``/api/workflow_templates/<pack>/<name>.jpg``) and the README's picture.

    python tools/workflow_screenshots.py --comfy ~/.cache/portrait-animation/comfyui/ComfyUI-0.33.0 [--layout]

Needs Playwright's Python client and a system Chromium (``/usr/bin/chromium``; never ``playwright install``).
Without ``--layout`` only the screenshots are taken.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

NODE_TITLE_H = 30      # LiteGraph.NODE_TITLE_HEIGHT: the title bar is drawn above node.pos
GROUP_TITLE_H = 50     # room for a group's title (font 24) above its first node's title bar
GAP = 40               # between nodes in a column and between groups
NOTE_W, NOTE_H = 760, 170
MEDIA_MIN_H = 330      # image/video widgets draw their preview inside the node, below the widgets
VIDEO_MIN_W = 640      # a video preview (with its controls) needs the width; 1.27.10 sizes it from the node width
VIDEO_TYPES = {"LoadVideo", "PortraitAnim_LoadVideoFrames"}
MAX_JPG_BYTES = 150_000
VIEW = (1920, 1200)    # browser viewport; the JPG is scaled down to at most 1280 x 800

STAGES = ("Inputs", "Face", "Model", "Sampling", "Output", "Metrics")
STAGE_COLORS = {"Inputs": "#3f789e", "Face": "#8A8", "Model": "#a1309b", "Sampling": "#b58b2a", "Output": "#88A",
                "Metrics": "#3f8f8f"}
STAGE_BY_TYPE = {
    "LoadImage": "Inputs", "LoadVideo": "Inputs", "PortraitAnim_LoadAudio": "Inputs",
    "PortraitAnim_LoadVideoFrames": "Inputs", "PortraitAnim_VideoToFrames": "Inputs",
    "PortraitAnim_PrepareAudio": "Inputs",
    "PortraitAnim_FaceDetector": "Face", "PortraitAnim_DetectFaceLandmarks": "Face", "PortraitAnim_FaceCrop": "Face",
    "PortraitAnim_HelloMemeToolkit": "Face", "PortraitAnim_HelloMemeConditions": "Face",
    "PortraitAnim_HunyuanPortraitConditions": "Face", "PortraitAnim_HunyuanPortraitLoader": "Model",
    "PortraitAnim_HunyuanPortraitSampler": "Sampling", "PortraitAnim_Preflight": "Sampling",
    "PortraitAnim_HelloMemeLoader": "Model", "CLIPLoader": "Model", "PortraitAnim_MemoLoader": "Model",
    "PortraitAnim_ModelFiles": "Model", "PortraitAnim_SpeedOptions": "Model", "PortraitAnim_IdentityGuard": "Model", "PortraitAnim_ResumeOptions": "Model",
    "CLIPTextEncode": "Sampling", "PortraitAnim_HelloMemeImage": "Sampling", "PortraitAnim_HelloMemeVideo": "Sampling",
    "PortraitAnim_MemoAudio": "Sampling", "PortraitAnim_MemoSampler": "Sampling", "ImageSharpen": "Sampling",
    "PortraitAnim_FacePasteBack": "Output", "PortraitAnim_FramesToVideo": "Output", "SaveImage": "Output",
    "SaveVideo": "Output", "PortraitAnim_LabelledImageGrid": "Output",
    "ImageFromBatch": "Inputs", "PortraitAnim_IdentityMetric": "Metrics", "PortraitAnim_PoseMetric": "Metrics",
    "PortraitAnim_ExpressionMetric": "Metrics", "PortraitAnim_MouthMetric": "Metrics",
    "PortraitAnim_FlickerMetric": "Metrics", "PortraitAnim_SeamMetric": "Metrics",
}
MEDIA_TYPES = {"LoadImage", "LoadVideo", "PreviewImage", "SaveImage", "SaveVideo", "PortraitAnim_LoadVideoFrames"}

CLIP_L_URL = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"
CLIP_L_WHERE = ("clip_l.safetensors (OpenAI CLIP ViT-L/14 text encoder, the one SD1.5 uses, 246 MB): "
                "huggingface.co/comfyanonymous/flux_text_encoders -> models/text_encoders/ (the Load CLIP node "
                "offers the download when it is missing).")
NOTES = {
    "Face crop and paste back": (
        "What to change: pick your portrait in Portrait. Face Crop's size/scale/offset_y frame the face; "
        "the ImageSharpen node stands in for a face model: replace it with an animation node. Face Paste Back's "
        "feather and mask_shape control the seam. No model download beyond MediaPipe's face model "
        "(Face Detector fetches it when needed)."),
    "Face crop and paste back (video)": (
        "What to change: pick your video in Load Video and an audio file in Soundtrack (it is fitted to the "
        "video's length). Face Crop's stability=smooth keeps the box steady; replace the ImageSharpen stand-in "
        "with an animation node. No model download beyond MediaPipe's face model."),
    "HelloMeme image": (
        "What to change: Reference Portrait (who) and Driving Face (pose and expression). HelloMeme Loader: "
        "version v5c, any SD1.5 checkpoint; its files download on first use. Steps/cfg on HelloMeme Image. "
        "CLIP: " + CLIP_L_WHERE),
    "HelloMeme video": (
        "What to change: Reference Portrait and the Driving Video (frame_cap limits the length). HelloMeme Loader "
        "(v5, video) downloads its files on first use. Steps/cfg on HelloMeme Video; the result keeps the "
        "driving video's audio. CLIP: " + CLIP_L_WHERE),
    "HelloMeme versions side by side": (
        "What to change: Reference Portrait and Driving Face; every version (v1, v2, v3, v4, v5, v5c) gets the same "
        "conditions, seed, steps and cfg, each with its released sampler (scheduler auto) and prompt (v5c has its "
        "own). v5b: set a loader to v5b (its files are the v5 ones + hm5b_reference). Each loader downloads its "
        "version's files on first use; ComfyUI moves the models in and out of memory between samplers. The grid "
        "labels each result. CLIP: " + CLIP_L_WHERE),
    "HelloMeme style transfer": (
        "What to change: Portrait, and in HelloMeme Loader a stylised SD1.5 checkpoint or LoRA "
        "(models/checkpoints, models/loras); the Style Prompt describes the look, cfg 1.2 keeps the face. "
        "CLIP: " + CLIP_L_WHERE),
    "HunyuanPortrait video": (
        "What to change: Reference Portrait (who) and Driving Video (the motion; frame_cap limits the length). "
        "HunyuanPortrait Loader downloads its files on first use (Check HunyuanPortrait files lists them; the SVD-xt "
        "VAE repository needs an accepted license and an HF token). The sampler pastes the face back into the whole "
        "portrait and keeps the driving audio; its identity outputs score each window. Long videos: set the "
        "sampler's output to 'video file' (streamed to disk). Speed Options: sdpa + off is the exact path."),
    "Identity guard (HunyuanPortrait)": (
        "What to change: Reference Portrait and Driving Video, as in HunyuanPortrait video. Identity Guard scores "
        "every window of frames by ArcFace similarity to the reference (needs arcface on the loader): windows below "
        "its threshold are generated again (new seed, stronger appearance guidance, cross-faded into their "
        "neighbours) and the better attempt is kept. action 'report' only lists them; threshold 0 turns it off. "
        "The report (frame ranges, scores before/after) shows in the preview; the same Identity Guard plugs into "
        "MEMO Talking Portrait (it re-anchors failing clips on the reference)."),
    "Identity guard (MEMO)": (
        "What to change: Portrait and Speech, as in MEMO talking portrait. Identity Guard scores every clip by "
        "ArcFace similarity to the portrait with MEMO's identity models (identity on in MEMO Loader): a clip below "
        "its threshold is made again anchored on the portrait (past frames and temporal memory rebuilt from it, new "
        "seed, cfg + guidance_boost) and the better attempt is kept; the next clips continue from it. action "
        "'report' only lists them; threshold 0 turns it off. The report (frame ranges, scores before/after) shows "
        "in the preview."),
    "Quality metrics": (
        "What to change: connect your animation's frames (a sampler's frames or full_frames) in place of the "
        "stand-in (ImageSharpen on the driving video's faces), the reference portrait to Identity Similarity and "
        "the driving frames and both fps to the pose, expression and mouth nodes; set Seam Score's segment_length "
        "to the model's clip length (MEMO clip_length; HelloMeme v1/v2: 8, their window step). Identity needs "
        "arcface.onnx (HunyuanPortrait's, fetched on first use). Each node gives a mean, per-frame values, a plot "
        "and a JSON summary that queue_batch.py --summary collects."),
    "Speech to HelloMeme (via MEMO)": (
        "What to change: Speaker Photo + Speech make the MEMO talking head (the face crop video, no paste-back), "
        "which drives the Reference Portrait: pick a stylised portrait and, in HelloMeme Loader, any SD1.5 "
        "checkpoint or LoRA. driving_fps 8 as released (0 keeps MEMO's 30 fps: finer lips, more frames). The "
        "video gets the speech. Both loaders download their files on first use. CLIP: " + CLIP_L_WHERE),
    "Speech to HunyuanPortrait (via MEMO)": (
        "What to change: Speaker Photo + Speech make the MEMO talking head (the face crop video), which drives the "
        "Reference Portrait frame by frame at MEMO's fps; the sampler pastes the face back and muxes the speech. "
        "Both loaders download their files on first use (the SVD-xt VAE repository needs an accepted license "
        "and an HF token). Long speech: set the sampler's output to 'video file'."),
    "Preflight check": (
        "What to change: Portrait and Speech, as in MEMO talking portrait. Preflight estimates the run's peak memory "
        "(weights + run, per stage) and a rough time before any work, with the free memory and whether it fits; "
        "set its steps, size and output like the sampler's. It also takes hellomeme or hunyuan_portrait (one model "
        "at a time); decode_chunk 0 shows the largest HunyuanPortrait decode chunk that fits. The sampler runs the "
        "same check and refuses, before any work, a run that cannot fit."),
    "MEMO talking portrait": (
        "What to change: Portrait and Speech (any audio or video file in ComfyUI's input folder). "
        "MEMO Loader downloads its files on first use (Check MEMO files lists them); MEMO Talking Portrait's "
        "steps, cfg and frames per window set speed and quality. Long speech: a cancelled or crashed run continues "
        "from its last finished clip when queued again (Resume Options, on even when not connected)."),
}


def stage_of(node: dict, links: dict[int, tuple[int, int]], by_id: dict[int, dict]) -> str:
    """A node's stage: by type; a preview belongs to the stage of the node it shows."""
    if node["type"] in STAGE_BY_TYPE:
        return STAGE_BY_TYPE[node["type"]]
    for inp in node.get("inputs") or []:
        if inp.get("link") is not None and inp["link"] in links:
            src = by_id[links[inp["link"]][0]]
            if src["type"] in STAGE_BY_TYPE:
                return STAGE_BY_TYPE[src["type"]]
    return "Output"


def add_models_metadata(wf: dict) -> None:
    """``properties.models`` on the core CLIPLoader (both frontends read it for the missing-models dialog) and the
    same entry at the top level (the template format)."""
    models = []
    for n in wf["nodes"]:
        if n["type"] == "CLIPLoader" and (n.get("widgets_values") or [None])[0] == "clip_l.safetensors":
            entry = {"name": "clip_l.safetensors", "url": CLIP_L_URL, "directory": "text_encoders"}
            n.setdefault("properties", {})["models"] = [entry]
            models.append(entry)
    if models:
        wf["models"] = models[:1]


def layout(wf: dict, name: str, min_sizes: dict[str, list[float]]) -> dict:
    """Stage columns left to right, nodes stacked in each (order of the JSON), a titled group around each column,
    the Note above. Sizes: the larger of the JSON's and the frontend's minimum (media nodes get room for a preview)."""
    wf["nodes"] = [n for n in wf["nodes"] if n["type"] not in ("Note", "MarkdownNote")]
    wf["links"] = [l for l in wf["links"]]
    links = {l[0]: (l[1], l[3]) for l in wf["links"]}
    by_id = {n["id"]: n for n in wf["nodes"]}
    columns: dict[str, list[dict]] = {s: [] for s in STAGES}
    for n in wf["nodes"]:
        columns[stage_of(n, links, by_id)].append(n)
        w, h = min_sizes.get(str(n["id"]), n["size"])
        # the title is drawn in one line (~8 px a character at the default 14 px font) and is not in computeSize
        w = max(w, 320, 8 * len(n.get("title") or n["type"]) + 60, VIDEO_MIN_W if n["type"] in VIDEO_TYPES else 0)
        if n["type"] in MEDIA_TYPES:
            h = max(h + MEDIA_MIN_H - 60, MEDIA_MIN_H)
        n["size"] = [round(w), round(h)]
    top = 40 + NOTE_H + NODE_TITLE_H + GAP
    x, groups = 40, []
    for stage in STAGES:
        col = columns[stage]
        if not col:
            continue
        width = max(n["size"][0] for n in col)
        y = top + GROUP_TITLE_H + NODE_TITLE_H
        for n in col:
            n["pos"] = [x + 20, y]
            y += n["size"][1] + NODE_TITLE_H + 20
        groups.append({"id": len(groups) + 1, "title": stage, "bounding": [x, top, width + 40, y - top],
                       "color": STAGE_COLORS[stage], "font_size": 24, "flags": {}})
        x += width + 40 + GAP
    note_id = max(n["id"] for n in wf["nodes"]) + 1
    wf["nodes"].append({"id": note_id, "type": "Note", "title": "What to change", "pos": [40, 40 + NODE_TITLE_H],
                        "size": [max(NOTE_W, min(x - 40 - GAP, 1100)), NOTE_H], "flags": {}, "order": len(wf["nodes"]),
                        "mode": 0, "properties": {}, "widgets_values": [NOTES[name]],
                        "color": "#432", "bgcolor": "#653"})
    wf["last_node_id"] = max(wf.get("last_node_id", 0), note_id)
    wf["groups"] = groups
    add_models_metadata(wf)
    return wf


MEASURE_JS = """() => Object.fromEntries(window.app.graph._nodes.map(n => [String(n.id),
    Array.from(n.computeSize ? n.computeSize() : n.size)]))"""

FIT_JS = """([w, h]) => { const g = window.app.graph, c = window.app.canvas;
    let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
    const boxes = g._nodes.map(n => n.getBounding ? Array.from(n.getBounding()) : [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30]);
    for (const gr of (g._groups || g.groups || [])) boxes.push(Array.from(gr._bounding || gr.bounding));
    for (const [x, y, bw, bh] of boxes) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + bw); y1 = Math.max(y1, y + bh); }
    const m = 20, s = Math.min((w - 2 * m) / (x1 - x0), (h - 2 * m) / (y1 - y0), 1);
    c.ds.scale = s; c.ds.offset[0] = m / s - x0; c.ds.offset[1] = m / s - y0;
    c.render_info = false; c.setDirty(true, true); c.draw(true, true); return s; }"""

# Hide the app's panels (sidebar, tabs, menus, toasts, minimap) so only the canvas and the widgets drawn in HTML over
# it (a Note's text, prompts, video previews) are in the picture.
HIDE_UI_JS = """() => { const canvas = document.querySelector('canvas#graph-canvas') || window.app.canvas.canvas;
    const keep = 'textarea, video, img, .dom-widget, .comfy-multiline-input';
    for (const el of document.body.querySelectorAll('*')) {
        if (el.contains(canvas) || el.matches(keep) || el.querySelector(keep) || el.closest(keep)) continue;
        el.style.setProperty('visibility', 'hidden', 'important');
    } }"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy", type=Path, required=True, help="a ComfyUI folder (its .venv runs the server)")
    ap.add_argument("--layout", action="store_true", help="re-lay out the UI JSON files before the screenshots")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("names", nargs="*", help="workflow names (default: all in workflows/)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright
    from PIL import Image

    from tests.integration.comfy import ComfyServer

    names = args.names or sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    workdir = Path(tempfile.mkdtemp(prefix="wf_shots_"))
    # an empty stand-in, so the picture does not show the missing-model outline a user without the file would see
    (workdir / "models" / "text_encoders").mkdir(parents=True)
    (workdir / "models" / "text_encoders" / "clip_l.safetensors").write_bytes(b"")
    server = ComfyServer(args.comfy.expanduser(), workdir).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": VIEW[0], "height": VIEW[1]})
            server.request("POST", "/settings/Comfy.TutorialCompleted", True)
            server.request("POST", "/settings/Comfy.NodeBadge.NodeSourceBadgeMode", "None")  # no folder-name badges
            # full detail at any zoom: below the LOD threshold text, widgets and HTML widgets are not drawn
            server.request("POST", "/settings/LiteGraph.Canvas.MinFontSizeForLOD", 0)
            server.request("POST", "/settings/LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.05)
            page.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            page.wait_for_timeout(3000)
            page.keyboard.press("Escape")
            for name in names:
                path = WORKFLOWS / f"{name}.json"
                wf = json.loads(path.read_text())
                if args.layout:
                    page.evaluate("async (w) => { await window.app.loadGraphData(w); }", wf)
                    page.wait_for_timeout(1000)
                    wf = layout(wf, name, page.evaluate(MEASURE_JS))
                    path.write_text(json.dumps(wf, indent=2) + "\n")
                page.evaluate("async (w) => { await window.app.loadGraphData(w); }", wf)
                page.wait_for_timeout(2500)  # image previews load
                page.evaluate(FIT_JS, VIEW)
                page.wait_for_timeout(800)  # HTML widgets follow the canvas on the next frames
                page.evaluate(HIDE_UI_JS)
                png = page.screenshot()
                page.reload(wait_until="domcontentloaded")  # the hidden panels come back
                page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
                page.wait_for_timeout(2000)
                img = Image.open(io.BytesIO(png)).convert("RGB")
                img.thumbnail((1280, 800))
                for q in (80, 70, 60, 50, 40):
                    buf = io.BytesIO()
                    img.save(buf, "JPEG", quality=q, optimize=True)
                    if buf.tell() < MAX_JPG_BYTES:
                        break
                (WORKFLOWS / f"{name}.jpg").write_bytes(buf.getvalue())
                print(f"{name}: {buf.tell() // 1024} KB", flush=True)
            browser.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
