"""What an example workflow's run must give, checked on its /history entry (``test_browser`` runs every example
from the UI with the stand-in models and checks its result here)."""
from __future__ import annotations

import numpy as np

from .comfy import decode_media, fetch_view, output_files

SAVE_NODES = ("SaveImage", "SaveVideo")
MODEL_NODES = ("PortraitAnim_HelloMemeImage", "PortraitAnim_HelloMemeVideo", "PortraitAnim_MemoSampler",
               "PortraitAnim_HunyuanPortraitSampler")


def talking_frames(graph: dict, memo_sampler: dict, media_dir) -> tuple[float, float]:
    """(frames, fps) of a MEMO sampler: one frame per 1/fps s of the speech its conditioner reads."""
    from portrait_animation.media.audio import audio_duration, load_audio

    cond = graph[memo_sampler["inputs"]["conditions"][0]]["inputs"]
    audio = graph[cond["audio"][0]]["inputs"]["audio_file"]
    fps = float(cond["fps"])
    return audio_duration(load_audio(media_dir / audio)) * fps, fps


def driving_frames(graph: dict, conditions: dict, media_dir) -> tuple[float, float, float]:
    """(frames, fps, tolerance) of what drives a conditions node: a Load Video (Frames) after frame_cap and
    select_every_nth, or a MEMO talking head (the speech examples; the tests' stand-in face blended over it keeps
    its frames)."""
    from portrait_animation.media.video import video_info

    source = graph[conditions["driving"][0]]
    if source["class_type"] == "ImageBlend":  # comfy.standin_talking_head
        source = graph[source["inputs"]["image2"][0]]
    if source["class_type"] == "PortraitAnim_MemoSampler":
        n, fps = talking_frames(graph, source, media_dir)
        return n, fps, 1
    loader = source["inputs"]
    info = video_info(media_dir / loader["video"])
    n = len(range(loader["start_frame"], info["frames"], loader["select_every_nth"]))
    return min(n, loader["frame_cap"] or n), float(info["fps"]) / loader["select_every_nth"], 0


def expected_frames(graph: dict, media_dir, original_frames: int) -> tuple[float, float]:
    """(frames, tolerance) the saved result must have, worked out from the graph's inputs: a driven video has one
    frame per driving frame (after frame_cap and resampling to the conditions' ``driving_fps``), a talking portrait
    one per 1/fps s of speech, an image one, and a plain paste-back as many as its original. A talking head that
    drives HelloMeme or HunyuanPortrait counts as their driving video."""
    by_class = {v["class_type"]: v["inputs"] for v in graph.values()}
    if "PortraitAnim_HunyuanPortraitSampler" in by_class:  # one output frame per driving frame, no resampling
        n, _, tolerance = driving_frames(graph, by_class["PortraitAnim_HunyuanPortraitConditions"], media_dir)
        return n, tolerance
    if "PortraitAnim_HelloMemeVideo" in by_class:
        cond = by_class["PortraitAnim_HelloMemeConditions"]
        n, source_fps, tolerance = driving_frames(graph, cond, media_dir)
        target_fps = cond.get("driving_fps") or 0
        return (n * target_fps / source_fps, 1) if target_fps else (n, tolerance)
    if "PortraitAnim_MemoSampler" in by_class:
        sampler = next(v for v in graph.values() if v["class_type"] == "PortraitAnim_MemoSampler")
        return talking_frames(graph, sampler, media_dir)[0], 1
    if "PortraitAnim_HelloMemeImage" in by_class:
        return 1, 0
    return original_frames, 0


