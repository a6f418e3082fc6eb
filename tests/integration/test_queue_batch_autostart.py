"""tools/queue_batch.py without --server against real ComfyUI installs: it starts the ComfyUI it belongs to, runs the
shipped face crop / paste-back example, and stops it.

Both ways of finding the install are exercised: the pack inside ``<ComfyUI>/custom_nodes/<pack>`` (a throw-away
ComfyUI folder made of symlinks to the real install's entries plus its own ``custom_nodes/`` holding a symlink to the
repository, as after a user's clone) and ``COMFYUI_PATH`` naming the real install. Every run passes
``--comfy-args --base-directory <tmp>`` so that uploads, outputs and the user folder stay out of the shared install.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = Path("workflows") / "api" / "Face crop and paste back.json"  # relative to the pack
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OWN_FOLDERS = {"custom_nodes", "input", "output", "temp", "user", "models"}


def symlinked_comfyui(install: Path, where: Path) -> Path:
    """A ComfyUI folder whose entries are symlinks to ``install``'s, except its own custom_nodes/ (with the pack) and
    data folders. ComfyUI finds its own files through the real paths, so the runs add --base-directory."""
    comfy = where / "ComfyUI"
    comfy.mkdir()
    for entry in install.iterdir():
        if entry.name not in OWN_FOLDERS:
            (comfy / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name in OWN_FOLDERS:
        (comfy / name).mkdir()
    (comfy / "custom_nodes" / "portrait_animation_pack").symlink_to(ROOT, target_is_directory=True)
    return comfy


def run(tool: Path, base: Path, cwd: Path, env: dict, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    cmd = [sys.executable, str(tool), str(ROOT / EXAMPLE), "--media", "Portrait.image", str(base / "harris.jpg"),
           "--out", "out", "--summary", "summary.json", "--cpu", "--timeout", "600", "--start-timeout", "300",
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd, env=env)
    log = cwd / "out" / "comfyui_server.log"
    detail = (f"\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}\n--- server log\n"
              f"{log.read_text(errors='replace')[-3000:] if log.exists() else '(none)'}")
    return proc, detail


def check_run(proc, detail: str, cwd: Path, python: Path) -> None:
    assert proc.returncode == 0, detail
    (job,) = json.loads((cwd / "summary.json").read_text())["jobs"]
    assert job["status"] == "success" and job["outputs"], detail
    for name in job["outputs"]:
        assert (cwd / name).read_bytes()[:8] == PNG_MAGIC, name
    log = (cwd / "out" / "comfyui_server.log").resolve()
    assert f"with {python} (log: {log})" in proc.stdout, detail
    assert "To see the GUI go to" in log.read_text(errors="replace"), detail  # ComfyUI's own start-up line
    url = re.search(r"on (http://127\.0\.0\.1:\d+) with", proc.stdout).group(1)
    assert "stopping ComfyUI" in proc.stdout, detail
    try:
        urllib.request.urlopen(f"{url}/system_stats", timeout=5)
        raise AssertionError(f"the server on {url} still answers after the tool finished{detail}")
    except (urllib.error.URLError, ConnectionError):
        pass


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "COMFYUI_PYTHON")}
    return {**env, **extra}


def test_pack_inside_custom_nodes_starts_its_comfyui(comfy_install, data_dir, tmp_path):
    comfy = symlinked_comfyui(comfy_install, tmp_path)
    tool = comfy / "custom_nodes" / "portrait_animation_pack" / "tools" / "queue_batch.py"
    work = tmp_path / "work"
    work.mkdir()
    proc, detail = run(tool, data_dir, work, clean_env(), "--comfy-args", "--base-directory", str(comfy))
    venv_python = comfy / ".venv" / "bin" / "python"
    check_run(proc, detail, work, venv_python if venv_python.exists() else Path(sys.executable))
    assert f"starting ComfyUI {comfy} " in proc.stdout, detail
    assert any((comfy / "input").iterdir()), "the upload did not land in the started server's input folder"


def test_comfyui_path_names_the_install(comfy_install, data_dir, tmp_path):
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "portrait_animation_pack").symlink_to(ROOT, target_is_directory=True)
    python = comfy_install / ".venv" / "bin" / "python"
    python = python if python.exists() else Path(sys.executable)
    work = tmp_path / "work"
    work.mkdir()
    proc, detail = run(ROOT / "tools" / "queue_batch.py", data_dir, work,
                       clean_env(COMFYUI_PATH=str(comfy_install), COMFYUI_PYTHON=str(python)),
                       "--comfy-args", "--base-directory", str(base))
    check_run(proc, detail, work, python)
    assert f"starting ComfyUI {comfy_install} " in proc.stdout, detail


def test_a_comfyui_that_refuses_to_start_is_reported(comfy_install, data_dir, tmp_path):
    proc, detail = run(ROOT / "tools" / "queue_batch.py", data_dir, tmp_path,
                       clean_env(COMFYUI_PATH=str(comfy_install)), "--comfy-args", "--no-such-comfy-option")
    assert proc.returncode == 2, detail
    assert "before it answered" in proc.stderr and "--no-such-comfy-option" in proc.stderr, detail
