"""The metric nodes' schemas without ComfyUI (a stand-in ``comfy_api.v0_0_2`` records what ``define_schema``
declares): category, a tooltip on every input and output, output nodes with a per-frame FLOAT list, and loading the
module (and declaring the schemas) imports neither OpenCV, MediaPipe nor onnxruntime."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STUB = textwrap.dedent("""
    import importlib.util, sys, types
    spec = importlib.util.spec_from_file_location("portrait_animation", {root!r} + "/__init__.py",
                                                  submodule_search_locations=[{root!r}])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["portrait_animation"] = pkg
    spec.loader.exec_module(pkg)

    class Kind:
        def __init__(self, kind):
            self.kind = kind
        def Input(self, id, **options):
            return {{"kind": self.kind, "id": id, **options}}
        def Output(self, id=None, **options):
            return {{"kind": self.kind, "id": id, **options}}

    class IO(types.ModuleType):
        class ComfyNode:
            pass
        Hidden = types.SimpleNamespace(unique_id="UNIQUE_ID")
        @staticmethod
        def Schema(**fields):
            return fields
        @staticmethod
        def Custom(name):
            return Kind(name)
        def __getattr__(self, name):
            return Kind(name)

    latest = types.ModuleType("comfy_api.v0_0_2")
    latest.io = IO("io")
    latest.ComfyExtension = type("ComfyExtension", (), {{}})
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.v0_0_2 = latest
    sys.modules["comfy_api"] = comfy_api
    sys.modules["comfy_api.v0_0_2"] = latest
""")


def run(code: str) -> str:
    script = STUB.format(root=str(ROOT)) + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_schemas_and_light_import():
    out = run("""
        import json
        from portrait_animation.nodes import metrics
        rows = [n.define_schema() for n in metrics.NODES]
        heavy = sorted(m for m in ("cv2", "mediapipe", "onnxruntime") if m in sys.modules)
        print(json.dumps({"heavy": heavy, "rows": [
            {"id": r["node_id"], "category": r["category"], "output_node": r.get("is_output_node"),
             "description": r["description"],
             "inputs": [[i["id"], i.get("tooltip")] for i in r["inputs"]],
             "outputs": [[o["display_name"], o.get("tooltip"), o.get("is_output_list", False), o["kind"]]
                         for o in r["outputs"]]} for r in rows]}))
    """)
    import json

    data = json.loads(out.strip().splitlines()[-1])
    assert data["heavy"] == [], data["heavy"]
    ids = {r["id"] for r in data["rows"]}
    assert ids == {f"PortraitAnim_{n}Metric" for n in ("Identity", "Pose", "Expression", "Mouth", "Flicker", "Seam",
                                                             "LipSync")}
    for r in data["rows"]:
        assert r["category"] == "Portrait Animation/Metrics" and r["output_node"] and r["description"], r["id"]
        assert all(tip for _, tip in r["inputs"]), r["id"]
        assert [o[0] for o in r["outputs"]] == ["mean", "per_frame", "plot", "summary"], r["id"]
        assert [o[3] for o in r["outputs"]] == ["Float", "Float", "Image", "String"], r["id"]
        assert all(o[1] for o in r["outputs"]) and [o[2] for o in r["outputs"]] == [False, True, False, False]
