"""No exec/eval anywhere in the pack: the Comfy Registry refuses custom nodes that call them (``comfy node validate``
runs ruff's S102/S307), because a workflow value reaching one is remote code execution on the user's machine.

The scan parses every Python file of the repository (tools, tests and benchmarks too: the registry checks what is
published, not only what ComfyUI imports) and flags calls of the builtins ``exec``, ``eval`` and ``compile`` (the way
to build code for them), also spelled ``builtins.eval`` or fetched with ``getattr(builtins, "eval")``. Methods that
share a name (``model.eval()``, ``re.compile``, ``importlib``'s ``exec_module``) are fine.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANNED = {"exec", "eval", "compile"}
BUILTIN_MODULES = {"builtins", "__builtins__"}
SKIP_DIRS = {"__pycache__", "node_modules", "build", "dist"}


def banned_calls(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, what) for every exec/eval/compile builtin call in ``source``."""
    hits = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in BANNED:
            hits.append((node.lineno, f"{func.id}()"))
        elif (isinstance(func, ast.Attribute) and func.attr in BANNED and isinstance(func.value, ast.Name)
              and func.value.id in BUILTIN_MODULES):
            hits.append((node.lineno, f"{func.value.id}.{func.attr}()"))
        elif (isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in BANNED):
            hits.append((node.lineno, f"getattr(..., {node.args[1].value!r})"))
    return sorted(hits)


def python_sources() -> list[Path]:
    """The repository's own .py files: hidden folders (.venv, .git, caches) and build outputs are not the pack."""
    files = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts[:-1]
        if any(p.startswith(".") or p in SKIP_DIRS for p in parts):
            continue
        files.append(path)
    return sorted(files)


def test_scanner_tells_builtins_from_methods():
    source = (
        "import builtins, re\n"
        "eval('1 + 1')\n"
        "exec(code)\n"
        "model.eval()\n"
        "pattern = re.compile('x')\n"
        "spec.loader.exec_module(module)\n"
        "builtins.exec('pass')\n"
        "getattr(builtins, 'eval')('2')\n"
        "code = compile(text, 'f', 'exec')\n"
        "literal_eval = None\n"
    )
    assert banned_calls(source) == [(2, "eval()"), (3, "exec()"), (7, "builtins.exec()"),
                                    (8, "getattr(..., 'eval')"), (9, "compile()")]


def test_no_exec_or_eval_in_the_pack():
    sources = python_sources()
    assert ROOT / "nodes" / "__init__.py" in sources and ROOT / "tools" / "queue_batch.py" in sources
    hits = [f"{path.relative_to(ROOT)}:{line}: {what}"
            for path in sources for line, what in banned_calls(path.read_text(encoding="utf-8"), str(path))]
    assert not hits, "exec/eval/compile calls (not allowed in a Comfy Registry pack):\n" + "\n".join(hits)
