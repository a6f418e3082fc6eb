"""A fresh install runs the examples as shipped: a real ComfyUI whose input and models folders start empty, with the
newest MediaPipe (no bundled face models) and only a loopback server reachable for downloads.

* The example workflows' inputs are offered: the shipped samples are listed in core Load Image / Load Video / Load
  Audio and in the pack's loaders (a user's file of a sample's name is never touched).
* The face example runs without a switch to toggle: its Face Detector fetches ``face_landmarker.task`` on first use
  (through ``PORTRAIT_ANIMATION_URL_MIRRORS``, the loopback server standing in for Google's model storage).

The server runs with ``PYTHONPATH`` set to the overlay ``scripts/setup_comfyui.sh`` installs the newest MediaPipe into
(``$COMFYUI_HOME/overlays/mediapipe-<version>``), so it imports that MediaPipe instead of the venv's 0.10.21. The
served task bundle is assembled from 0.10.21's tflite models (the official file cannot be fetched here): the real
Tasks API runs it, and the landmarks are checked only for landing on the face.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from portrait_animation.loaders.manifest import load_manifest
from portrait_animation.media.samples import SAMPLES_DIR, sample_names

from .comfy import ROOT, ComfyServer, decode_media, fetch_view, load_api_workflow, output_files
from .conftest import DEFAULT_COMFYUI_HOME, IN_CI

USERS_OWN = b"not a sample: the user's own file under a sample's name"
GCS = "https://storage.googleapis.com/"


def current_mediapipe_overlay() -> Path | None:
    """The newest MediaPipe overlay prepared by ``scripts/setup_comfyui.sh`` (None when there is none)."""
    home = Path(os.environ.get("COMFYUI_HOME") or DEFAULT_COMFYUI_HOME).expanduser()
    found = sorted((p.parent for p in home.glob("overlays/mediapipe-*/.pa-ready")),
                   key=lambda p: tuple(int(x) for x in p.name.split("-", 1)[1].split(".") if x.isdigit()))
    return found[-1] if found else None


def stand_in_task_bundle() -> bytes:
    """A ``.task`` zip in the official layout, from the face models bundled with this process's MediaPipe 0.10.21."""
    import mediapipe

    modules = Path(mediapipe.__file__).parent / "modules"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.write(modules / "face_detection" / "face_detection_short_range.tflite", "face_detector.tflite")
        z.write(modules / "face_landmark" / "face_landmark.tflite", "face_landmarks_detector.tflite")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mirror():
    from helpers.loopback_hub import LoopbackHub

    hub = LoopbackHub()
    base = hub.start()
    url = load_manifest("face").file("face_landmarker").url
    assert url.startswith(GCS), url
    hub.add_plain("/gcs/" + url[len(GCS):], stand_in_task_bundle())
    yield hub, base
    hub.stop()


@pytest.fixture(scope="module")
def fresh_server(comfy_install, tmp_path_factory, mirror):
    overlay = current_mediapipe_overlay()
    if overlay is None:
        reason = "no current-MediaPipe overlay: run 'bash scripts/setup_comfyui.sh'"
        pytest.fail(reason, pytrace=False) if IN_CI else pytest.skip(reason)
    hub, base = mirror
    workdir = tmp_path_factory.mktemp("fresh-install")
    server = ComfyServer(comfy_install, workdir, env={
        "PYTHONPATH": str(overlay),
        "HF_ENDPOINT": base,  # nothing on the Hub is needed; a request there would show in hub.requests
        "PORTRAIT_ANIMATION_URL_MIRRORS": f"{GCS}={base}/gcs/"})
    server.input_dir.mkdir(parents=True)
    (server.input_dir / "dicaprio.jpg").write_bytes(USERS_OWN)
    assert sorted(p.name for p in server.input_dir.iterdir()) == ["dicaprio.jpg"]
    server.start()
    yield server
    server.stop()


def combo_options(server: ComfyServer, node: str, input_name: str) -> list[str] | None:
    """The choices /object_info offers for a combo input (old list form or V3 "COMBO" form); None: no such node."""
    info = server.get(f"/object_info/{node}").get(node)
    if info is None:
        return None
    spec = info["input"]["required"][input_name]
    return list(spec[0]) if isinstance(spec[0], list) else list(spec[1]["options"])


def test_samples_are_copied_into_the_empty_input_folder(fresh_server):
    names = sample_names()
    assert set(names) == {"harris.jpg", "jue.mp4", "dicaprio.jpg", "speech.wav"}
    for name in set(names) - {"dicaprio.jpg"}:
        assert (fresh_server.input_dir / name).read_bytes() == (SAMPLES_DIR / name).read_bytes(), name
    assert (fresh_server.input_dir / "dicaprio.jpg").read_bytes() == USERS_OWN  # never overwritten
    log = [line for line in fresh_server.log_text().splitlines() if "copied the example inputs" in line]
    assert len(log) == 1 and "harris.jpg" in log[0] and "dicaprio.jpg" not in log[0], log


def test_core_and_pack_loaders_list_the_samples(fresh_server):
    assert "harris.jpg" in combo_options(fresh_server, "LoadImage", "image")
    assert "jue.mp4" in combo_options(fresh_server, "PortraitAnim_LoadVideoFrames", "video")
    assert "speech.wav" in combo_options(fresh_server, "PortraitAnim_LoadAudio", "audio_file")
    core_video = combo_options(fresh_server, "LoadVideo", "file")
    if core_video is not None:  # core video nodes exist in every supported version; checked where present
        assert "jue.mp4" in core_video
    core_audio = combo_options(fresh_server, "LoadAudio", "audio")
    if core_audio is not None:
        assert "speech.wav" in core_audio


def test_the_face_example_runs_as_shipped_with_current_mediapipe(fresh_server, mirror):
    """No override and no switch: the shipped face example on an empty models folder, MediaPipe without bundled
    models; the task file comes from the (loopback) download source on first use and the result is a real picture."""
    hub, _ = mirror
    before = len(hub.requests)
    graph = load_api_workflow(ROOT / "workflows" / "api" / "Face crop and paste back.json")
    entry = fresh_server.run(graph, timeout=300)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]

    log = fresh_server.log_text()
    task = fresh_server.extra_models_dir / "face" / "face_landmarker.task"
    assert task.is_file() and zipfile.is_zipfile(task), f"face_landmarker.task not installed at {task}"
    fetched = [path for method, path in hub.requests[before:] if method == "GET"]
    assert fetched == ["/gcs/" + load_manifest("face").file("face_landmarker").url[len(GCS):]], hub.requests
    versions = [line for line in log.splitlines() if "face detection: MediaPipe" in line]
    assert versions and "task backend" in versions[0], versions
    overlay_version = current_mediapipe_overlay().name.split("-", 1)[1]
    assert f"MediaPipe {overlay_version}," in versions[0], f"the server did not run the overlay's MediaPipe: {versions}"

    from .example_checks import change_inside_outside, face_box

    saved = [f for nid, f in output_files(entry) if graph[nid]["class_type"] == "SaveImage"]
    assert len(saved) == 1, entry["outputs"]
    result = decode_media(fetch_view(fresh_server, saved[0]), saved[0]["filename"])
    original = decode_media((SAMPLES_DIR / graph["1"]["inputs"]["image"]).read_bytes(), "original")
    assert result.shape == original.shape and np.isfinite(result).all() and result.std() > 0.01
    inside, border = change_inside_outside(result[0], original[0], face_box(original[0]))
    assert inside > 0.004 and inside > 3 * border, f"face change {inside:.4f}, border {border:.4f}"
