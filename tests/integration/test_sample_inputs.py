"""A fresh install offers the example workflows' inputs: a real ComfyUI whose input folder starts empty lists the
shipped samples in core Load Image / Load Video / Load Audio and in the pack's loaders, and runs an example as is.

The shared ``comfy_server`` stages the sample media into its input folder, so it cannot show the fresh-install
path; this module starts its own server on an empty input folder (a user's file of a sample's name in it)."""
from __future__ import annotations

import pytest

from portrait_animation.media.samples import SAMPLES_DIR, sample_names

from .comfy import ROOT, ComfyServer, fast, load_api_workflow

USERS_OWN = b"not a sample: the user's own file under a sample's name"


@pytest.fixture(scope="module")
def fresh_server(comfy_install, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fresh-install")
    server = ComfyServer(comfy_install, workdir, env={"HF_ENDPOINT": "http://127.0.0.1:9"})  # nothing to fetch
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


def test_an_example_runs_as_shipped(fresh_server):
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / "face_crop_paste_back.json"))
    entry = fresh_server.run(graph, timeout=300)
    assert entry["status"]["status_str"] == "success", str(entry["status"])[:3000]
