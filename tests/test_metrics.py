"""Quality metrics on the real sample media, each with the direction a damaged clip must move it: a shuffled,
flickering or blurred clip, a different person, a jump at a boundary. Identity uses the tests' small ArcFace
stand-in (``arcface.onnx``'s interface, random weights: no real ArcFace weights here), so its numbers say that
alignment and scoring work, not how well a real ArcFace separates people."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from portrait_animation.metrics import face_motion, identity, temporal
from portrait_animation.metrics.plot import plot_series
from portrait_animation.metrics.series import MetricSeries, parse_boundaries, time_map

FRAMES = 24


@pytest.fixture(scope="module")
def detector():
    from portrait_animation.face.detect import FaceDetector

    det = FaceDetector(backend="bundled")
    yield det
    det.close()


def _video(data_dir, name: str, n: int = FRAMES) -> torch.Tensor:
    from portrait_animation.media.video import read_video

    frames, _, _ = read_video(data_dir / name, max_frames=n, with_audio=False)
    return frames


def _image(data_dir, name: str, size: int | None = None) -> torch.Tensor:
    from PIL import Image

    im = Image.open(data_dir / name).convert("RGB")
    if size:
        im = im.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).astype(np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def jue(data_dir):
    return _video(data_dir, "jue.mp4")


@pytest.fixture(scope="module")
def driving(data_dir):
    return _video(data_dir, "driving_video.mp4")


def _shuffled(frames: torch.Tensor) -> torch.Tensor:
    perm = torch.randperm(len(frames), generator=torch.Generator().manual_seed(0))
    return frames[perm]


def _blurred(frames: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    return torch.from_numpy(np.stack([cv2.GaussianBlur(f.numpy(), (0, 0), sigma) for f in frames]))


# ---- series, plot, helpers -----------------------------------------------------------------------------------------
def test_series_summary_json_and_plot():
    s = MetricSeries("flicker", "test", "levels", "lower", [1.0, None, 3.0, float("nan")], x=[1, 2, 3, 4],
                     marks=[3], extra={"k": 1})
    assert s.mean == 2.0 and s.missing == [2, 4]
    d = json.loads(s.to_json())
    assert d["mean"] == 2.0 and d["values"] == [1.0, None, 3.0, None] and d["count"] == 2 and d["k"] == 1
    assert d["marks"] == [3] and d["better"] == "lower"
    img = plot_series(s)
    assert img.shape == (320, 768, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert img.std() > 0.02
    empty = MetricSeries("pose", "t", "deg", "lower", [None, None])
    assert math.isnan(empty.mean) and empty.floats()[0] != empty.floats()[0]
    assert plot_series(empty).shape == (320, 768, 3) and "not measured" in empty.summary()


def test_boundaries_and_time_map():
    assert parse_boundaries("16, 32;40 99 0", 48) == [16, 32, 40]
    assert parse_boundaries("", 40, segment_length=16) == [16, 32]
    assert parse_boundaries("20", 40, segment_length=16) == [16, 20, 32]
    with pytest.raises(ValueError, match="not a frame number"):
        parse_boundaries("a", 10)
    assert time_map(4, 10) == [0, 1, 2, 3]
    assert time_map(4, 3) == [0, 1, 2, -1]
    assert time_map(4, 20, fps=8, driving_fps=15) == [0, 1, 3, 5]


# ---- temporal ------------------------------------------------------------------------------------------------------
def test_flicker_is_worse_for_shuffled_and_flickering_clips(jue):
    original = temporal.flicker(jue)
    assert len(original.values) == len(jue) - 1 and original.x[0] == 1
    jitter = 1 + 0.08 * torch.randn(len(jue), 1, 1, 1, generator=torch.Generator().manual_seed(1))
    flickering = temporal.flicker((jue * jitter).clamp(0, 1))
    shuffled = temporal.flicker(_shuffled(jue))
    assert original.mean < 4.0, original.mean
    assert flickering.mean > 2 * original.mean, (flickering.mean, original.mean)
    assert shuffled.mean > 1.5 * original.mean, (shuffled.mean, original.mean)
    assert temporal.flicker(jue[:1]).notes and math.isnan(temporal.flicker(jue[:1]).mean)


def test_flow_explains_motion_a_shifted_frame_has_little_warp_error(jue):
    frame = (jue[0].numpy() * 255).astype(np.float32)
    shifted = np.roll(frame, 4, axis=1)
    assert temporal.warp_error(frame, shifted) < 0.3 * float(np.abs(shifted - frame).mean())


def test_seam_score_sees_a_jump_at_the_boundary(jue):
    clean = temporal.seam_scores(jue, [12])
    jumped = torch.cat([jue[:12], (jue[12:] * 0.88 + 0.06)])
    seam = temporal.seam_scores(jumped, [12])
    assert seam.x == [12] and seam.extra["boundaries"][0]["frame"] == 12
    assert clean.values[0] < 2.0, clean.values
    assert seam.values[0] > 2 * clean.values[0], (seam.values, clean.values)
    assert len(seam.extra["transitions"]) == len(jue) - 1
    # a boundary elsewhere on the same clip does not see the jump
    assert temporal.seam_scores(jumped, [6]).values[0] < seam.values[0]
    plotted = temporal.seam_transitions(seam)
    assert plotted.marks == [12] and len(plotted.values) == len(jue) - 1
    assert temporal.seam_scores(jue, []).notes


# ---- driven motion -------------------------------------------------------------------------------------------------
def test_pose_distance_zero_on_itself_and_larger_for_shuffled_or_other_driver(jue, driving, detector):
    same = face_motion.pose_distance(jue, jue, detector)
    assert same.mean == pytest.approx(0.0, abs=1e-6)
    shuffled = face_motion.pose_distance(jue, _shuffled(jue), detector)
    other = face_motion.pose_distance(jue, driving, detector)
    assert shuffled.mean > 1.0 and other.mean > shuffled.mean, (shuffled.mean, other.mean)
    assert set(other.extra) == {"mean_pitch", "mean_yaw", "mean_roll"}


def test_head_pose_ignores_frame_size(jue, detector):
    from portrait_animation.metrics.faces import track_faces

    small = torch.nn.functional.interpolate(jue[:1].permute(0, 3, 1, 2), size=(256, 256), mode="area")
    a = face_motion.head_pose_degrees(track_faces(jue[:1], detector)[0])
    b = face_motion.head_pose_degrees(track_faces(small.permute(0, 2, 3, 1), detector)[0])
    assert np.abs(a - b).max() < 3.0, (a, b)


def test_expression_and_mouth_distance_directions(jue, driving, detector):
    same_e = face_motion.expression_distance(jue, jue, detector)
    same_m = face_motion.mouth_distance(jue, jue, detector)
    assert same_e.mean == pytest.approx(0.0, abs=1e-9) and same_m.mean == pytest.approx(0.0, abs=1e-9)
    shuffled = _shuffled(jue)
    e_shuf = face_motion.expression_distance(shuffled, jue, detector)
    m_shuf = face_motion.mouth_distance(shuffled, jue, detector)
    assert e_shuf.mean > 0.03 and m_shuf.mean > 3.0, (e_shuf.mean, m_shuf.mean)
    # a blurred copy keeps the motion: closer than a shuffled one
    blurred = _blurred(jue)
    assert face_motion.mouth_distance(blurred, jue, detector).mean < m_shuf.mean
    assert face_motion.expression_distance(blurred, jue, detector).mean < e_shuf.mean
    # another person: relative comparison removes the resting-face difference that absolute keeps
    other_abs = face_motion.mouth_distance(jue, driving, detector, compare="absolute")
    other_rel = face_motion.mouth_distance(jue, driving, detector, compare="relative")
    assert other_abs.mean > other_rel.mean > 0
    assert face_motion.expression_distance(jue, driving, detector, compare="absolute").mean > \
        face_motion.expression_distance(jue, driving, detector, compare="relative").mean
    with pytest.raises(ValueError, match="compare mode"):
        face_motion.mouth_distance(jue, jue, detector, compare="x")


def test_frames_are_paired_by_time_and_past_the_driver_not_measured(jue, detector):
    half = jue[::2]  # the same video at half the frame rate
    timed = face_motion.mouth_distance(half, jue, detector, fps=7.5, driving_fps=15.0)
    assert timed.mean == pytest.approx(0.0, abs=1e-9)
    short = face_motion.pose_distance(jue, jue[:10], detector)
    assert short.missing == list(range(10, len(jue))) and short.notes


def test_frames_without_a_face_are_not_measured_and_a_faceless_driver_is_an_error(jue, detector):
    from portrait_animation.face.track import NoFaceError

    frames = jue[:6].clone()
    frames[2] = 0.5  # a grey frame: no face
    s = face_motion.pose_distance(frames, jue[:6], detector)
    assert s.missing == [2] and all(v is not None for i, v in enumerate(s.values) if i != 2)
    with pytest.raises(NoFaceError, match="driving"):
        face_motion.pose_distance(jue[:2], torch.full((2, 64, 64, 3), 0.5), detector)


# ---- identity ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arcface(tmp_path_factory):
    from helpers.tiny_models import write_arcface_standin

    from portrait_animation.loaders.store import ModelStore

    models = tmp_path_factory.mktemp("models")
    write_arcface_standin(models / "portrait_animation" / "hunyuan_portrait" / "arcface.onnx")
    return identity.load_arcface(store=ModelStore.at(models), device="cpu")


def test_identity_is_lower_for_a_different_person(data_dir, arcface, detector):
    harris = _image(data_dir, "harris.jpg")
    moved = torch.roll(harris, (10, -12), (1, 2)) * 0.95
    others = torch.cat([_image(data_dir, "dicaprio.jpg", 512), _image(data_dir, "source_image.png")])
    s = identity.identity_similarity(torch.cat([harris, moved, others]), harris, arcface, detector)
    same, shifted, diff1, diff2 = s.values
    assert same == pytest.approx(1.0, abs=1e-4) and shifted > 0.95
    assert max(diff1, diff2) < shifted - 0.2, s.values


def test_identity_over_a_video_drops_where_another_face_is_swapped_in(data_dir, jue, arcface, detector):
    own = identity.identity_similarity(jue, jue[:1], arcface, detector)
    dicaprio = _image(data_dir, "dicaprio.jpg", 512)
    other = identity.identity_similarity(jue, dicaprio, arcface, detector)
    assert own.mean > other.mean + 0.2, (own.mean, other.mean)
    assert own.values[0] == pytest.approx(1.0, abs=1e-4)
    swapped = jue.clone()
    swapped[5] = dicaprio[0]
    s = identity.identity_similarity(swapped, jue[:1], arcface, detector)
    assert int(np.argmin(s.floats())) == 5 and s.values[5] < own.values[5] - 0.2, s.values


def test_identity_needs_a_face_in_the_reference_and_names_a_missing_network(tmp_path, jue, arcface, detector):
    from portrait_animation.face.track import NoFaceError
    from portrait_animation.loaders.store import MissingModelFiles, ModelStore

    with pytest.raises(NoFaceError, match="reference"):
        identity.identity_similarity(jue[:2], torch.full((1, 64, 64, 3), 0.5), arcface, detector)
    with pytest.raises(MissingModelFiles, match="arcface.onnx"):
        identity.load_arcface(store=ModelStore.at(tmp_path), download=False)
    faceless = identity.identity_similarity(torch.full((2, 64, 64, 3), 0.5), jue[:1], arcface, detector)
    assert faceless.missing == [0, 1] and faceless.notes


def test_landmarks_and_flow_are_reused_for_the_same_frames_only(jue, detector):
    from portrait_animation.metrics import faces

    a = faces.track_faces(jue[:4], detector)
    b = faces.track_faces(jue[:4].clone(), detector)  # same content, another tensor: from the cache
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    b[0][:] = 0  # callers get copies
    assert not np.array_equal(faces.track_faces(jue[:4], detector)[0], b[0])
    changed = jue[:4].clone()
    changed[1] = torch.roll(changed[1], 20, 1)
    assert faces.fingerprint(changed) != faces.fingerprint(jue[:4])
    assert not np.allclose(faces.track_faces(changed, detector)[1], a[1])
    assert temporal.transition_errors(jue[:4]) == temporal.transition_errors(jue[:4].clone())
