"""Integration tests against a real ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON for its venv)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.loopback_hub import LoopbackHub
from helpers.tiny_clip import widen_text_dim, write_clip_l
from helpers.tiny_models import write_hellomeme_models, write_memo_models
from parity.runner import DEFAULT_PARITY_ROOT
from portrait_animation.media.audio import load_audio

from .comfy import write_wav

from .comfy import ComfyServer, stage_inputs

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
SKIP_REASON = ("COMFYUI_PATH is not set: integration tests need a ComfyUI checkout with its venv "
               "(see README, 'Running the tests')")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
            if not COMFYUI_PATH:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def loopback_hub():
    """A Hugging Face look-alike on 127.0.0.1; the ComfyUI server downloads from it (HF_ENDPOINT)."""
    hub = LoopbackHub()
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, data_dir, loopback_hub):
    base = f"http://127.0.0.1:{loopback_hub.server.server_address[1]}"
    server = ComfyServer(Path(COMFYUI_PATH), tmp_path_factory.mktemp("comfy"), env={"HF_ENDPOINT": base})
    write_memo_models(server.models_dir, DEFAULT_PARITY_ROOT)  # small stand-ins, laid out like the real files
    hm = write_hellomeme_models(server.models_dir, DEFAULT_PARITY_ROOT)
    widen_text_dim(hm["hellomeme"] / "stable-diffusion-v1-5" / "unet")  # CONDITIONING from a real-shaped CLIP-L
    write_clip_l(server.models_dir)
    server.start()
    stage_inputs(server, sorted(data_dir.iterdir()))
    short = load_audio(data_dir / "speech.wav")
    write_wav(server.input_dir / "speech_short.wav", short["waveform"][0, :, : short["sample_rate"]],
              short["sample_rate"])
    yield server
    server.stop()
