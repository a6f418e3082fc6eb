"""Import rules of the pack, read from the source with ``ast`` (nothing is imported):

* the shared folders never import a model package (``memo/``, ``sk_attention/``, ``hunyuan_portrait/``);
* no import cycle between the pack's top-level packages (no two packages import each other, directly or round a
  longer loop).

Every ``import`` / ``from ... import`` counts, wherever it stands (module level, inside functions, under
``TYPE_CHECKING``). Relative imports are resolved against the file's package; absolute imports of
``portrait_animation`` (the name the tests give the repository root) too.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "portrait_animation"

SHARED = ("layers", "runtime", "loaders", "face", "media", "motion", "audio")
MODELS = ("memo", "sk_attention", "hunyuan_portrait",
          "metrics")  # metrics: measures outputs with the model packages' networks (ArcFace, head pose)
# adapters, entry points and tooling: may import anything (nothing in the pack imports them)
OTHER = ("nodes", "tests", "tools", "benchmarks", "scripts", "web", "workflows")
SKIPPED_DIRS = {"__pycache__", "node_modules"}


@dataclass(frozen=True)
class Edge:
    """``source`` (file, relative to the root) imports the pack module ``target`` (dotted, relative to the root)."""

    source: Path
    line: int
    target: str

    @property
    def from_package(self) -> str:
        return top_package(self.source)

    @property
    def to_package(self) -> str:
        return self.target.split(".", 1)[0]

    def __str__(self) -> str:
        return f"{self.source.as_posix()}:{self.line} imports {self.target}"


def top_package(path: Path) -> str:
    """The top-level folder of a file relative to the root ('' for files at the root)."""
    return path.parts[0] if len(path.parts) > 1 else ""


def python_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in rel.parts[:-1]):
            continue
        yield rel


def _module_of(rel: Path) -> list[str]:
    """Dotted parts of the module a file defines (a package's ``__init__`` is the package itself)."""
    parts = list(rel.with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _is_module(root: Path, dotted: list[str]) -> bool:
    if not dotted:
        return True
    base = root.joinpath(*dotted)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(root: Path, rel: Path, node: ast.AST) -> list[str]:
    """Pack modules (dotted, relative to the root) that one import statement names; non-pack imports give none."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1:
                out.append(".".join(parts[1:]))
        return out
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        package = _module_of(rel)
        if rel.name != "__init__.py":
            package = package[:-1]  # a module's package
        if node.level - 1 > len(package):
            raise AssertionError(f"{rel.as_posix()}:{node.lineno}: relative import above the repository root")
        base = package[:len(package) - (node.level - 1)]
        return _targets(root, base + (node.module.split(".") if node.module else []), node.names)
    parts = (node.module or "").split(".")
    return _targets(root, parts[1:], node.names) if parts[0] == PACKAGE else []


def _targets(root: Path, base: list[str], names) -> list[str]:
    # ``from X import name``: the submodule X.name when there is one, else X itself
    out = []
    for alias in names:
        sub = base + [alias.name]
        if alias.name != "*" and _is_module(root, sub):
            out.append(".".join(sub))
        elif base:
            out.append(".".join(base))
    return out


def import_edges(root: Path = ROOT) -> list[Edge]:
    """Every import of a pack module by a file under ``root``, with its line."""
    edges = []
    for rel in python_files(root):
        tree = ast.parse((root / rel).read_text(encoding="utf-8"), filename=str(rel))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.extend(Edge(rel, node.lineno, target) for target in dict.fromkeys(_resolve(root, rel, node)))
    return sorted(edges, key=lambda e: (e.source.as_posix(), e.line, e.target))


def shared_to_model(edges: list[Edge]) -> list[str]:
    """Imports of a model package by a shared folder."""
    return [str(e) for e in edges if e.from_package in SHARED and e.to_package in MODELS]


def package_cycles(edges: list[Edge]) -> list[str]:
    """One line per cycle between top-level packages, each step with a file and line that makes it."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        a, b = e.from_package, e.to_package
        if a and b and a != b:
            graph.setdefault(a, {}).setdefault(b, e)
    cycles, seen = [], set()
    for start in sorted(graph):
        # shortest path back to ``start`` (breadth first), so each cycle is reported by its shortest loop
        paths = {start: []}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for node in frontier:
                for succ in sorted(graph.get(node, {})):
                    step = paths[node] + [graph[node][succ]]
                    if succ == start:
                        found = step
                        break
                    if succ not in paths:
                        paths[succ] = step
                        nxt.append(succ)
                if found:
                    break
            frontier = nxt
        if found:
            members = frozenset(e.from_package for e in found)
            if members not in seen:
                seen.add(members)
                loop = " -> ".join([e.from_package for e in found] + [start])
                cycles.append(f"{loop}: " + "; ".join(str(e) for e in found))
    return cycles


# ---- the pack ---------------------------------------------------------------------------------------------------------
def test_every_top_level_package_is_classified():
    packages = {top_package(rel) for rel in python_files(ROOT)} - {""}
    unknown = sorted(packages - set(SHARED) - set(MODELS) - set(OTHER))
    assert not unknown, f"top-level folders with Python files not classified in tests/test_architecture.py: {unknown}"


def test_shared_folders_never_import_a_model_package():
    bad = shared_to_model(import_edges())
    assert not bad, "shared folders import model packages:\n" + "\n".join(bad)


def test_no_import_cycle_between_packages():
    cycles = package_cycles(import_edges())
    assert not cycles, "import cycles between packages:\n" + "\n".join(cycles)


def test_the_checker_sees_the_pack_imports():
    """The resolver finds the imports the pack is known to make (relative, parent-relative, lazy, ``from .. import``)."""
    edges = {(e.source.as_posix(), e.target) for e in import_edges()}
    assert ("memo/reference_net.py", "layers.attention") in edges
    assert ("memo/reference_net.py", "memo.layers") in edges
    assert ("nodes/media.py", "media") in edges  # from .. import media
    assert ("motion/hellomeme/toolkit.py", "runtime.onnx") in edges
    assert ("motion/hellomeme/toolkit.py", "loaders.store") in edges  # inside a function


# ---- the checker on a made-up tree -------------------------------------------------------------------------------------
def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_checker_reports_file_and_line(tmp_path):
    for pkg in ("motion", "motion/sub", "memo", "audio", "sk_attention"):
        _write(tmp_path, f"{pkg}/__init__.py")
    _write(tmp_path, "memo/layers.py", "X = 1\n")
    _write(tmp_path, "memo/net.py", "from ..audio import mod\n")
    _write(tmp_path, "motion/sub/geo.py", "import os\n\n\ndef f():\n    from ...memo.layers import X\n")
    _write(tmp_path, "audio/mod.py", "from portrait_animation.memo import net\nfrom . import other\n")
    _write(tmp_path, "audio/other.py", "")
    _write(tmp_path, "sk_attention/a.py", "from ..motion.sub import geo\n")

    edges = import_edges(tmp_path)
    assert shared_to_model(edges) == ["audio/mod.py:1 imports memo.net", "motion/sub/geo.py:5 imports memo.layers"]
    cycles = package_cycles(edges)
    assert cycles == ["audio -> memo -> audio: audio/mod.py:1 imports memo.net; memo/net.py:1 imports audio.mod"]


def test_checker_finds_longer_cycles(tmp_path):
    for pkg in ("a", "b", "c"):
        _write(tmp_path, f"{pkg}/__init__.py")
    _write(tmp_path, "a/x.py", "from ..b import y\n")
    _write(tmp_path, "b/y.py", "from ..c.z import Z\n")
    _write(tmp_path, "c/z.py", "Z = 1\n\n\ndef g():\n    from ..a import x\n")
    assert package_cycles(import_edges(tmp_path)) == [
        "a -> b -> c -> a: a/x.py:1 imports b.y; b/y.py:1 imports c.z; c/z.py:5 imports a.x"]
