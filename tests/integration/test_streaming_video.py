"""The samplers' output 'video file' in a real ComfyUI: each finished clip is pasted back and encoded into an mp4 that
the node returns as a core VIDEO backed by the file; Save Video stores it. The saved video must have one frame per
generated frame, the full portrait's size (made even), moving content and the audio."""
from __future__ import annotations

import io

import pytest

from .comfy import ROOT, decode_media, fast, fetch_view, load_api_workflow, output_files


def _node(graph: dict, class_type: str) -> str:
    return next(k for k, v in graph.items() if v["class_type"] == class_type)


def _saved_video(server, entry):
    import av

    assert entry["status"]["status_str"] == "success", entry["status"]
    videos = [f for _, f in output_files(entry) if f["filename"].endswith(".mp4")]
    assert len(videos) == 1, output_files(entry)
    data = fetch_view(server, videos[0])
    frames = decode_media(data, videos[0]["filename"])
    with av.open(io.BytesIO(data)) as c:
        audio = c.streams.audio[0] if c.streams.audio else None
        audio_s = float(audio.duration * audio.time_base) if audio is not None and audio.duration else None
    return frames, audio_s


def _check(frames, audio_s, count, fps, size):
    assert frames.shape[0] == count, (frames.shape, count)
    h, w = size
    assert frames.shape[1:3] == (h + h % 2, w + w % 2), frames.shape
    assert frames.std(axis=0).mean() > 1e-3                          # the face moves: not one frame repeated
    assert frames.std() > 0.02                                       # not a constant picture
    assert audio_s is not None and abs(audio_s - count / fps) < 0.1, (audio_s, count / fps)


def test_memo_streams_the_pasted_back_video(comfy_server):
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / "MEMO talking portrait.json"))
    portrait, crop = _node(graph, "LoadImage"), _node(graph, "PortraitAnim_FaceCrop")
    sampler = _node(graph, "PortraitAnim_MemoSampler")
    graph[sampler]["inputs"].update(output="video file", crop_info=[crop, 1], original=[portrait, 0])
    for cls in ("PortraitAnim_FacePasteBack", "PortraitAnim_FramesToVideo", "PortraitAnim_ModelFiles"):
        del graph[_node(graph, cls)]
    graph[_node(graph, "SaveVideo")]["inputs"]["video"] = [sampler, 2]
    frames, audio_s = _saved_video(comfy_server, comfy_server.run(graph, timeout=600))
    from PIL import Image

    size = Image.open(comfy_server.input_dir / graph[portrait]["inputs"]["image"]).size[::-1]
    fps = float(graph[_node(graph, "PortraitAnim_MemoAudio")]["inputs"]["fps"])
    _check(frames, audio_s, round(fps), fps, size)                   # speech_short.wav: 1 s, one frame per 1/fps s


def test_hunyuan_portrait_streams_the_pasted_back_video(comfy_server):
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / "HunyuanPortrait video.json"))
    graph[_node(graph, "PortraitAnim_HunyuanPortraitSampler")]["inputs"]["output"] = "video file"
    del graph[_node(graph, "PortraitAnim_ModelFiles")]
    frames, audio_s = _saved_video(comfy_server, comfy_server.run(graph, timeout=600))
    from PIL import Image

    portrait = graph[_node(graph, "LoadImage")]["inputs"]["image"]
    size = Image.open(comfy_server.input_dir / portrait).size[::-1]
    loader = graph[_node(graph, "PortraitAnim_LoadVideoFrames")]["inputs"]
    from portrait_animation.media.video import video_info

    info = video_info(comfy_server.input_dir / loader["video"])
    _check(frames, audio_s, loader["frame_cap"], float(info["fps"]), size)


def test_hellomeme_video_streams_the_pasted_back_video(comfy_server):
    graph = fast(load_api_workflow(ROOT / "workflows" / "api" / "HelloMeme video.json"))
    portrait, cond = _node(graph, "LoadImage"), _node(graph, "PortraitAnim_HelloMemeConditions")
    loader, sampler = _node(graph, "PortraitAnim_LoadVideoFrames"), _node(graph, "PortraitAnim_HelloMemeVideo")
    graph[cond]["inputs"]["driving_fps"] = 0.0                      # every driving frame, at the source rate
    graph[sampler]["inputs"].update(output="video file", crop_info=[cond, 4], original=[portrait, 0],
                                    audio=[loader, 2])
    for cls in ("PortraitAnim_FacePasteBack", "PortraitAnim_FramesToVideo", "PortraitAnim_ModelFiles"):
        if any(v["class_type"] == cls for v in graph.values()):
            del graph[_node(graph, cls)]
    graph[_node(graph, "SaveVideo")]["inputs"]["video"] = [sampler, 1]
    frames, audio_s = _saved_video(comfy_server, comfy_server.run(graph, timeout=600))
    from PIL import Image

    from portrait_animation.media.video import video_info

    size = Image.open(comfy_server.input_dir / graph[portrait]["inputs"]["image"]).size[::-1]
    info = video_info(comfy_server.input_dir / graph[loader]["inputs"]["video"])
    _check(frames, audio_s, graph[loader]["inputs"]["frame_cap"], float(info["fps"]), size)


@pytest.fixture(autouse=True)
def _no_temp_leftovers(comfy_server):
    yield
    temp = comfy_server.workdir / "temp" if hasattr(comfy_server, "workdir") else None
    if temp is not None and temp.is_dir():
        assert not list(temp.rglob("*.incomplete.*"))
