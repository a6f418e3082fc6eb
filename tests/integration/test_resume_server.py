"""Resume through a real ComfyUI server: a MEMO or HunyuanPortrait run is interrupted (POST /interrupt once its first
segment is in the resume folder), the server process is STOPPED and started again (ComfyUI's execution cache and
temp folder are gone; output/portrait_animation/resume is not), the same prompt is queued again and continues from
the saved segments (the log says from which clip / step), and its frames, saved losslessly (SaveImage PNGs, fetched
through /view), equal those of an uninterrupted run with resume switched off by a Resume Options node."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files, status_messages

CASES = {
    # workflow, sampler class, sampler settings (long enough to interrupt mid-run), family, first segment, unit
    "memo": ("MEMO talking portrait", "PortraitAnim_MemoSampler", {"steps": 6, "seed": 9191}, "memo",
             "clip00001.pt", "clip"),
    "hunyuan_portrait": ("HunyuanPortrait video", "PortraitAnim_HunyuanPortraitSampler", {"steps": 8, "seed": 9191},
                         "hunyuan_portrait", "state.pt", "step"),
}


def _graph(case: str, tag: str, resume_enabled: bool | None = None) -> tuple[dict, str]:
    workflow, sampler_class, settings, *_ = CASES[case]
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / f"{workflow}.json"))
    sampler = next(k for k, v in graph.items() if v["class_type"] == sampler_class)
    graph[sampler]["inputs"].update(settings)
    # only the sampler's frames, saved losslessly: drop the example's other outputs (paste-back, video, model files)
    keep = {sampler}
    stack = [sampler]
    while stack:
        for value in graph[stack.pop()]["inputs"].values():
            if isinstance(value, list) and value[0] not in keep:
                keep.add(value[0])
                stack.append(value[0])
    graph = {k: v for k, v in graph.items() if k in keep}
    graph["resume_png"] = {"class_type": "SaveImage",
                           "inputs": {"images": [sampler, 0], "filename_prefix": f"resume_test/{case}_{tag}"}}
    if resume_enabled is not None:
        graph["resume_options"] = {"class_type": "PortraitAnim_ResumeOptions",
                                   "inputs": {"enabled": resume_enabled, "folder": "", "keep": False, "max_gb": 8.0}}
        graph[sampler]["inputs"]["resume"] = ["resume_options", 0]
    return graph, sampler


def _frames(server, entry) -> np.ndarray:
    files = sorted((f for _, f in output_files(entry)), key=lambda f: f["filename"])
    assert files, entry
    return np.concatenate([decode_media(fetch_view(server, f), f["filename"]) for f in files])


def _entries(server, family: str) -> set:
    folder = server.output_dir / "portrait_animation" / "resume"
    return {p for p in folder.glob(f"{family}-*")} if folder.is_dir() else set()


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_interrupted_run_continues_after_a_server_restart(comfy_server, case):
    server = comfy_server
    family, segment, unit = CASES[case][3:]
    graph, sampler = _graph(case, "resumed")
    before = _entries(server, family)

    # 1. queue and interrupt once the first segment is saved
    status, body = server.queue(graph)
    assert status == 200, body
    pid = body["prompt_id"]
    deadline, entry_dir = time.time() + 600, None
    while time.time() < deadline and entry_dir is None:
        entry_dir = next((p for p in _entries(server, family) - before if (p / segment).is_file()), None)
        if entry_dir is None:
            hist = server.get(f"/history/{pid}")
            assert pid not in hist, f"the run ended before a segment was saved: {hist.get(pid, {}).get('status')}"
            time.sleep(0.05)
    assert entry_dir is not None, server.log_tail()
    server.request("POST", "/interrupt", {})
    entry = server.wait(pid, timeout=600)
    assert "execution_interrupted" in status_messages(entry), entry["status"]
    assert (entry_dir / segment).is_file()  # the segments outlive the cancelled run

    # 2. stop the server process and start a new one: the segments are on disk, nothing else is kept
    server.stop()
    server.start()

    # 3. the same prompt again: it continues from the saved segments
    resumed = server.run(graph, timeout=900)
    assert resumed["status"]["status_str"] == "success", resumed["status"]
    match = re.search(rf"resuming {family} from {unit} (\d+) of (\d+)", server.log_text())
    assert match, server.log_tail()
    done, total = int(match.group(1)), int(match.group(2))
    assert 1 <= done < total  # less work: the finished part was not sampled again
    assert not entry_dir.exists()  # completed: its entry is deleted

    # 4. the reference: the same graph with resume off, run from the start
    reference = server.run(_graph(case, "uninterrupted", resume_enabled=False)[0], timeout=900)
    assert reference["status"]["status_str"] == "success", reference["status"]
    a, b = _frames(server, resumed), _frames(server, reference)
    assert a.shape == b.shape and a.shape[0] > 1
    assert np.array_equal(a, b)  # identical 8-bit frames
    assert a.std() > 0.01
