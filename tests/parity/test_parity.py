"""One test per parity case of the selected families (see runner.py for the selection rules)."""
from __future__ import annotations

import pytest

from parity import runner

runner.load_handlers()
_SELECTED, _LEFT_OUT = runner.split_cases(runner.discover()) if runner.parity_root().is_dir() else ([], [])


def test_parity_root_holds_cases():
    root = runner.parity_root()
    assert root.is_dir(), f"parity root {root} not found (set PARITY_ROOT)"
    assert _SELECTED or _LEFT_OUT, f"parity root {root} holds no case (<family>/<case>/case.json): check PARITY_ROOT"


if _SELECTED:  # an empty selection (PARITY_FAMILIES naming no family with cases): the summary lists what was left out

    @pytest.mark.parity
    @pytest.mark.parametrize("case", _SELECTED, ids=lambda c: c.id)
    def test_parity_case(case):
        problems = runner.run_case(case)
        assert not problems, f"{case.id} ({case.component}):\n  " + "\n  ".join(problems)
