"""Integration tests against real ComfyUI installs, one server per install (test ids carry the version).

Installs are found by ``comfy_installs()``: ``COMFYUI_PATH`` (one folder or a ':'-separated list) or, when it is
unset, every install that ``scripts/setup_comfyui.sh`` prepared under ``$COMFYUI_HOME`` (default
``~/.cache/portrait-animation/comfyui``, marked ready by ``.pa-ready``). Each install runs with its own venv
(``<install>/.venv``; ``COMFYUI_PYTHON`` for a single install without one). Without any install the tests skip with
the reason shown; under CI (``CI=true``) they fail instead, because CI always provides ComfyUI.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .comfy import ComfyServer, stage_inputs, write_wav

HERE = Path(__file__).parent
DEFAULT_COMFYUI_HOME = Path.home() / ".cache" / "portrait-animation" / "comfyui"
SKIP_REASON = ("no ComfyUI install found: set COMFYUI_PATH (a folder or a ':'-separated list), or run "
               "'bash scripts/setup_comfyui.sh' to prepare the archived versions under $COMFYUI_HOME "
               "(see README, 'Running the tests')")


def comfy_version(path: Path) -> str:
    """The version ComfyUI reports (``comfyui_version.py``), else the folder name."""
    version_file = path / "comfyui_version.py"
    if version_file.is_file():
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", version_file.read_text())
        if m:
            return m.group(1)
    return path.name


def comfy_installs() -> list[Path]:
    """Every ComfyUI folder to test, oldest version first."""
    if os.environ.get("COMFYUI_PATH"):
        paths = [Path(p).expanduser() for p in os.environ["COMFYUI_PATH"].split(os.pathsep) if p]
        missing = [str(p) for p in paths if not (p / "main.py").is_file()]
        if missing:
            raise pytest.UsageError(f"COMFYUI_PATH names folders without ComfyUI's main.py: {missing}")
        return paths
    home = Path(os.environ.get("COMFYUI_HOME") or DEFAULT_COMFYUI_HOME).expanduser()
    found = [p.parent for p in home.glob("*/.pa-ready") if (p.parent / "main.py").is_file()]

    def key(p: Path):
        return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.\-]", comfy_version(p)))

    return sorted(found, key=key)


INSTALLS = comfy_installs()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_report_header(config):
    if not INSTALLS:
        return [f"integration: {SKIP_REASON}"]
    return ["integration: ComfyUI " + ", ".join(f"{comfy_version(p)} ({p})" for p in INSTALLS)]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
            if not INSTALLS and not IN_CI:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def pytest_generate_tests(metafunc):
    """One parameter per install for every test that uses ``comfy_install`` (directly or through ``comfy_server``);
    session scope, so pytest runs all tests of one version, stops its server, then starts the next."""
    if "comfy_install" in metafunc.fixturenames:
        params = INSTALLS or [None]
        ids = [f"comfyui-{comfy_version(p)}" for p in INSTALLS] or ["no-comfyui"]
        metafunc.parametrize("comfy_install", params, ids=ids, indirect=True, scope="session")


@pytest.fixture(scope="session")
def comfy_install(request) -> Path:
    """The ComfyUI folder under test."""
    if request.param is None:
        if IN_CI:
            pytest.fail(f"CI=true but {SKIP_REASON}; .ci/run must prepare them", pytrace=False)
        pytest.skip(SKIP_REASON)
    return request.param


@pytest.fixture(scope="session")
def loopback_hub():
    """A Hugging Face look-alike on 127.0.0.1; the ComfyUI server downloads from it (HF_ENDPOINT)."""
    from helpers.loopback_hub import LoopbackHub

    hub = LoopbackHub()
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def comfy_server(comfy_install, tmp_path_factory, data_dir, parity_root, loopback_hub):
    """A ComfyUI server for this install with the pack, the tests' stand-in models and the sample media."""
    from helpers.tiny_clip import widen_text_dim, write_clip_l
    from helpers.tiny_insightface import write_memo_identity_standins
    from helpers.tiny_models import (write_hellomeme_models, write_hellomeme_v1_v4_models, write_hunyuan_models,
                                     write_memo_models)
    from portrait_animation.media.audio import load_audio

    base = f"http://127.0.0.1:{loopback_hub.server.server_address[1]}"
    workdir = tmp_path_factory.mktemp(f"comfy-{comfy_version(comfy_install)}")
    server = ComfyServer(comfy_install, workdir, env={"HF_ENDPOINT": base})
    write_memo_models(server.models_dir, parity_root)  # small stand-ins, laid out like the real files
    write_memo_identity_standins(server.models_dir)  # SCRFD (a face in every frame) + ArcFace, for MEMO Loader identity
    hm = write_hellomeme_models(server.models_dir, parity_root)
    widen_text_dim(hm["hellomeme"] / "stable-diffusion-v1-5" / "unet")  # CONDITIONING from a real-shaped CLIP-L
    write_hellomeme_v1_v4_models(server.models_dir)  # v1-v4 folders at the same widths (a few seconds)
    write_clip_l(server.models_dir)
    write_hunyuan_models(server.models_dir, parity_root)
    server.start()
    stage_inputs(server, sorted(data_dir.iterdir()))
    short = load_audio(data_dir / "speech.wav")
    write_wav(server.input_dir / "speech_short.wav", short["waveform"][0, :, : short["sample_rate"]],
              short["sample_rate"])
    yield server
    server.stop()
