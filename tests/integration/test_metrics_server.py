"""The quality metric nodes inside a real ComfyUI, on the sample media: every metric's outputs (mean, per-frame
list, plot shown on the node, JSON summary in the history under ``pa_metrics``), the direction each must move
(another person, a bigger frame step, a cut at a boundary, another driver), and ``tools/queue_batch.py --summary``
collecting the summaries. Identity runs the tests' small ArcFace stand-in (the server's HunyuanPortrait models)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from .comfy import ROOT, decode_media, fetch_view, output_files

FRAMES = 12


def frames_node(video: str, start: int = 0, cap: int = FRAMES, step: int = 1) -> dict:
    return {"class_type": "PortraitAnim_LoadVideoFrames",
            "inputs": {"video": video, "start_frame": start, "frame_cap": cap, "select_every_nth": step}}


def metrics_prompt() -> dict:
    driving = {"fps": ["1", 1], "driving_fps": ["1", 1]}
    return {
        "1": frames_node("jue.mp4"),
        "2": frames_node("jue.mp4", step=4),
        "3": frames_node("jue.mp4", start=60, cap=6),
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["3", 0]}},  # a cut at frame 12
        "5": frames_node("driving_video.mp4"),
        "6": {"class_type": "ImageFromBatch", "inputs": {"image": ["1", 0], "batch_index": 0, "length": 1}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "dicaprio.jpg"}},
        "10": {"class_type": "PortraitAnim_IdentityMetric", "_meta": {"title": "Identity same"},
               "inputs": {"images": ["1", 0], "reference": ["6", 0], "download": False}},
        "11": {"class_type": "PortraitAnim_IdentityMetric", "_meta": {"title": "Identity other"},
               "inputs": {"images": ["1", 0], "reference": ["7", 0], "download": False}},
        "12": {"class_type": "PortraitAnim_FlickerMetric", "inputs": {"images": ["1", 0], "flow_size": 256}},
        "13": {"class_type": "PortraitAnim_FlickerMetric", "inputs": {"images": ["2", 0], "flow_size": 256}},
        "14": {"class_type": "PortraitAnim_SeamMetric",
               "inputs": {"images": ["4", 0], "boundaries": "12", "segment_length": 0, "flow_size": 256}},
        "15": {"class_type": "PortraitAnim_SeamMetric",
               "inputs": {"images": ["4", 0], "boundaries": "", "segment_length": 6, "flow_size": 256}},
        "16": {"class_type": "PortraitAnim_PoseMetric", "inputs": {"images": ["1", 0], "driving": ["1", 0], **driving}},
        "17": {"class_type": "PortraitAnim_PoseMetric", "inputs": {"images": ["1", 0], "driving": ["5", 0], **driving}},
        "18": {"class_type": "PortraitAnim_ExpressionMetric",
               "inputs": {"images": ["1", 0], "driving": ["5", 0], "compare": "relative", **driving}},
        "19": {"class_type": "PortraitAnim_MouthMetric",
               "inputs": {"images": ["1", 0], "driving": ["1", 0], "compare": "absolute", **driving}},
        "20": {"class_type": "PortraitAnim_MouthMetric",
               "inputs": {"images": ["1", 0], "driving": ["5", 0], "compare": "absolute", **driving}},
    }


def test_metric_nodes_run_and_move_the_right_way(comfy_server):
    prompt = metrics_prompt()
    entry = comfy_server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    summaries = {nid: out["pa_metrics"][0] for nid, out in entry["outputs"].items() if "pa_metrics" in out}
    metric_nodes = {k for k, v in prompt.items() if v["class_type"].endswith("Metric")}
    assert set(summaries) == metric_nodes, sorted(summaries)
    for nid, s in summaries.items():
        assert s["metric"] and s["unit"] and s["better"] in ("higher", "lower") and s["mean"] is not None, s
    for nid, f in output_files(entry):  # each metric node shows its plot
        assert nid in metric_nodes
        plot = decode_media(fetch_view(comfy_server, f), f["filename"])
        assert plot.shape[1:3] == (320, 768) and plot.std() > 0.02, f
    assert {nid for nid, _ in output_files(entry)} == metric_nodes

    mean = {nid: s["mean"] for nid, s in summaries.items()}
    assert len(summaries["10"]["values"]) == FRAMES and summaries["10"]["values"][0] > 0.999
    assert mean["10"] > mean["11"] + 0.2, (mean["10"], mean["11"])          # another person
    assert len(summaries["12"]["values"]) == FRAMES - 1
    assert mean["13"] > mean["12"], (mean["13"], mean["12"])                # every 4th frame: bigger jumps
    assert summaries["14"]["x"] == [12] and mean["14"] > 2.0, summaries["14"]  # the cut
    assert summaries["15"]["x"] == [6, 12]                                  # every 6 frames of 18
    seam = dict(zip(summaries["15"]["x"], summaries["15"]["values"]))
    assert seam[12] > 2 * seam[6], seam                                     # only the boundary with the cut
    assert mean["16"] == 0.0 and mean["17"] > 1.0, (mean["16"], mean["17"])  # its own driver vs another
    assert mean["18"] > 0.0
    assert mean["19"] == 0.0 and mean["20"] > 1.0, (mean["19"], mean["20"])


def test_queue_batch_summary_lists_the_metrics(comfy_server, tmp_path):
    workflow = {
        "1": {**frames_node("jue.mp4", cap=8), "_meta": {"title": "Video"}},
        "2": {"class_type": "PortraitAnim_FlickerMetric", "inputs": {"images": ["1", 0], "flow_size": 128},
              "_meta": {"title": "Flicker"}},
        "3": {"class_type": "PortraitAnim_SeamMetric", "_meta": {"title": "Seams"},
              "inputs": {"images": ["1", 0], "boundaries": "", "segment_length": 4, "flow_size": 128}},
    }
    path = tmp_path / "metrics_api.json"
    path.write_text(json.dumps(workflow))
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, str(ROOT / "tools" / "queue_batch.py"), str(path), "--server", comfy_server.url,
           "--out", str(tmp_path / "out"), "--summary", str(summary), "--set", "Video.frame_cap=6",
           "--set", "Video.select_every_nth=2", "--timeout", "300"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    detail = f"\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, detail
    (job,) = json.loads(summary.read_text())["jobs"]
    got = {m["title"]: m for m in job["metrics"]}
    assert set(got) == {"Flicker", "Seams"}, job["metrics"]
    assert got["Flicker"]["node"] == "2" and got["Flicker"]["metric"] == "flicker"
    assert len(got["Flicker"]["values"]) == 5 and np.isfinite(got["Flicker"]["mean"])
    assert got["Seams"]["x"] == [4] and got["Seams"]["metric"] == "seam"
    assert "Flicker: flicker mean" in proc.stdout, detail
    assert len(job["outputs"]) == 2  # the two plots (temp previews)


def test_lip_sync_metric_without_and_with_weights(comfy_server):
    """Lip Sync (SyncNet): without syncnet_v2.model the error names the file, where it goes and where to get it; with
    the tests' stand-in (random weights in the released layout) in the server's models folder it returns a finite
    confidence, one value per 25 fps window, the AV offset and the plot."""
    from helpers.tiny_models import write_syncnet_standin

    from portrait_animation.metrics.syncnet import WEIGHTS_DEST, WEIGHTS_URL

    prompt = {
        "1": frames_node("jue.mp4", cap=15),
        "2": {"class_type": "PortraitAnim_LoadAudio", "inputs": {"audio_file": "speech.wav"}},
        "3": {"class_type": "PortraitAnim_LipSyncMetric",
              "inputs": {"images": ["1", 0], "fps": ["1", 1], "audio": ["2", 0]}},
    }
    entry = comfy_server.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "error"
    (error,) = [m for kind, m in entry["status"]["messages"] if kind == "execution_error"]
    msg = error["exception_message"]
    assert "syncnet_v2.model" in msg and WEIGHTS_URL in msg and "portrait_animation/metrics" in msg, msg

    weights = comfy_server.models_dir / "portrait_animation" / WEIGHTS_DEST
    write_syncnet_standin(weights)
    try:
        entry = comfy_server.run(prompt, timeout=600)
    finally:
        weights.unlink()
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    s = entry["outputs"]["3"]["pa_metrics"][0]
    assert s["metric"] == "lip_sync" and s["better"] == "higher" and s["windows"] == len(s["values"]) >= 5
    assert all(v is not None for v in s["values"]) and abs(s["mean"] - s["confidence"]) < 1e-3
    assert -15 <= s["av_offset"] <= 15 and s["min_distance"] > 0 and len(s["distance_per_offset"]) == 31
    ((nid, f),) = output_files(entry)
    assert nid == "3" and decode_media(fetch_view(comfy_server, f), f["filename"]).shape[1:3] == (320, 768)
