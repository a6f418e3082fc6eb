#!/usr/bin/env bash
# Prepare real ComfyUI installs for the integration and browser tests, each in its own venv.
#
#   bash scripts/setup_comfyui.sh                 # every archive in $SHARED_DIR/comfyui (0.3.64 and 0.33.0)
#   bash scripts/setup_comfyui.sh 0.33.0          # one version from its archive
#   bash scripts/setup_comfyui.sh /path/to/ComfyUI  # an existing checkout (its venv goes to .venv inside it)
#
# Archives unpack to $COMFYUI_HOME/ComfyUI-<version>/ (default ~/.cache/portrait-animation/comfyui) with the venv in
# ComfyUI-<version>/.venv. The tests find every prepared install there (or take COMFYUI_PATH, a ':'-separated list).
# The newest MediaPipe goes to $COMFYUI_HOME/overlays/mediapipe-<version> for the fresh-install test (see below).
# A finished install is marked with .pa-ready holding a stamp of what it was built from (the archive, ComfyUI's and
# the pack's requirements, the torch trio, the Python version); a matching stamp skips it, so CI reuses the installs
# (they live outside the clone) and pip reuses its download cache for everything else.
set -euo pipefail
PACK=$(cd "$(dirname "$0")/.." && pwd)
SHARED_DIR=${SHARED_DIR:-$(dirname "$PACK")/shared}
COMFYUI_HOME=${COMFYUI_HOME:-$HOME/.cache/portrait-animation/comfyui}
PYTHON=${PYTHON:-python3}
# ComfyUI's audio nodes need torchaudio built for the same torch: pin the matching trio (torchaudio on PyPI stops
# at 2.11, and 2.11.1 does not load with torch 2.11.0).
TORCH_TRIO=${TORCH_TRIO:-"torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1"}

SETUP_VERSION=2  # bump when the steps below change what an install contains

setup_tree() {  # $1: ComfyUI folder, $2: the archive it came from (optional)
  local comfy=$1 archive=${2:-} py="$1/.venv/bin/python"
  local stamp
  stamp=$( { echo "$SETUP_VERSION $TORCH_TRIO $("$PYTHON" -c 'import sys; print(sys.version_info[:2])')"
             [ -z "$archive" ] || sha256sum < "$archive"
             cat "$comfy/requirements.txt" "$PACK/requirements.txt" "$PACK/tests/requirements.txt" \
                 "$PACK/tests/constraints.txt"; } | sha256sum | cut -c1-16)
  if [ -f "$comfy/.pa-ready" ] && [ "$(cat "$comfy/.pa-ready")" = "$stamp" ]; then
    echo "ComfyUI ready (cached): $comfy"; return
  fi
  [ -x "$py" ] || "$PYTHON" -m venv "$comfy/.venv"
  local pip=("$py" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --upgrade pip
  # shellcheck disable=SC2086
  "${pip[@]}" install $TORCH_TRIO
  "${pip[@]}" install -r "$comfy/requirements.txt" requests -c <(echo "$TORCH_TRIO" | tr ' ' '\n')
  "${pip[@]}" install -r "$PACK/requirements.txt" -r "$PACK/tests/requirements.txt" -c "$PACK/tests/constraints.txt" \
      -c <(echo "$TORCH_TRIO" | tr ' ' '\n')
  "$py" "$PACK/install.py"
  (cd "$comfy" && "$py" -c "import torch, torchaudio, comfy_api.latest")
  echo "$stamp" > "$comfy/.pa-ready"
  echo "ComfyUI ready: $comfy"
}

# The newest MediaPipe, which carries no face models, for the fresh-install test: installed once into an overlay folder
# that the test puts first on the server's PYTHONPATH (the venvs keep 0.10.21, whose bundled models the offline tests
# use). Pure --no-deps install: the venvs already hold what it needs but absl-py/flatbuffers at its versions.
MEDIAPIPE_CURRENT=${MEDIAPIPE_CURRENT:-1.2.3}
setup_mediapipe_overlay() {
  local overlay="$COMFYUI_HOME/overlays/mediapipe-$MEDIAPIPE_CURRENT"
  [ -f "$overlay/.pa-ready" ] && { echo "MediaPipe $MEDIAPIPE_CURRENT overlay ready (cached): $overlay"; return; }
  rm -rf "$overlay"
  "$PYTHON" -m pip --disable-pip-version-check -q install --target "$overlay" --no-deps \
      "mediapipe==$MEDIAPIPE_CURRENT" 'absl-py~=2.3' 'flatbuffers~=25.9'
  touch "$overlay/.pa-ready"
  echo "MediaPipe $MEDIAPIPE_CURRENT overlay ready: $overlay"
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for a in "$SHARED_DIR"/comfyui/ComfyUI-*.tar.gz; do
    v=$(basename "$a" .tar.gz); targets+=("${v#ComfyUI-}")
  done
fi
[ ${#targets[@]} -gt 0 ] || { echo "no ComfyUI archives in $SHARED_DIR/comfyui" >&2; exit 1; }
for t in "${targets[@]}"; do
  if [ -d "$t" ]; then
    setup_tree "$(cd "$t" && pwd)"
  else
    archive="$SHARED_DIR/comfyui/ComfyUI-$t.tar.gz"
    [ -f "$archive" ] || { echo "no archive $archive" >&2; exit 1; }
    mkdir -p "$COMFYUI_HOME"
    tree="$COMFYUI_HOME/ComfyUI-$t"
    # (re)unpack when the tree is missing or came from another archive; the venv inside is kept
    sum=$(sha256sum < "$archive" | cut -c1-16)
    if [ ! -f "$tree/main.py" ] || [ "$(cat "$tree/.pa-archive" 2>/dev/null)" != "$sum" ]; then
      tar -xzf "$archive" -C "$COMFYUI_HOME"
      echo "$sum" > "$tree/.pa-archive"
    fi
    setup_tree "$tree" "$archive"
  fi
done
setup_mediapipe_overlay
