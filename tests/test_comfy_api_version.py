"""The nodes use a pinned ComfyUI API version (``comfy_api.v0_0_2``, present in every supported ComfyUI from 0.3.64 to
0.33), never ``comfy_api.latest``, whose contents move with each ComfyUI release."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_DIRS = ("nodes", "runtime", "loaders", "face", "media", "memo", "sk_attention", "motion", "audio", "benchmarks")


def comfy_api_imports(path: Path) -> list[tuple[int, str]]:
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("comfy_api"):
            hits.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            hits.extend((node.lineno, a.name) for a in node.names if a.name.startswith("comfy_api"))
    return hits


def test_pack_imports_only_the_pinned_comfy_api_version():
    seen, wrong = [], []
    for folder in PACK_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, module in comfy_api_imports(path):
                seen.append(module)
                if module != "comfy_api.v0_0_2":
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "use comfy_api.v0_0_2:\n" + "\n".join(wrong)
    assert "comfy_api.v0_0_2" in seen, "the nodes import no ComfyUI API at all?"
