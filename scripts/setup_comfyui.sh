#!/usr/bin/env bash
# Prepare a ComfyUI checkout for the integration tests: its own venv with CUDA torch wheels (run with --cpu),
# ComfyUI's requirements, and this pack's requirements.
#   bash scripts/setup_comfyui.sh /path/to/ComfyUI
#   COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/ComfyUI/.venv/bin/python .venv/bin/python -m pytest tests/integration
# Get ComfyUI first, e.g. git clone --branch v0.3.64 https://github.com/comfyanonymous/ComfyUI (and a newer release).
set -euo pipefail
COMFY=${1:?usage: setup_comfyui.sh COMFYUI_DIR}
PACK=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
[ -x "$COMFY/.venv/bin/python" ] || "$PYTHON" -m venv "$COMFY/.venv"
PIP=("$COMFY/.venv/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "torch==2.11.*" "torchvision==0.26.*" "torchaudio==2.11.*"
"${PIP[@]}" install -r "$COMFY/requirements.txt" requests
"${PIP[@]}" install -r "$PACK/requirements.txt" -r "$PACK/tests/requirements.txt" -c "$PACK/tests/constraints.txt"
"$COMFY/.venv/bin/python" "$PACK/install.py"
echo "ComfyUI ready: COMFYUI_PATH=$COMFY COMFYUI_PYTHON=$COMFY/.venv/bin/python"