def check_comparison_grid(graph: dict, grid_id: str, result: np.ndarray, name: str) -> None:
    """A saved Labelled Image Grid: as many panels as connected images, laid out by ``columns`` with a caption bar
    under each; the first panel is HelloMeme's 512 reference crop (its size is every panel's); every panel is a
    real picture, every caption has text, and each sampler's panel differs from the reference crop (the model
    changed the face) and from every other sampler's (each version's models give their own result)."""
    inputs = graph[grid_id]["inputs"]
    panels = [inputs[f"image_{i}"] for i in range(1, 9) if isinstance(inputs.get(f"image_{i}"), list)]
    columns = min(int(inputs["columns"]), len(panels))
    rows = -(-len(panels) // columns)
    label = int(inputs["label_height"])
    assert result.shape[0] == 1, f"{name}: {result.shape[0]} frames"
    height, width = result.shape[1] // rows - label, result.shape[2] // columns
    assert (height, width) == (512, 512) and result.shape[1:3] == (rows * (512 + label), columns * 512), \
        f"{name}: grid {result.shape} for {len(panels)} panels in {columns} columns"
    cells = []
    for i, source in enumerate(panels):
        r, c = divmod(i, columns)
        y, x = r * (height + label), c * width
        cell, bar = result[0, y:y + height, x:x + width], result[0, y + height:y + height + label, x:x + width]
        assert np.isfinite(cell).all() and cell.std() > 0.01, f"{name}: panel {i + 1} is constant"
        assert bar.max() > 0.5 and bar.std() > 0.02, f"{name}: panel {i + 1} has no caption"
        cells.append((graph[source[0]]["class_type"], cell))
    reference = cells[0][1]
    generated = [cell for cls, cell in cells if cls in MODEL_NODES]
    assert len(generated) >= 2, f"{name}: {len(generated)} generated panels"
    for i, cell in enumerate(generated):
        assert np.abs(cell - reference).mean() > 0.05, f"{name}: generated panel {i + 1} is the reference"
        for j, other in enumerate(generated[:i]):
            assert np.abs(cell - other).mean() > 0.005, f"{name}: generated panels {j + 1} and {i + 1} are equal"


def paste_back_original(graph: dict) -> str:
    """The media file that reaches the paste-back node's ``original`` (through frame extraction, if any), or the
    reference of a sampler that pastes back itself (HunyuanPortrait)."""
    paste = next((v for v in graph.values() if v["class_type"] == "PortraitAnim_FacePasteBack"), None)
    if paste is not None:
        node = graph[paste["inputs"]["original"][0]]
    else:
        cond = next(v for v in graph.values() if v["class_type"] == "PortraitAnim_HunyuanPortraitConditions")
        node = graph[cond["inputs"]["reference"][0]]
    while True:
        files = [v for k, v in node["inputs"].items() if k in ("image", "video", "file") and isinstance(v, str)]
        if files:
            return files[0]
        node = graph[next(v for v in node["inputs"].values() if isinstance(v, list))[0]]


def face_box(frame: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the largest face (MediaPipe landmarks' box)."""
    import torch

    from portrait_animation.face import FaceDetector

    det = FaceDetector(backend="bundled")
    try:
        track = det.track(torch.from_numpy(frame)[None])
    finally:
        det.close()
    x0, y0, x1, y1 = track.boxes[0]
    return int(x0), int(y0), int(x1), int(y1)


def change_inside_outside(result: np.ndarray, original: np.ndarray, box) -> tuple[float, float]:
    """Mean absolute change inside the face box, and in the least changed of the frame's four border bands (an
    eighth of the side wide): the face crop of these portraits does not reach all four sides, so one band at least
    must keep the original where only the paste-back examples' stand-in edit ran (up to video coding noise)."""
    diff = np.abs(result - original).mean(-1)
    x0, y0, x1, y1 = box
    inside = float(diff[y0:y1, x0:x1].mean())
    h, w = diff.shape
    bh, bw = max(1, h // 8), max(1, w // 8)
    bands = (diff[:bh], diff[-bh:], diff[:, :bw], diff[:, -bw:])
    return inside, float(min(b.mean() for b in bands))


def check_example_result(server, graph: dict, entry: dict, name: str) -> None:
    """An example workflow's run (``entry``: its /history entry; ``graph``: the prompt that ran) gave a real
    picture: every listed file (previews too) comes back through /view finite and not constant; the one saved
    result has the size of the original, the expected frame count, and the face changed (by the model, or by the
    stand-in edit and nowhere else); a comparison grid holds a distinct panel per sampler."""
    files = output_files(entry)
    assert files, f"{name} produced no output files: {entry['outputs']}"
    for node_id, f in files:  # every listed file (previews too) comes back through /view and is a real image
        frames = decode_media(fetch_view(server, f), f["filename"])
        assert np.isfinite(frames).all() and frames.std() > 0.01, f"{name}: {f} is constant or not finite"

    saved = [(nid, f) for nid, f in files if graph[nid]["class_type"] in SAVE_NODES]
    assert len(saved) == 1, f"{name}: expected one saved result, got {saved}"
    result = decode_media(fetch_view(server, saved[0][1]), saved[0][1]["filename"])
    source = next(v for v in graph[saved[0][0]]["inputs"].values() if isinstance(v, list))[0]
    if graph[source]["class_type"] == "PortraitAnim_LabelledImageGrid":  # a comparison of several results
        check_comparison_grid(graph, source, result, name)
        return
    original_name = paste_back_original(graph)
    original = decode_media((server.input_dir / original_name).read_bytes(), original_name)
    n, height, width = original.shape[:3]
    if graph[saved[0][0]]["class_type"] == "SaveVideo":  # FramesToVideo pads to even sizes for h264
        height, width = height + height % 2, width + width % 2
    assert result.shape[1:3] == (height, width), f"{name}: result {result.shape}, original {original.shape}"
    frames, tolerance = expected_frames(graph, server.input_dir, n)
    assert abs(result.shape[0] - frames) <= tolerance, f"{name}: {result.shape[0]} frames, expected {frames}"

    # the face (found in the original by the pack's detector) changed
    box = face_box(original[0])
    inside, border = change_inside_outside(result[0, : original.shape[1], : original.shape[2]], original[0], box)
    if any(v["class_type"] in MODEL_NODES for v in graph.values()):
        assert inside > 0.05, f"{name}: the model did not change the face ({inside:.4f})"
        assert "clip missing" not in server.log_text(), "the stand-in CLIP did not load completely"
    else:  # the stand-in edit (sharpening) shows on the face, and the frame's border keeps the original
        assert inside > 0.004 and inside > 3 * border, f"{name}: face change {inside:.4f}, border {border:.4f}"
