#!/usr/bin/env bash
# Create .venv with everything the test suite needs (CPU only, no model weights): the pack's requirements, pytest,
# and Playwright's Python client for the browser test (it drives the system Chromium, `apt-get install chromium`;
# Playwright's own browser download, `playwright install`, is never used).
#   bash scripts/setup_test_env.sh            then   .venv/bin/python -m pytest
# TORCH_SPEC overrides the torch requirement of the test venv (default: the CPU build torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" install "$TORCH_SPEC"
"${PIP[@]}" install -r requirements.txt -r tests/requirements.txt -c tests/constraints.txt playwright
.venv/bin/python - <<'PY'
import torch, numpy, mediapipe, av, playwright
print(f"test env ready: torch {torch.__version__}, numpy {numpy.__version__}, mediapipe {mediapipe.__version__}, av {av.__version__}")
PY
