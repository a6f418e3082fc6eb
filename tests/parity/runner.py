"""Data-driven parity runner.

Every case folder under the parity root (``<root>/<family>/<case>/case.json``) is one test. The runner materialises
the case's checkpoint files into a temporary folder (deleted after the case: some cases write over 1 GB), calls the
handler registered for ``case.json["component"]``, and compares every output with ``expected.safetensors`` at the
case's tolerance. A component without a handler fails; it never skips.

Handlers live in ``tests/parity/handlers/<family>.py`` and register with :func:`handler`. They load the case's files
through the pack's own loaders and run the pack's components, exactly as a user's download would be used.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PARITY_ROOT = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "parity"
FAMILIES = ("hellomeme", "memo", "hunyuan_portrait")

# What the default test command runs: a family mapped to "*" (every component, including ones not seen yet) or to
# the component ids whose implementation is finished. Cases outside it are left out and listed in the test summary
# until their model issue lands; PARITY_FAMILIES=all (or a comma list of families) runs them, and an unhandled
# component then fails.
DONE: dict[str, str | tuple[str, ...]] = {
    # every family is finished: every case under the root runs, including components not seen yet (they fail)
    "memo": "*",
    "hellomeme": "*",  # v1-v5c: modules, adapters, control nets, denoisers, pipelines, pre-processing geometry
    "hunyuan_portrait": "*",
}

Handler = Callable[["Case", Path], dict]
HANDLERS: dict[str, Handler] = {}


def handler(*components: str):
    """Register a function ``fn(case, checkpoint_dir) -> {output name: tensor}`` for these component ids."""

    def register(fn: Handler) -> Handler:
        for c in components:
            if c in HANDLERS:
                raise ValueError(f"two parity handlers for {c}")
            HANDLERS[c] = fn
        return fn

    return register


def load_handlers() -> None:
    for family in FAMILIES:
        here = Path(__file__).parent / "handlers"
        if (here / f"{family}.py").is_file() or (here / family / "__init__.py").is_file():
            importlib.import_module(f"parity.handlers.{family}")


@dataclass
class Case:
    path: Path
    spec: dict

    @property
    def family(self) -> str:
        return self.spec["family"]

    @property
    def component(self) -> str:
        return self.spec["component"]

    @property
    def id(self) -> str:
        return f"{self.family}/{self.path.name}"

    @property
    def settings(self) -> dict:
        return self.spec.get("settings", {})

    def inputs(self) -> dict[str, torch.Tensor]:
        return _load_tensors(self.path / "inputs.safetensors")

    def expected(self) -> dict[str, torch.Tensor]:
        return _load_tensors(self.path / "expected.safetensors")

    def file(self, rel: str) -> Path:
        return self.path / "files" / rel


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path)) if path.is_file() else {}


def parity_root() -> Path:
    return Path(os.environ.get("PARITY_ROOT", DEFAULT_PARITY_ROOT))


def discover(root: Path | None = None) -> list[Case]:
    root = Path(root or parity_root())
    cases = []
    for spec_path in sorted(root.glob("*/*/case.json")):
        spec = json.loads(spec_path.read_text())
        if "family" not in spec or "component" not in spec:
            raise ValueError(f"{spec_path} lacks 'family' or 'component'")
        cases.append(Case(spec_path.parent, spec))
    return cases


def selection() -> dict[str, str | tuple[str, ...]]:
    """family -> "*" or component ids, from PARITY_FAMILIES ("all" or "memo,hellomeme") or the DONE default."""
    value = os.environ.get("PARITY_FAMILIES", "").strip()
    if value.lower() == "all":
        return {"*": "*"}
    if value:
        return {v.strip(): "*" for v in value.split(",") if v.strip()}
    return dict(DONE)


def is_selected(case: Case, chosen: dict) -> bool:
    scope = chosen.get("*") or chosen.get(case.family)
    return scope == "*" or (scope is not None and case.component in scope)


def split_cases(cases: list[Case]) -> tuple[list[Case], list[Case]]:
    """(selected, left out) under the current selection."""
    chosen = selection()
    picked = [c for c in cases if is_selected(c, chosen)]
    return picked, [c for c in cases if c not in picked]


def _materialize_module(root: Path):
    spec = importlib.util.spec_from_file_location("parity_materialize", root / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(actual: dict, expected: dict, tolerance: dict) -> list[str]:
    """Problems found comparing outputs (empty when everything is within tolerance)."""
    problems = []
    # per-output tolerances: under "per_output" (MEMO, HelloMeme) or as the case's top-level entries (HunyuanPortrait)
    per_output = tolerance.get("per_output") or {k: v for k, v in tolerance.items() if isinstance(v, dict)}
    for name, exp in expected.items():
        if name not in actual:
            problems.append(f"{name}: not produced")
            continue
        act = actual[name]
        if not isinstance(act, torch.Tensor):
            act = torch.as_tensor(act)
        act = act.detach().cpu()
        if tuple(act.shape) != tuple(exp.shape):
            problems.append(f"{name}: shape {tuple(act.shape)} != expected {tuple(exp.shape)}")
            continue
        tol = per_output.get(name, {})
        if not exp.is_floating_point():  # exact, unless the case states an atol (uint8 images: one grey level)
            int_atol = int(tol.get("atol", 0))
            bad = ((act.long() - exp.long()).abs() > int_atol).sum().item() if exp.dtype != torch.bool else (
                act.to(exp.dtype) != exp).sum().item()
            if bad:
                problems.append(f"{name}: {bad} of {exp.numel()} integer values differ by more than {int_atol}")
            continue
        atol = float(tol.get("atol", tolerance.get("atol", 0.0)))
        rtol = float(tol.get("rtol", tolerance.get("rtol", 0.0)))
        a64, e64 = act.double(), exp.double()
        err = (a64 - e64).abs()
        limit = atol + rtol * e64.abs()
        over = err > limit
        if torch.isnan(a64).any() and not torch.isnan(e64).any():
            problems.append(f"{name}: NaN in output")
        elif over.any():
            problems.append(f"{name}: {int(over.sum())} of {exp.numel()} values exceed atol={atol:g} rtol={rtol:g} "
                            f"(max abs error {err.max().item():.3g})")
    return problems


def run_case(case: Case, root: Path | None = None) -> list[str]:
    """Materialise, run and compare one case. Returns problems (empty = pass)."""
    fn = HANDLERS.get(case.component)
    if fn is None:
        return [f"no handler for component {case.component!r} (case {case.id}): the pack cannot run this case yet"]
    root = Path(root or parity_root())
    tmp = Path(tempfile.mkdtemp(prefix="parity-"))
    try:
        weights = case.path / "weights.json"
        if weights.is_file():
            _materialize_module(root).materialize(weights, tmp)
        with torch.inference_mode():
            actual = fn(case, tmp)
        return compare(actual, case.expected(), case.spec.get("tolerance", {}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
