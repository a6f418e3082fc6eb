"""Resume through a real ComfyUI server: a MEMO, HunyuanPortrait or HelloMeme video run (v5, and v2 with its
per-frame first stage) is interrupted (POST /interrupt once its first segment is in the resume folder), the server
process is STOPPED and started again (ComfyUI's execution cache and temp folder are gone;
output/portrait_animation/resume is not), the same prompt is queued again and continues from the saved segments (the
log says from which clip / step), and its frames, saved losslessly (SaveImage PNGs, fetched through /view), equal
those of an uninterrupted run with resume switched off by a Resume Options node."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files, status_messages

CASES = {
    # workflow, sampler class, sampler settings (long enough to interrupt mid-run), family, first segment, unit,
    # other nodes' inputs by class
    # 1 s of speech at 15 fps: 15 frames, 4 clips of 4
    "memo": ("MEMO talking portrait", "PortraitAnim_MemoSampler", {"steps": 6, "seed": 9191}, "memo",
             "clip00001.pt", "clip", {"PortraitAnim_MemoAudio": {"fps": 15}}),
    "hunyuan_portrait": ("HunyuanPortrait video", "PortraitAnim_HunyuanPortraitSampler", {"steps": 4, "seed": 9191},
                         "hunyuan_portrait", "state.pt", "step", {}),
    # v5: a keyframe pass then the whole clip (14 frames: 1 + 2 windows a step); the state after every step
    "hellomeme_v5": ("HelloMeme video", "PortraitAnim_HelloMemeVideo", {"steps": 4, "seed": 9191}, "hellomeme",
                     "state.pt", "step", {}),
    # v2 runs in two stages: every frame alone (a state after each frame; interrupted there), then the AnimateDiff
    # windows; 8 driving frames at 15 fps are 4 at the conditions' 8 fps
    "hellomeme_v2": ("HelloMeme video", "PortraitAnim_HelloMemeVideo", {"steps": 2, "seed": 9191}, "hellomeme",
                     "state.pt", "step", {"PortraitAnim_HelloMemeLoader": {"version": "v2"},
                                          "PortraitAnim_LoadVideoFrames": {"frame_cap": 8}}),
}


def _graph(case: str, tag: str, resume_enabled: bool | None = None) -> tuple[dict, str]:
    workflow, sampler_class, settings, *_, others = CASES[case]
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / f"{workflow}.json"))
    for node in graph.values():
        node["inputs"].update(others.get(node["class_type"], {}))
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


def _interrupt_after_first_segment(server, case: str) -> Path:
    """Queue ``case`` with resume on (the default), POST /interrupt once its first segment is on disk, wait until the
    run stopped; returns its entry folder."""
    family, segment = CASES[case][3:5]
    before = _entries(server, family)
    status, body = server.queue(_graph(case, "resumed")[0])
    assert status == 200, body
    pid = body["prompt_id"]
    deadline, entry_dir = time.time() + 600, None
    while time.time() < deadline and entry_dir is None:
        entry_dir = next((p for p in _entries(server, family) - before if (p / segment).is_file()), None)
        if entry_dir is None:
            hist = server.get(f"/history/{pid}")
            assert pid not in hist, f"{case} ended before a segment was saved: {hist.get(pid, {}).get('status')}"
            time.sleep(0.05)
    assert entry_dir is not None, server.log_tail()
    server.request("POST", "/interrupt", {})
    entry = server.wait(pid, timeout=600)
    assert "execution_interrupted" in status_messages(entry), entry["status"]
    assert (entry_dir / segment).is_file()  # the segments outlive the cancelled run
    return entry_dir


def test_interrupted_runs_continue_after_a_server_restart(comfy_server):
    """Every case is interrupted, then all continue after ONE restart (a restart costs as much as a short run; the
    HelloMeme versions share the server's cached driving conditions and text encodings before it)."""
    server = comfy_server
    cases = tuple(CASES)

    # 1. queue each and interrupt it once its first segment is saved
    entry_dirs = {case: _interrupt_after_first_segment(server, case) for case in cases}
    assert len(set(entry_dirs.values())) == len(cases)  # one entry per job (versions and settings differ)

    # 2. stop the server process and start a new one: the segments are on disk, nothing else is kept
    server.stop()
    server.start()

    for case in cases:
        family, _, unit = CASES[case][3:6]
        # 3. the same prompt again: it continues from the saved segments
        seen = len(server.log_text())
        resumed = server.run(_graph(case, "resumed")[0], timeout=900)
        assert resumed["status"]["status_str"] == "success", (case, resumed["status"])
        match = re.search(rf"resuming {family} from {unit} (\d+) of (\d+)", server.log_text()[seen:])
        assert match, (case, server.log_tail())
        done, total = int(match.group(1)), int(match.group(2))
        assert 1 <= done < total, case  # less work: the finished part was not sampled again
        assert not entry_dirs[case].exists(), case  # completed: its entry is deleted

        # 4. the reference: the same graph with resume off, run from the start
        reference = server.run(_graph(case, "uninterrupted", resume_enabled=False)[0], timeout=900)
        assert reference["status"]["status_str"] == "success", (case, reference["status"])
        a, b = _frames(server, resumed), _frames(server, reference)
        assert a.shape == b.shape and a.shape[0] > 1, case
        assert np.array_equal(a, b), case  # identical 8-bit frames
        assert a.std() > 0.01, case
