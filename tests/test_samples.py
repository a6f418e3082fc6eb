"""The example workflows' inputs: shipped in workflows/inputs with their licenses, copied into ComfyUI's input folder
where absent (never over a user's file), and offered by the pack's own loader nodes.

The loader lists are read through stand-ins for ComfyUI's ``folder_paths`` and ``comfy_api.v0_0_2`` (the node
module only needs their names); the real-server check is tests/integration/test_sample_inputs.py."""
from __future__ import annotations

import importlib
import json
import logging
import mimetypes
import os
import sys
import types
from pathlib import Path

import pytest

from portrait_animation.media import samples

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ROOT / "workflows" / "inputs"
SHIPPED = {"harris.jpg": "MIT", "jue.mp4": "MIT", "dicaprio.jpg": "Apache-2.0", "speech.wav": "Apache-2.0"}
NOT_REDISTRIBUTABLE = ("source_image.png", "driving_video.mp4")


# ---- what ships ---------------------------------------------------------------------------------------------------
def test_the_shipped_inputs_are_the_redistributable_samples():
    assert samples.SAMPLES_DIR == INPUTS
    assert samples.sample_names() == sorted(SHIPPED)
    assert not any((INPUTS / name).exists() for name in NOT_REDISTRIBUTABLE)


def test_each_shipped_input_states_its_origin_and_license():
    readme = (INPUTS / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in readme.splitlines()
            if line.startswith("| `")}
    assert set(rows) == set(SHIPPED)
    for name, license_ in SHIPPED.items():
        assert license_ in rows[name], rows[name]
        assert ("HelloVision/HelloMeme" if license_ == "MIT" else "memoavatar/memo") in rows[name]


def test_shipped_inputs_are_the_shared_sample_media(data_dir):
    for name in SHIPPED:
        assert (INPUTS / name).read_bytes() == (data_dir / name).read_bytes(), name


# hellomeme_image drives with the HunyuanPortrait sample, which cannot ship: the workflows' owner replaces it
NOT_SHIPPED_YET: set[str] = set()


def test_example_workflows_name_only_shipped_inputs():
    named = set()
    for path in sorted((ROOT / "workflows" / "api").glob("*.json")):
        for node in json.loads(path.read_text()).values():
            for key in ("image", "video", "file", "audio_file"):
                value = node.get("inputs", {}).get(key)
                if isinstance(value, str):
                    named.add(value)
    assert {"harris.jpg", "jue.mp4", "dicaprio.jpg", "speech.wav"} <= named
    assert named - NOT_SHIPPED_YET <= set(SHIPPED), named - set(SHIPPED)


# ---- copying into ComfyUI's input folder --------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_install_copies_the_absent_samples_once_and_logs_one_line(tmp_path, caplog):
    target = tmp_path / "input"
    with caplog.at_level(logging.INFO, logger="portrait_animation"):
        assert samples.install_samples(target) == sorted(SHIPPED)
    lines = [r.getMessage() for r in caplog.records if "example inputs" in r.getMessage()]
    assert len(lines) == 1 and all(name in lines[0] for name in SHIPPED) and str(target) in lines[0]
    for name in SHIPPED:
        assert (target / name).read_bytes() == (INPUTS / name).read_bytes()
        mode = (target / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~_umask(), oct(mode)  # a normal file, as if the user had copied it
    assert sorted(os.listdir(target)) == sorted(SHIPPED)  # no README, no temporary files
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="portrait_animation"):
        assert samples.install_samples(target) == []  # idempotent
    assert not [r for r in caplog.records if "example inputs" in r.getMessage()]  # and silent when nothing to do


def test_install_never_overwrites_a_file_of_the_same_name(tmp_path):
    target = tmp_path / "input"
    target.mkdir()
    (target / "harris.jpg").write_bytes(b"the user's own harris")
    (target / "jue.mp4").symlink_to(tmp_path / "dangling.mp4")  # even a broken link is the user's
    copied = samples.install_samples(target)
    assert copied == sorted(set(SHIPPED) - {"harris.jpg", "jue.mp4"})
    assert (target / "harris.jpg").read_bytes() == b"the user's own harris"
    assert (target / "jue.mp4").is_symlink() and not (tmp_path / "dangling.mp4").exists()


