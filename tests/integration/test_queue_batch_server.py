"""tools/queue_batch.py against a real ComfyUI server: uploads, queueing, progress (WebSocket and polling), downloads
and per-job failures, on a core-nodes workflow and on the pack's face crop / paste-back workflow."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "queue_batch.py"
FACE_WORKFLOW = ROOT / "workflows" / "api" / "Face crop and paste back.json"
MEDIA = ("harris.jpg", "dicaprio.jpg", "source_image.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

INVERT_WORKFLOW = {
    "10": {"class_type": "LoadImage", "inputs": {"image": "harris.jpg"}, "_meta": {"title": "Load Image"}},
    "11": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}, "_meta": {"title": "Invert Image"}},
    "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "queue_batch"},
           "_meta": {"title": "Save Image"}},
}


def run_tool(server, workflow: Path, tmp_path: Path, *argv: str, timeout: float = 600):
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    cmd = [sys.executable, str(TOOL), str(workflow), "--server", server.url, "--out", str(out),
           "--summary", str(summary), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    detail = f"\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}\n--- server\n{server.log_tail()}"
    assert summary.exists(), f"no summary written (exit {proc.returncode}){detail}"
    jobs = {j["name"]: j for j in json.loads(summary.read_text())["jobs"]}
    return proc, jobs, out, detail


def check_downloads(server, job: dict, dest: Path, detail: str) -> None:
    assert job["status"] == "success" and job["error"] is None, f"{job}{detail}"
    assert job["outputs"], f"job {job['name']} downloaded nothing{detail}"
    for name in job["outputs"]:
        path = Path(name)
        assert dest in path.parents and path.is_file(), path
        saved = server.output_dir / path.relative_to(dest)
        if saved.is_file():  # type "output": byte-identical to what the server saved
            assert path.read_bytes() == saved.read_bytes()
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_invert_batch_with_one_bad_job(comfy_server, data_dir, tmp_path, transport):
    workflow = tmp_path / "invert_api.json"
    workflow.write_text(json.dumps(INVERT_WORKFLOW))
    (tmp_path / "corrupt.png").write_text("not an image")  # uploads and validates, then LoadImage raises
    argv = ["--media", "Load Image.image", *(str(data_dir / m) for m in MEDIA), "no_such_image.png", "corrupt.png",
            "--set", f"Save Image.filename_prefix=qb_{transport}", "--subfolder", f"qb_{transport}",
            "--max-in-flight", "2", "--timeout", "300"]
    proc, jobs, out, detail = run_tool(comfy_server, workflow, tmp_path,
                                       *argv, *(["--no-websocket"] if transport == "polling" else []))
    assert proc.returncode == 1, f"expected exit 1 (two jobs fail){detail}"
    assert list(jobs) == ["harris", "dicaprio", "source_image", "no_such_image", "corrupt"], detail

    rejected = jobs["no_such_image"]  # not a local file, not on the server: 400 from /prompt with node_errors
    assert rejected["status"] == "failed" and rejected["prompt_id"] is None, rejected
    assert "node 10 (LoadImage)" in rejected["error"] and "no_such_image.png" in rejected["error"], rejected
    crashed = jobs["corrupt"]  # queued, then execution_error
    assert crashed["status"] == "failed" and crashed["prompt_id"] and not crashed["outputs"], crashed
    assert crashed["error"].startswith("execution error in node 10 (LoadImage)"), crashed

    for media in MEDIA:
        job = jobs[Path(media).stem]
        check_downloads(comfy_server, job, out / job["name"], detail)
        assert len(job["outputs"]) == 1 and Path(job["outputs"][0]).name.startswith(f"qb_{transport}_")
        uploaded = comfy_server.input_dir / f"qb_{transport}" / media
        assert uploaded.read_bytes() == (data_dir / media).read_bytes(), "upload did not land in the subfolder"
    assert len({j["prompt_id"] for j in jobs.values()}) == 5
    if transport == "websocket" and importlib.util.find_spec("websocket"):
        assert "node 11 (ImageInvert)" in proc.stdout, f"no WebSocket progress lines{detail}"


def test_face_crop_paste_back_batch(comfy_server, data_dir, tmp_path):
    if not FACE_WORKFLOW.is_file():
        pytest.fail(f"{FACE_WORKFLOW.relative_to(ROOT)} is missing: the API-format face crop / paste-back workflow "
                    "(core LoadImage -> the pack's face crop and paste-back nodes -> SaveImage) must be in the repo")
    graph = json.loads(FACE_WORKFLOW.read_text())
    loaders = [nid for nid, node in graph.items()
               if not nid.startswith("_") and isinstance(node, dict) and node.get("class_type") == "LoadImage"]
    assert len(loaders) == 1, f"expected exactly one LoadImage node in {FACE_WORKFLOW.name}, found {loaders}"
    proc, jobs, out, detail = run_tool(comfy_server, FACE_WORKFLOW, tmp_path, "--media", f"{loaders[0]}.image",
                                       *(str(data_dir / m) for m in MEDIA), "--timeout", "900", timeout=1800)
    assert proc.returncode == 0, f"face crop / paste-back batch failed{detail}"
    assert sorted(jobs) == sorted(Path(m).stem for m in MEDIA), detail
    for job in jobs.values():
        check_downloads(comfy_server, job, out / job["name"], detail)
