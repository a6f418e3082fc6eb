"""ComfyUI adapter: a thin layer of V3 nodes over the core packages.

Each module listed in ``NODE_MODULES`` defines ``NODES`` (a list of ``io.ComfyNode`` classes). A module that fails to
import (a missing optional dependency) is logged and skipped, so one broken feature never hides the whole pack.
"""
from __future__ import annotations

import importlib
import logging

from comfy_api.v0_0_2 import ComfyExtension, io

from ..loaders.paths import register_comfy_folders
from ..media.samples import install_samples
from .replacements import register_replacements

log = logging.getLogger("portrait_animation")

NODE_MODULES = ("models", "speed", "resume", "identity_guard", "face", "media", "hellomeme", "memo", "hunyuan_portrait",
                "metrics", "preflight")


class PortraitAnimationExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_comfy_folders()
        import folder_paths  # ComfyUI's module: imported here so the node modules load under test stand-ins

        install_samples(folder_paths.get_input_directory())  # the example workflows' inputs, where absent
        nodes: list[type[io.ComfyNode]] = []
        for name in NODE_MODULES:
            try:
                module = importlib.import_module(f".{name}", __name__)
            except Exception as e:  # keep the rest of the pack usable
                log.error("Portrait Animation: nodes in %s are unavailable: %s", name, e)
                continue
            nodes.extend(module.NODES)
        await register_replacements({node.GET_SCHEMA().node_id for node in nodes})
        return nodes