def test_install_into_an_unwritable_folder_logs_and_does_not_raise(tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the input folder should be")
    with caplog.at_level(logging.WARNING, logger="portrait_animation"):
        assert samples.install_samples(blocker / "input") == []
    assert any("could not copy the example inputs" in r.getMessage() for r in caplog.records)


def test_sample_path_accepts_plain_shipped_names_only():
    assert samples.sample_path("jue.mp4") == INPUTS / "jue.mp4"
    for name in ("README.md", "nope.mp4", "../inputs/jue.mp4", "inputs/jue.mp4", "", ".hidden"):
        assert samples.sample_path(name) is None, name


# ---- the pack's loader nodes ----------------------------------------------------------------------------------------
class _Anything(types.ModuleType):
    """Any attribute is a callable that records its arguments (enough for ``define_schema`` to run)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Recorder(name)


class _Recorder:
    def __init__(self, name):
        self.name = name

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Recorder(f"{self.name}.{name}")

    def __call__(self, *args, **kwargs):
        return {"kind": self.name, "args": args, **kwargs}


@pytest.fixture
def media_nodes(tmp_path, monkeypatch):
    """nodes.media on stand-ins, with ``tmp_path/input`` as ComfyUI's input folder."""
    input_dir = tmp_path / "input"
    input_dir.mkdir()

    def content_types(files, kinds):
        return [f for f in files if (mimetypes.guess_type(f, strict=False)[0] or "").split("/")[0] in kinds]

    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_input_directory = lambda: str(input_dir)
    folder_paths.filter_files_content_types = content_types
    folder_paths.get_annotated_filepath = lambda name: os.path.join(str(input_dir), name)
    latest = types.ModuleType("comfy_api.v0_0_2")
    latest.io, latest.InputImpl, latest.Types = _Anything("io"), _Anything("InputImpl"), _Anything("Types")
    latest.io.ComfyNode = type("ComfyNode", (), {})
    latest.ComfyExtension = type("ComfyExtension", (), {})
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.v0_0_2 = latest
    for name, module in (("folder_paths", folder_paths), ("comfy_api", comfy_api), ("comfy_api.v0_0_2", latest)):
        monkeypatch.setitem(sys.modules, name, module)
    for name in [m for m in sys.modules if m.startswith("portrait_animation.nodes")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys.modules["portrait_animation"], "nodes", None, raising=False)
    module = importlib.import_module("portrait_animation.nodes.media")
    yield module, input_dir
    for name in [m for m in sys.modules if m.startswith("portrait_animation.nodes")]:
        del sys.modules[name]  # nothing built on the stand-ins outlives the test


def _options(node, input_id: str) -> list[str]:
    inputs = node.define_schema()["inputs"]
    return next(i for i in inputs if i.get("args", (None,))[0] == input_id)["options"]


def test_loader_lists_offer_the_samples_on_a_fresh_install(media_nodes):
    nodes, input_dir = media_nodes
    assert os.listdir(input_dir) == []
    assert "jue.mp4" in _options(nodes.LoadVideoFrames, "video")
    assert "harris.jpg" not in _options(nodes.LoadVideoFrames, "video")  # only videos
    audio_options = _options(nodes.LoadAudio, "audio_file")
    assert "speech.wav" in audio_options and "jue.mp4" in audio_options  # audio, or a video's soundtrack
    # the sample opens from the pack, and passes the nodes' own file check
    assert nodes._resolve("jue.mp4") == str(INPUTS / "jue.mp4")
    assert nodes.LoadVideoFrames.validate_inputs("jue.mp4") is True
    assert nodes.LoadAudio.validate_inputs("speech.wav") is True
    assert isinstance(nodes.LoadAudio.validate_inputs("nope.wav"), str)


def test_a_users_file_of_the_same_name_wins(media_nodes):
    nodes, input_dir = media_nodes
    (input_dir / "speech.wav").write_bytes(b"RIFF the user's own")
    (input_dir / "mine.mp4").write_bytes(b"a user's video")
    options = _options(nodes.LoadAudio, "audio_file")
    assert options.count("speech.wav") == 1 and "mine.mp4" in options and options == sorted(options)
    assert nodes._resolve("speech.wav") == str(input_dir / "speech.wav")
    assert nodes._file_fingerprint("speech.wav").endswith(f":{(input_dir / 'speech.wav').stat().st_size}")
