"""Integration tests against a real ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON for its venv)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.loopback_hub import LoopbackHub

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
    server.start()
    stage_inputs(server, sorted(data_dir.iterdir()))
    yield server
    server.stop()
