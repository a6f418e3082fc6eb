"""Test setup: import the repository root as the package ``portrait_animation`` (the folder name is arbitrary, as it
is under ComfyUI/custom_nodes), and locate the shared data and parity folders."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

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
