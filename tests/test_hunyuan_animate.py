"""HunyuanPortrait as the nodes run it, without ComfyUI: the store finds the stand-in files in the manifest layout,
the bundle loads them under a runtime, conditions come from a real portrait and real driving video through the
YOLOv5-face and ArcFace stand-ins, the sampler runs with progress and cancellation, frames are pasted back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait_animation.face.track import NoFaceError
from portrait_animation.hunyuan_portrait import animate as A
from portrait_animation.hunyuan_portrait.conditions import detect_driving
from portrait_animation.runtime.base import Interrupted
from portrait_animation.runtime.standalone import StandaloneRuntime

HUNYUAN_FRAMES = FRAMES = 6  # the driving frames of the shared hunyuan_case fixture (tests/conftest.py)


def _settings(cond, **kw):
    base = dict(num_inference_steps=2, n_sample_frames=4, overlap=1, pad_frames=2, decode_chunk_size=4)
    return A.settings_for(cond, **{**base, **kw})


def test_conditions_from_real_media(hunyuan_case):
    bundle, cond, reference = hunyuan_case
    assert cond.num_frames == FRAMES and cond.motion.shape == (FRAMES, 64, 1024)
    assert cond.appearance.shape == (1, 64, 1024) and torch.isfinite(cond.appearance).all()
    assert cond.intensity_ids.shape == (2, 2)                      # ceil(6 / 4) chunks
    assert abs(float(cond.id_embedding.norm()) - 1) < 1e-5         # ArcFace loaded: a unit embedding
    crop = cond.reference_image()
    assert crop.shape == (1, cond.size, cond.size, 3)
    info = cond.crop_info()
    x1, y1, x2, y2 = cond.source.crop_bbox
    assert (info.height, info.width) == reference.shape[1:3] and info.box(0) == (x1, y1, x2 - x1)
    assert "6 driving frames" in cond.report()


def test_animate_pastes_back_and_scores_identity(hunyuan_case):
    bundle, cond, reference = hunyuan_case
    s = _settings(cond)
    frames = A.animate(bundle, cond, s, seed=3)
    assert frames.shape == (FRAMES, cond.size, cond.size, 3)
    assert torch.isfinite(frames).all() and frames.std() > 0.01 and 0 <= frames.min() and frames.max() <= 1
    again = A.animate(bundle, cond, s, seed=3)
    other = A.animate(bundle, cond, s, seed=4)
    assert torch.equal(frames, again) and not torch.equal(frames, other)
    full = A.pasted_frames(cond, frames)
    assert full.shape == (FRAMES, *reference.shape[1:])
    x1, y1, x2, y2 = cond.source.crop_bbox
    outside = torch.ones(reference.shape[1:3], dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    orig = torch.from_numpy(cond.original.astype(np.float32) / 255)
    if outside.any():
        assert torch.equal(full[:, outside], orig[outside].expand(FRAMES, -1, -1))
    centre = full[:, (y1 + y2) // 2, (x1 + x2) // 2]
    assert not torch.allclose(centre, orig[(y1 + y2) // 2, (x1 + x2) // 2])       # the generated face is there
    report = A.identity_scores(bundle, cond, frames, window=4)
    assert len(report.per_frame) == FRAMES and [w["frames"] for w in report.windows()] == [[0, 3], [4, 5]]
    assert all(v is None or -1 <= v <= 1 for v in report.per_frame) and np.isfinite(report.mean)


def test_progress_counts_every_window_and_cancel_stops(hunyuan_case):
    bundle, cond, _ = hunyuan_case
    s = _settings(cond)
    rt = StandaloneRuntime(device="cpu", show_progress=False)
    seen = []
    rt.callbacks.append(lambda value, total, preview: seen.append((value, total)))
    A.animate(bundle, cond, s, seed=0, runtime=rt)
    total = A.progress_total(s, FRAMES)
    assert seen[-1] == (total, total) and len(seen) > s.num_inference_steps

    def cancel_after_first(value, total, preview):
        if value == 1:
            rt.interrupt()
    rt.callbacks[:] = [cancel_after_first]
    with pytest.raises(Interrupted):
        A.animate(bundle, cond, s, seed=0, runtime=rt)


def test_driving_frames_without_a_face():
    face = (np.array([[10, 10, 40, 40]], float), np.zeros((1, 5, 2)))
    none = (np.zeros((0, 4)), np.zeros((0, 5, 2)))
    answers = [face, none, none, face, none]
    detect = iter(answers)
    frames = [np.zeros((4, 4, 3), np.uint8)] * len(answers)
    with pytest.raises(NoFaceError, match=r"3 of 5 frames.*'driving'.*fill_nearest"):
        detect_driving(frames, lambda f: next(detect))
    detect = iter(answers)
    found, filled = detect_driving(frames, lambda f: next(detect), on_missing="fill_nearest")
    assert filled == [1, 2, 4] and all(f is not None for f in found)
    detect = iter([none] * 3)
    with pytest.raises(NoFaceError, match="any of the 3"):
        detect_driving(frames[:3], lambda f: next(detect), on_missing="fill_nearest")
