"""The pack's node files without ComfyUI: a stand-in ``comfy_api.v0_0_2`` whose ``io`` records what
``define_schema`` declares, and a loader for a single node file that imports nothing else of the package."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

NODES_PACKAGE = "portrait_animation.nodes"


class Kind:
    """Stands for ``io.Int``, ``io.Custom("X")``...: ``Input``/``Output`` return what they were given."""

    def __init__(self, kind: str):
        self.kind = kind

    def Input(self, id, **options):  # noqa: N802 (ComfyUI's name)
        return {"kind": self.kind, "id": id, **options}

    def Output(self, id=None, **options):  # noqa: N802
        return {"kind": self.kind, "id": id, **options}

    def __getattr__(self, name):  # enum members such as io.UploadType.video
        return f"{self.kind}.{name}"


class StubIO(types.ModuleType):
    class ComfyNode:
        pass

    Hidden = types.SimpleNamespace(unique_id="UNIQUE_ID")

    @staticmethod
    def Schema(**fields):  # noqa: N802
        return fields

    @staticmethod
    def Custom(name):  # noqa: N802
        return Kind(name)

    def __getattr__(self, name):
        return Kind(name)


def install_stub_comfy_api(mp) -> types.ModuleType:
    """Under the MonkeyPatch ``mp``: the stand-in ``comfy_api.v0_0_2`` (returned; a VIDEO is built as its components
    dict), and the pack's node modules forgotten so the next import builds them on it (the package's ``nodes``
    attribute is restored by ``mp.undo()``)."""
    latest = types.ModuleType("comfy_api.v0_0_2")
    latest.io = StubIO("io")
    latest.ComfyExtension = type("ComfyExtension", (), {})
    latest.InputImpl = types.SimpleNamespace(VideoFromComponents=lambda components: components)
    latest.Types = types.SimpleNamespace(VideoComponents=lambda **fields: fields)
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.v0_0_2 = latest
    mp.setitem(sys.modules, "comfy_api", comfy_api)
    mp.setitem(sys.modules, "comfy_api.v0_0_2", latest)
    for name in [m for m in sys.modules if m.startswith(NODES_PACKAGE)]:
        mp.delitem(sys.modules, name)
    mp.setattr(sys.modules["portrait_animation"], "nodes", None, raising=False)
    return latest


def forget_stub_nodes() -> None:
    """Drop the node modules built on the stand-in, so nothing built on it outlives the test."""
    for name in [m for m in sys.modules if m.startswith(NODES_PACKAGE)]:
        del sys.modules[name]


def load_file_module(path: Path, name: str):
    """One Python file as module ``name`` on its own (``nodes/replacements.py``: the nodes package needs ComfyUI)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
