"""One test per parity case of the selected families (see runner.py for the selection rules)."""
from __future__ import annotations

import pytest

from parity import runner

runner.load_handlers()
_SELECTED, _LEFT_OUT = runner.split_cases(runner.discover()) if runner.parity_root().is_dir() else ([], [])


def test_parity_root_exists():
    assert runner.parity_root().is_dir(), f"parity root {runner.parity_root()} not found (set PARITY_ROOT)"


if _SELECTED:  # no finished family yet: nothing to parametrize (the summary lists what was left out)

    @pytest.mark.parity
    @pytest.mark.parametrize("case", _SELECTED, ids=lambda c: c.id)
    def test_parity_case(case):
        problems = runner.run_case(case)
        assert not problems, f"{case.id} ({case.component}):\n  " + "\n  ".join(problems)
