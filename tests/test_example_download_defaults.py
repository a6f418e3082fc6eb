"""A fresh install runs the shipped examples with no switch to toggle: every loader node in them may download what it
misses (and finds files users already have first). Offline, the same switch leads to the short missing-files message
(see test_store.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
LOADERS = ("PortraitAnim_FaceDetector", "PortraitAnim_HelloMemeLoader", "PortraitAnim_HelloMemeToolkit",
           "PortraitAnim_MemoLoader")


@pytest.mark.parametrize("path", sorted((WORKFLOWS / "api").glob("*.json")), ids=lambda p: p.stem)
def test_api_examples_let_loaders_download(path):
    nodes = json.loads(path.read_text())
    for node_id, node in nodes.items():
        if node["class_type"] in LOADERS:
            assert node["inputs"].get("download") is True, f"{path.name} node {node_id} ({node['class_type']})"


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.json")), ids=lambda p: p.stem)
def test_ui_examples_match_their_api_twin(path):
    api = json.loads((WORKFLOWS / "api" / path.name).read_text())
    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] in LOADERS:
            bools = [v for v in node["widgets_values"] if isinstance(v, bool)]
            assert bools and bools[-1] is api[str(node["id"])]["inputs"]["download"] is True, (path.name, node["id"])


def test_loader_nodes_default_to_download():
    """The node definitions themselves (read from source: the nodes need ComfyUI to import)."""
    import ast

    root = WORKFLOWS.parent / "nodes"
    found = {}
    for path in root.glob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "Input"
                    and call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value == "download"):
                default = next((k.value.value for k in call.keywords if k.arg == "default"), None)
                found.setdefault(path.name, []).append(default)
    assert found["face.py"] == [True] and found["memo.py"] == [True] and found["hellomeme.py"] == [True, True]
    assert found["models.py"] == [False]  # Model Files checks by default; downloading there is a choice
