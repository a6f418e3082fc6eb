"""Shared benchmark plumbing: import the pack from the repository, measure peak memory per run in a fresh process."""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "portrait_animation"


def import_pack():
    """Register the repository root as the package ``portrait_animation`` (as tests/conftest.py does)."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    sys.path.insert(0, str(ROOT / "tests"))  # test helpers: small stand-in models
    return sys.modules[PACKAGE]


def peak_host_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb() -> float | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def run_isolated(script: Path, args: list[str]) -> dict:
    """Run ``script --child ARGS`` in a fresh interpreter (so peak memory is per configuration); parse its JSON."""
    out = subprocess.run([sys.executable, str(script), "--child", *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def run_original(family: str, tree: Path, frames: int = 4, latent: int = 16, repeats: int = 5,
                 threads: int = 1) -> dict:
    """The pack's denoiser step beside the original's (``_originals.py``, in a fresh process); the row it prints."""
    args = [family, str(tree), "--frames", str(frames), "--latent", str(latent), "--repeats", str(repeats),
            "--threads", str(threads)]
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("_originals.py")), *args], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"_originals.py {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def comparison_line(row: dict) -> str:
    """One line for a side-by-side row."""
    shape = "x".join(map(str, row.get("unet_input", [])))
    return (f"denoiser step vs the original ({row['step']}, input {shape}, {row['config']}): "
            f"pack {row['pack_s']:.3f} s, "
            f"original {row['original_s']:.3f} s, ratio {row['ratio']:.2f}x (min of {row['repeats']} interleaved; "
            f"max |diff| {row['max_abs_diff']:.1e}, within the parity tolerance)")


def finish_report(family: str, args, report: dict, threads: int = 1) -> dict:
    """The end of every family script: the side-by-side step with the original when ``--original`` is given (into
    ``report["comparison"]``, also printed), then ``--json``."""
    if args.original:
        report["comparison"] = run_original(family, args.original, threads=threads)
        print(comparison_line(report["comparison"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report
