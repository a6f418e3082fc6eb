"""Test setup: import the repository root as the package ``portrait_animation`` (the folder name is arbitrary, as it
is under ComfyUI/custom_nodes), and locate the shared data and parity folders."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
DATA = SHARED / "data"
PACKAGE = "portrait_animation"


def _register_package() -> None:
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)


_register_package()
sys.path.insert(0, str(Path(__file__).parent))  # test helpers: `parity`, `helpers`


def pytest_terminal_summary(terminalreporter):
    """Say which parity cases the default selection left out, so nothing is silently skipped."""
    from parity import runner

    if not runner.parity_root().is_dir():
        return
    chosen, left = runner.split_cases(runner.discover())
    if not left:
        return
    counts: dict[str, int] = {}
    for c in left:
        counts[c.family] = counts.get(c.family, 0) + 1
    fams = ", ".join(f"{f} ({n} cases)" for f, n in sorted(counts.items()))
    terminalreporter.write_sep("-", "parity selection")
    done = ", ".join(f"{f} ({'all' if s == '*' else len(s)} components)" for f, s in runner.selection().items())
    terminalreporter.write_line(f"parity: ran {len(chosen)} case(s) of finished parts [{done or 'none yet'}]; "
                                f"left out {len(left)}: {fams}.")
    terminalreporter.write_line("parity: set PARITY_FAMILIES=all (or a comma list) to run them; "
                                "unhandled components fail.")


NO_SHARED = (f"shared folder {SHARED} not found: set SHARED_DIR to the folder holding data/ and parity/ "
             "(sample media and parity cases)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The sample media; tests that need them skip (with the reason shown) on a clone without ../shared."""
    if not DATA.is_dir():
        pytest.skip(NO_SHARED if not SHARED.is_dir() else f"sample media folder {DATA} not found")
    return DATA


@pytest.fixture(scope="session")
def parity_root() -> Path:
    """The parity cases (also the source of the integration tests' stand-in models)."""
    from parity import runner

    root = runner.parity_root()
    if not root.is_dir():
        pytest.skip(NO_SHARED if not SHARED.is_dir() else f"parity folder {root} not found (set PARITY_ROOT)")
    return root


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Without ../shared, a test module that reads its data while being collected (e.g. to build parameters) is
    reported as skipped with the reason, not as a collection error that would stop the whole run."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and not SHARED.is_dir() and isinstance(collector, pytest.Module):
        first = str(report.longrepr).strip().splitlines()[-1] if report.longrepr else ""
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), 0, f"Skipped: {NO_SHARED} ({first.strip()})")


@pytest.fixture(scope="module")
def hellomeme_stand_ins(tmp_path_factory):
    """HelloMeme's v5 stand-in models in the released layouts (from the parity cases' tiny networks), written once
    per test module: ``(models_dir, info)``, info holding the stand-ins' sizes (``text_dim``, ``image_size``...)."""
    from helpers.tiny_models import write_hellomeme_models
    from parity.runner import parity_root

    root = parity_root()
    if not (root / "hellomeme" / "pipeline_v5_video").is_dir():
        pytest.skip(f"HelloMeme parity cases not found under {root} (set SHARED_DIR)")
    models_dir = tmp_path_factory.mktemp("models")
    return models_dir, write_hellomeme_models(models_dir, root)


@pytest.fixture(scope="session")
def hunyuan_stand_ins(tmp_path_factory, parity_root):
    """HunyuanPortrait's stand-in models in the manifest layout (tests/helpers/tiny_models.py), written once per
    session: ``(models_dir, crop size)``; the files are only read."""
    from helpers.tiny_models import write_hunyuan_models

    models_dir = tmp_path_factory.mktemp("hp_models")
    return models_dir, write_hunyuan_models(models_dir, parity_root)["size"]


class HunyuanCase(NamedTuple):
    bundle: Any  # hunyuan_portrait.bundle.HunyuanBundle under a CPU StandaloneRuntime, fp32
    cond: Any  # PortraitConditions of the first HUNYUAN_FRAMES frames of driving_video.mp4
    reference: Any  # torch.Tensor (1, H, W, 3) source_image.png in 0..1


@pytest.fixture(scope="module")
def hunyuan_case(request, hunyuan_stand_ins, data_dir) -> HunyuanCase:
    """HunyuanPortrait as the nodes run it on real media: the stand-in bundle loaded from the store, conditions from
    ``source_image.png`` and the first ``HUNYUAN_FRAMES`` frames of ``driving_video.mp4`` (a module constant of the
    requesting test module, 6 without one). Loaded once per test module (a module may hook the networks)."""
    import numpy as np
    import torch
    from PIL import Image

    from portrait_animation.hunyuan_portrait.bundle import load_bundle
    from portrait_animation.hunyuan_portrait.conditions import portrait_conditions
    from portrait_animation.loaders.store import HubCaches, ModelStore
    from portrait_animation.media.video import read_video
    from portrait_animation.runtime.standalone import StandaloneRuntime

    if not (data_dir / "source_image.png").is_file():
        pytest.skip(f"sample media not found under {data_dir}")
    models_dir, size = hunyuan_stand_ins
    frames = getattr(request.module, "HUNYUAN_FRAMES", 6)
    rt = StandaloneRuntime(device="cpu", show_progress=False)
    bundle = load_bundle(rt, ModelStore.at(models_dir, caches=HubCaches(hf=None, modelscope=None)), dtype="fp32")
    image = np.asarray(Image.open(data_dir / "source_image.png").convert("RGB"), dtype=np.float32) / 255
    reference = torch.from_numpy(image)[None]
    video, fps, audio = read_video(data_dir / "driving_video.mp4", max_frames=frames)
    cond = portrait_conditions(bundle, reference, video, size=size, intensity_chunk=4, fps=float(fps), audio=audio)
    return HunyuanCase(bundle, cond, reference)
