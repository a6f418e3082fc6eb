"""Start-up cost of the pack inside ComfyUI: what ComfyUI pays to import it and list its nodes.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python benchmarks/import_time.py [--runs 5]

Each run is a fresh process that first imports what ComfyUI has already imported before it loads custom nodes
(torch, comfy.model_management, comfy_api, folder_paths, nodes), then times the pack's import and
``comfy_entrypoint()`` + ``get_node_list()``, and lists heavy modules the pack pulled in (there should be none).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("mediapipe", "cv2", "diffusers", "transformers", "onnxruntime", "insightface", "scipy", "huggingface_hub")

CHILD = r'''
import asyncio, importlib.util, json, sys, time
sys.argv = ["main.py", "--cpu"]
import comfy.options; comfy.options.enable_args_parsing()
import comfy.cli_args; comfy.cli_args.args.cpu = True
import torch, comfy.model_management, folder_paths, nodes  # what ComfyUI has loaded before custom nodes
from comfy_api.v0_0_2 import io
before = set(sys.modules)
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("pack_under_test", ROOT + "/__init__.py",
                                              submodule_search_locations=[ROOT])
pack = importlib.util.module_from_spec(spec); sys.modules["pack_under_test"] = pack; spec.loader.exec_module(pack)
t1 = time.perf_counter()
ext = asyncio.run(pack.comfy_entrypoint())
node_list = asyncio.run(ext.get_node_list())
for n in node_list:
    n.GET_SCHEMA()
t2 = time.perf_counter()
new = sorted({m.split(".")[0] for m in set(sys.modules) - before})
print(json.dumps({"import_s": t1 - t0, "nodes_s": t2 - t1, "nodes": len(node_list), "new_top_modules": new}))
'''


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    comfy = os.environ.get("COMFYUI_PATH")
    if not comfy:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout and run with its python")
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD.replace("ROOT", repr(str(ROOT)))], cwd=comfy,
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=comfy))
        line = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if not line:
            sys.exit(out.stdout[-2000:] + out.stderr[-3000:])
        runs.append(json.loads(line[-1]))
    total = [r["import_s"] + r["nodes_s"] for r in runs]
    heavy = sorted({m for r in runs for m in r["new_top_modules"] if m in HEAVY})
    print(f"pack import + node list: median {statistics.median(total) * 1000:.0f} ms, max {max(total) * 1000:.0f} ms "
          f"over {len(runs)} runs; {runs[0]['nodes']} nodes")
    print(f"modules first imported by the pack: {', '.join(runs[0]['new_top_modules']) or 'none'}")
    print(f"heavy modules imported: {', '.join(heavy) or 'none'}")
    return 1 if heavy or max(total) > 1.0 else 0


if __name__ == "__main__":
    sys.exit(main())
