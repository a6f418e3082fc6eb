"""Every HelloMeme version end to end in a real ComfyUI, with the stand-in models of ``tests/helpers/tiny_models.py``
(v5 / v5c from ``write_hellomeme_models``, v1-v4 from ``write_hellomeme_v1_v4_models``, all in the released folder
layouts under the server's models folder, found by the pack's store as a user's files would be).

The shipped image and video examples are queued with only the loader's version changed (and the sampler on 'auto',
so each version runs its released sampler; 1 step at 128 px as ``fast`` sets): image mode for v1, v2, v3, v4, v5,
v5c, video mode for v1 and v2 (per-frame pre-pass + fixed 12-frame windows), v3 and v4 (pre-pass + keyframe
windows with the HelloMeme motion modules). The sampler's own output (through a Preview Image) must be the
requested size, finite and not constant; the saved result (pasted back) the original's size with one frame per
resampled driving frame, and the face changed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files
from .example_checks import change_inside_outside, expected_frames, face_box, paste_back_original

IMAGE_VERSIONS = ("v1", "v2", "v3", "v4", "v5", "v5c")
VIDEO_VERSIONS = ("v1", "v2", "v3", "v4")
SIZE = 128  # the sampler's width / height under ``fast``


def version_graph(workflow: str, version: str, mode: str) -> tuple[dict, str, str]:
    """The example ``workflow`` (fast settings) with the loader set to ``version`` / ``mode``, the sampler on 'auto'
    and a Preview Image of the sampler's frames; returns (graph, sampler id, preview id)."""
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / f"{workflow}.json"))
    loader = next(k for k, v in graph.items() if v["class_type"] == "PortraitAnim_HelloMemeLoader")
    sampler = next(k for k, v in graph.items()
                   if v["class_type"] in ("PortraitAnim_HelloMemeImage", "PortraitAnim_HelloMemeVideo"))
    graph[loader]["inputs"].update(version=version, mode=mode)
    graph[sampler]["inputs"]["scheduler"] = "auto"
    preview = str(max(int(k) for k in graph) + 1)
    graph[preview] = {"class_type": "PreviewImage", "inputs": {"images": [sampler, 0]}}
    return graph, sampler, preview


def run_and_check(server, graph: dict, preview: str, label: str) -> np.ndarray:
    entry = server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", f"{label}: " + json.dumps(entry["status"], indent=1)[:4000]
    files = output_files(entry)
    # the sampler's frames, as generated
    previews = [f for nid, f in files if nid == preview]
    generated = np.concatenate([decode_media(fetch_view(server, f), f["filename"]) for f in previews])
    assert generated.shape[1:3] == (SIZE, SIZE), f"{label}: sampler output {generated.shape}"
    assert np.isfinite(generated).all() and generated.std() > 0.01, f"{label}: constant or not finite"
    # the saved result: pasted back into the original, one frame per (resampled) driving frame
    saved = [f for nid, f in files if graph[nid]["class_type"] in ("SaveImage", "SaveVideo")]
    assert len(saved) == 1, f"{label}: {saved}"
    result = decode_media(fetch_view(server, saved[0]), saved[0]["filename"])
    original_name = paste_back_original(graph)
    original = decode_media((server.input_dir / original_name).read_bytes(), original_name)
    n, height, width = original.shape[:3]
    if saved[0]["filename"].endswith(".mp4"):  # FramesToVideo pads to even sizes for h264
        height, width = height + height % 2, width + width % 2
    assert result.shape[1:3] == (height, width), f"{label}: result {result.shape}, original {original.shape}"
    frames, tolerance = expected_frames(graph, server.input_dir, n)
    assert abs(result.shape[0] - frames) <= tolerance, f"{label}: {result.shape[0]} frames, expected {frames}"
    assert generated.shape[0] == result.shape[0], f"{label}: {generated.shape[0]} generated, {result.shape[0]} saved"
    inside, _ = change_inside_outside(result[0, : original.shape[1], : original.shape[2]], original[0],
                                      face_box(original[0]))
    assert inside > 0.05, f"{label}: the model did not change the face ({inside:.4f})"
    return generated


@pytest.mark.parametrize("version", IMAGE_VERSIONS)
def test_hellomeme_version_image_runs(comfy_server, version):
    graph, _, preview = version_graph("HelloMeme image", version, "image")
    generated = run_and_check(comfy_server, graph, preview, f"{version} image")
    assert generated.shape[0] == 1


@pytest.mark.parametrize("version", VIDEO_VERSIONS)
def test_hellomeme_version_video_runs(comfy_server, version):
    graph, _, preview = version_graph("HelloMeme video", version, "video")
    generated = run_and_check(comfy_server, graph, preview, f"{version} video")
    assert generated.shape[0] > 1 and generated.std(0).mean() > 0  # the frames differ
