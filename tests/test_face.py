"""Face detection, square crops and paste-back on the sample media (no ComfyUI, no GPU).

Detection uses MediaPipe's bundled models (mediapipe <= 0.10.21), which need no download.
"""
from __future__ import annotations

import copy
import json
import pickle
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_animation.face import (CropInfo, FaceDetector, FaceTrack, NoFaceError, box_mask, bundled_available,
                                     compute_crop_boxes, crop_faces, crop_track, draw_landmarks, paste_back)
from portrait_animation.face.crop import moving_average
from portrait_animation.face.track import CHIN, FOREHEAD, LEFT_IRIS, NOSE_TIP, RIGHT_IRIS
from portrait_animation.loaders.store import CorruptModelFile, MissingModelFiles, ModelStore

pytestmark = pytest.mark.skipif(not bundled_available(), reason="needs mediapipe <= 0.10.21 (bundled face models)")

RIGHT_EYE = [33, 133, 159, 145]   # subject's right eye: outer corner, inner corner, upper lid, lower lid
LEFT_EYE = [263, 362, 386, 374]
MOUTH = [13, 14, 61, 291]


# ---------------------------------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------------------------------
def load_image(path: Path) -> torch.Tensor:
    """An image file as IMAGE [1, H, W, 3] float32 0..1."""
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0)[None]


def decode_video(path: Path) -> np.ndarray:
    """All frames of a video as uint8 [N, H, W, 3] (PyAV)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def detector():
    det = FaceDetector(backend="bundled")
    yield det
    det.close()


@pytest.fixture(scope="module")
def videos(data_dir):
    return {name: decode_video(data_dir / name) for name in ("jue.mp4", "driving_video.mp4")}


@pytest.fixture(scope="module")
def driving_track(detector, videos):
    return detector.track(videos["driving_video.mp4"])


def assert_plausible(lm: np.ndarray, height: int, width: int, where: str) -> None:
    """Landmarks ``[N, 478, 3]`` of an upright, roughly frontal face fully inside a height x width frame."""
    assert lm.ndim == 3 and lm.shape[1:] == (478, 3), where
    assert np.isfinite(lm).all(), where
    x, y = lm[..., 0], lm[..., 1]
    assert (x >= 0).all() and (x < width).all() and (y >= 0).all() and (y < height).all(), f"{where}: outside"
    r_eye, l_eye = lm[:, RIGHT_EYE, :2].mean(1), lm[:, LEFT_EYE, :2].mean(1)
    mouth, nose = lm[:, MOUTH, :2].mean(1), lm[:, NOSE_TIP, :2]
    assert (lm[:, FOREHEAD, 1] < np.minimum(r_eye[:, 1], l_eye[:, 1])).all(), f"{where}: forehead not above eyes"
    assert (np.maximum(r_eye[:, 1], l_eye[:, 1]) < nose[:, 1]).all(), f"{where}: eyes not above nose"
    assert (nose[:, 1] < mouth[:, 1]).all(), f"{where}: nose not above mouth"
    assert (mouth[:, 1] < lm[:, CHIN, 1]).all(), f"{where}: mouth not above chin"
    assert (r_eye[:, 0] < nose[:, 0]).all() and (nose[:, 0] < l_eye[:, 0]).all(), f"{where}: nose not between eyes"
    face_w = x.max(1) - x.min(1)
    iod = np.linalg.norm(l_eye - r_eye, axis=1)
    assert ((iod > 0.25 * face_w) & (iod < 0.7 * face_w)).all(), f"{where}: eye distance implausible"
    for iris, eye in ((RIGHT_IRIS, RIGHT_EYE), (LEFT_IRIS, LEFT_EYE)):
        lo, hi = lm[:, eye, :2].min(1), lm[:, eye, :2].max(1)
        half_w = (hi[:, 0] - lo[:, 0]) / 2  # lids close when blinking: allow half an eye width up or down
        ix, iy = lm[:, iris, 0], lm[:, iris, 1]
        inside = (ix > lo[:, 0]) & (ix < hi[:, 0]) & (iy > lo[:, 1] - half_w) & (iy < hi[:, 1] + half_w)
        assert inside.all(), f"{where}: iris centre outside its eye"


# ---------------------------------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,size", [("harris.jpg", 512), ("dicaprio.jpg", 1691), ("source_image.png", 512)])
def test_landmarks_on_portraits(detector, data_dir, name, size):
    image = load_image(data_dir / name)
    assert image.shape == (1, size, size, 3)
    track = detector.track(image)
    assert track.num_frames == 1 and (track.height, track.width) == (size, size)
    assert track.backend == "bundled" and track.complete and not track.filled
    assert_plausible(track.stacked(), size, size, name)
    x0, y0, x1, y1 = track.boxes[0]
    assert (x1 - x0) > 0.25 * size and (y1 - y0) > 0.25 * size  # a portrait: the face is large
    assert 0.3 < track.scores[0] <= 1.0


@pytest.mark.parametrize("name,frames", [("jue.mp4", 84), ("driving_video.mp4", 120)])
def test_landmarks_on_every_video_frame(detector, videos, name, frames):
    video = videos[name]
    assert video.shape[0] == frames
    calls = []
    track = detector.track(video, on_missing="error", input_name=name, progress=calls.append)
    assert len(calls) == frames
    assert track.num_frames == frames and track.complete and not track.filled
    lm = track.stacked()
    assert_plausible(lm, video.shape[1], video.shape[2], name)
    # consecutive frames of a video: the face moves little from frame to frame
    step = np.abs(np.diff(lm[:, :, :2].mean(1), axis=0)).max()
    assert step < 0.1 * video.shape[2]


def test_face_found_when_small_in_a_large_frame(detector, data_dir):
    """The two-stage bundled detector finds a face much smaller than the frame (full-range detector + mesh crop)."""
    face = load_image(data_dir / "source_image.png")[0]
    small = torch.nn.functional.interpolate(face.permute(2, 0, 1)[None], size=(160, 160), mode="area")[0]
    frame = torch.zeros((1, 1080, 1920, 3))
    frame[0, 700:860, 1500:1660] = small.permute(1, 2, 0)
    track = detector.track(frame)
    x0, y0, x1, y1 = track.boxes[0]
    assert 1500 <= x0 < x1 <= 1660 and 700 <= y0 < y1 <= 860
    assert_plausible(track.stacked(), 1080, 1920, "small face")


def test_no_face_raises_and_names_the_frame(detector, data_dir):
    face = load_image(data_dir / "harris.jpg")
    blank = torch.full_like(face, 0.5)
    with pytest.raises(NoFaceError) as err:
        detector.track(blank)
    assert "no face found" in str(err.value) and "'images'" in str(err.value)
    batch = torch.cat([face, blank, face, blank, blank])
    with pytest.raises(NoFaceError) as err:
        detector.track(batch, input_name="driving")
    msg = str(err.value)
    assert err.value.frames == [1, 3, 4]
    assert "3 of 5 frames (1, 3-4)" in msg and "'driving'" in msg and "fill_nearest" in msg
    with pytest.raises(ValueError, match="frame 1 of 3"):
        detector.track(torch.cat([face, blank, face]))


def test_fill_nearest_fills_and_reports(detector, data_dir):
    face, other = load_image(data_dir / "harris.jpg"), load_image(data_dir / "source_image.png")
    blank = torch.zeros_like(face)
    track = detector.track(torch.cat([blank, face, blank, other, blank, blank]), on_missing="fill_nearest")
    assert track.complete
    assert track.filled == {0: 1, 2: 1, 4: 3, 5: 3}  # nearest detected frame, the earlier one on a tie (frame 2)
    np.testing.assert_array_equal(track.landmarks[2], track.landmarks[1])
    np.testing.assert_array_equal(track.landmarks[5], track.landmarks[3])
    assert not np.array_equal(track.landmarks[1], track.landmarks[3])
    assert list(track.face_counts) == [0, 1, 0, 1, 0, 0]
    assert "filled from nearest: 0, 2, 4-5" in track.summary()
    with pytest.raises(NoFaceError, match="any of the 2 frame"):
        detector.track(torch.cat([blank, blank]), on_missing="fill_nearest")


def test_face_index_and_order(detector, data_dir):
    big = load_image(data_dir / "harris.jpg")[0]
    small = torch.nn.functional.interpolate(big.permute(2, 0, 1)[None], size=(256, 256), mode="area")[0]
    frame = torch.zeros((1, 600, 1000, 3))
    frame[0, 40:552, 20:532] = big
    frame[0, 200:456, 700:956] = small.permute(1, 2, 0)
    faces = detector.detect(frame[0])
    assert len(faces) == 2 and faces[0].area > faces[1].area
    assert detector.track(frame, face_index=0).boxes[0, 0] < 532
    assert detector.track(frame, face_index=1).boxes[0, 0] >= 700
    with pytest.raises(NoFaceError, match="face #2"):
        detector.track(frame, face_index=2)
    with pytest.raises(ValueError, match="max_faces"):
        FaceDetector(backend="bundled", max_faces=1).track(frame, face_index=1)


def test_track_serialises(driving_track):
    back = FaceTrack.from_dict(json.loads(json.dumps(driving_track.to_dict())))
    assert back.num_frames == driving_track.num_frames
    np.testing.assert_allclose(back.stacked(), driving_track.stacked(), rtol=0, atol=1e-4)
    part = driving_track.select(slice(10, 20))
    assert part.num_frames == 10
    np.testing.assert_array_equal(part.landmarks[0], driving_track.landmarks[10])


# ---------------------------------------------------------------------------------------------------------------------
# backends and the task model file
# ---------------------------------------------------------------------------------------------------------------------
def test_task_backend_without_file_gives_the_store_error(tmp_path):
    store = ModelStore.at(tmp_path)
    with pytest.raises(MissingModelFiles) as err:
        FaceDetector(backend="task", store=store).prepare()
    msg = str(err.value)
    assert "face/face_landmarker" in msg and "face_landmarker.task" in msg
    assert str(tmp_path / "portrait_animation" / "face" / "face_landmarker.task") in msg
    assert "download" in msg
    # auto: no task file, bundled models present -> bundled
    assert FaceDetector(backend="auto", store=store).resolved_backend() == "bundled"


def test_auto_without_bundled_models_needs_the_task_file(tmp_path, monkeypatch):
    import portrait_animation.face.detect as detect

    monkeypatch.setattr(detect, "bundled_available", lambda: False)
    with pytest.raises(MissingModelFiles):
        FaceDetector(backend="auto", store=ModelStore.at(tmp_path)).prepare()
    with pytest.raises(RuntimeError, match="no bundled face models"):
        FaceDetector(backend="bundled").prepare()


def test_corrupt_task_file_is_reported(tmp_path):
    dest = tmp_path / "portrait_animation" / "face" / "face_landmarker.task"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"<html>not a model</html>")
    with pytest.raises(CorruptModelFile, match="zip"):
        FaceDetector(backend="auto", store=ModelStore.at(tmp_path)).prepare()


def _stand_in_task_bundle(path: Path) -> None:
    """A .task zip built from mediapipe's bundled tflite models. It runs through the real Tasks FaceLandmarker API,
    but its landmark model is not the official one, so only the code path (not the landmark values) can be checked."""
    import mediapipe

    modules = Path(mediapipe.__file__).parent / "modules"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.write(modules / "face_detection" / "face_detection_short_range.tflite", "face_detector.tflite")
        z.write(modules / "face_landmark" / "face_landmark.tflite", "face_landmarks_detector.tflite")


def test_task_backend_code_path(tmp_path, data_dir):
    dest = tmp_path / "portrait_animation" / "face" / "face_landmarker.task"
    dest.parent.mkdir(parents=True)
    _stand_in_task_bundle(dest)
    det = FaceDetector(backend="auto", store=ModelStore.at(tmp_path))
    assert det.resolved_backend() == "task"  # a present task file wins in auto mode
    try:
        track = det.track(load_image(data_dir / "harris.jpg"))
    finally:
        det.close()
    assert track.backend == "task" and track.complete
    assert track.landmarks[0].shape == (478, 3) and track.landmarks[0].dtype == np.float32


# ---------------------------------------------------------------------------------------------------------------------
# native resources: graphs shared between identical settings, returned when a detector is discarded
# ---------------------------------------------------------------------------------------------------------------------
def rss_mb() -> float:
    """This process's resident memory (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture
def graph_pool(monkeypatch):
    """A private pool keeping two idle graph sets, so a test sees only its own detectors."""
    import portrait_animation.face.detect as detect

    pool = detect.GraphPool(max_idle=2)
    monkeypatch.setattr(detect, "GRAPHS", pool)
    yield pool
    pool.clear_idle()


@pytest.fixture
def backend_spy(monkeypatch):
    """Records every bundled graph set built and closed."""
    import portrait_animation.face.detect as detect

    spy = {"built": [], "closed": []}
    real_init, real_close = detect._BundledBackend.__init__, detect._BundledBackend.close
    monkeypatch.setattr(detect._BundledBackend, "__init__",
                        lambda self, *a: (spy["built"].append(self), real_init(self, *a))[-1])
    monkeypatch.setattr(detect._BundledBackend, "close",
                        lambda self: (spy["closed"].append(self), real_close(self))[-1])
    return spy


def test_identical_settings_share_one_graph_set(graph_pool, backend_spy, data_dir):
    a = FaceDetector(backend="bundled", max_faces=2, min_confidence=0.4)
    b = FaceDetector(backend="bundled", max_faces=2, min_confidence=0.4)
    c = FaceDetector(backend="bundled", max_faces=3, min_confidence=0.4)
    image = load_image(data_dir / "harris.jpg")
    tracks = [det.track(image) for det in (a, b, c, copy.deepcopy(a))]
    np.testing.assert_array_equal(tracks[0].landmarks[0], tracks[1].landmarks[0])
    assert len(backend_spy["built"]) == 2 and not backend_spy["closed"]  # a, b and the copy share one set
    assert graph_pool.stats() == {"sets": 2, "idle": 2, "graphs": 6, "users": 0}  # no lease outlives its call
    with graph_pool.lease(a.graph_key()) as graphs:  # a lease in progress is shared, not duplicated
        assert b.detect(image[0]) and graph_pool.stats()["users"] == 1 and graphs.users == 1
    assert a.active_backend == "bundled" and len(backend_spy["built"]) == 2


def test_kept_detectors_hold_no_graphs(graph_pool, backend_spy):
    """ComfyUI 0.33+ keeps node outputs (detectors among them) until RAM runs short: detectors it keeps must not
    keep MediaPipe graphs open. Twelve detectors with their own settings, all kept alive: at most two sets stay."""
    frame = np.zeros((96, 96, 3), np.uint8)
    kept = []
    for i in range(12):
        det = FaceDetector(backend="bundled", max_faces=1 + i % 4, min_confidence=0.30 + 0.02 * i)
        assert det.detect(frame) == []
        kept.append(det)
        stats = graph_pool.stats()
        assert stats["users"] == 0 and stats["sets"] <= 2 and stats["graphs"] <= 6, (i, stats)
    built, closed = backend_spy["built"], backend_spy["closed"]
    assert len(built) == 12 and len(closed) == 10 and all(g in built for g in closed)
    assert kept[0].detect(frame) == [] and len(built) == 13  # an old detector still works: its set is rebuilt
    graph_pool.clear_idle()
    assert graph_pool.stats()["graphs"] == 0 and sorted(map(id, closed)) == sorted(map(id, built))


def test_a_cancelled_track_returns_its_lease(graph_pool, data_dir):
    def cancel(n):
        raise KeyboardInterrupt("cancelled")

    det = FaceDetector(backend="bundled", max_faces=2, min_confidence=0.45)
    with pytest.raises(KeyboardInterrupt):
        det.track(load_image(data_dir / "harris.jpg"), progress=cancel)
    assert graph_pool.stats()["users"] == 0


def test_memory_stays_flat_over_many_varied_detectors(graph_pool):
    """50 detectors, each with settings of its own, used once and dropped (what a batch over settings does to a
    server): after a warm-up the process's memory stays within 10% (unclosed graphs would add ~40 MB each)."""
    frame = np.zeros((128, 128, 3), np.uint8)

    def one_job(i: int) -> None:
        det = FaceDetector(backend="bundled", max_faces=1 + i % 4, min_confidence=0.30 + 0.01 * i)
        det.detect(frame)

    for i in range(10):
        one_job(i)
    warm = rss_mb()
    for i in range(10, 50):
        one_job(i)
    end = rss_mb()
    assert end <= warm * 1.10, f"resident memory grew from {warm:.0f} MB to {end:.0f} MB over 40 detectors"
    assert graph_pool.stats()["graphs"] <= 6


def test_user_facing_errors_show_their_plain_class_name():
    """ComfyUI names a failed node's exception ``module.qualname`` unless the module is ``builtins``; the pack's
    module path would be built from its install folder, so its errors present themselves as builtins."""
    from portrait_animation.audio.separation import VocalSeparationUnavailable
    from portrait_animation.loaders.checkpoint import CheckpointKeyError, UnsafeCheckpoint
    from portrait_animation.media import MediaError

    for cls in (NoFaceError, MediaError, MissingModelFiles, CorruptModelFile, UnsafeCheckpoint, CheckpointKeyError,
                VocalSeparationUnavailable):
        assert cls.__module__ == "builtins", cls
        assert cls.__real_module__.startswith("portrait_animation."), cls.__real_module__
    err = NoFaceError([1], 3, "images")
    assert isinstance(err, ValueError)
    assert traceback.format_exception_only(type(err), err)[0].startswith("NoFaceError: no face found in frame 1")
    back = pickle.loads(pickle.dumps(err))  # pickled through the real module
    assert type(back) is NoFaceError and str(back) == str(err) and back.frames == [1] and back.total == 3


# ---------------------------------------------------------------------------------------------------------------------
# crop and paste-back
# ---------------------------------------------------------------------------------------------------------------------
def test_crop_shapes_and_info(detector, data_dir):
    image = load_image(data_dir / "dicaprio.jpg")
    track = detector.track(image)
    crops, info = crop_faces(image, track, size=384, scale=1.6, offset_y=0.0)
    assert crops.shape == (1, 384, 384, 3) and crops.dtype == torch.float32
    assert 0.0 <= crops.min() and crops.max() <= 1.0
    x0, y0, side = info.box(0)
    lm = track.points(0)
    extent = (lm.max(0) - lm.min(0)).max()
    assert abs(side - 1.6 * extent) <= 1
    assert x0 <= lm[:, 0].min() and lm[:, 0].max() <= x0 + side and y0 <= lm[:, 1].min() and lm[:, 1].max() <= y0 + side
    assert (info.height, info.width, info.size) == (1691, 1691, 384)
    assert info.outside[0] == (x0 < 0 or y0 < 0 or x0 + side > 1691 or y0 + side > 1691)
    back = CropInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    np.testing.assert_array_equal(back.boxes, info.boxes)
    # landmarks moved into crop coordinates land on the same features
    in_crop = crop_track(track, info)
    assert (in_crop.height, in_crop.width) == (384, 384)
    nose = in_crop.points(0)[NOSE_TIP]
    assert 0.3 * 384 < nose[0] < 0.7 * 384 and 0.3 * 384 < nose[1] < 0.8 * 384


def _portrait_off_centre(data_dir) -> torch.Tensor:
    """A non-square frame (700 x 420) whose face sits near the top-left corner, so the crop box leaves the frame."""
    face = load_image(data_dir / "harris.jpg")[0, 60:440, 80:460]
    frame = torch.linspace(0, 1, 700)[:, None, None].expand(700, 420, 3).clone()
    frame[:380, :380] = face
    return frame[None]


@pytest.mark.parametrize("shape", ["rounded_rectangle", "ellipse", "rectangle"])
def test_paste_back_round_trip(detector, data_dir, shape):
    original = _portrait_off_centre(data_dir)
    track = detector.track(original)
    crops, info = crop_faces(original, track, size=512, scale=2.2)
    assert info.outside[0]  # the box leaves the frame: padding and partial paste are exercised
    x0, y0, s = info.box(0)
    assert x0 < 0 or y0 < 0
    out, mask = paste_back(crops, info, original, feather=0.1, shape=shape)
    assert out.shape == original.shape and mask.shape == (1, 700, 420)
    in_box = np.zeros((700, 420), bool)
    in_box[max(0, y0):y0 + s, max(0, x0):x0 + s] = True
    m, diff = mask[0].numpy(), (out - original)[0].abs().numpy()
    assert (m[~in_box] == 0).all() and m.max() == 1.0 and ((m > 0) & (m < 1)).any()
    assert (diff[m == 0] == 0).all()  # bit-exact outside the mask
    # resampling error only (area down to 512, cubic back up); a box misplaced by 1 px gives about 3x these
    assert diff[in_box].mean() < 0.008 and np.percentile(diff[in_box], 99) < 0.08
    # a modified crop changes only the masked area, and fully where the mask is 1
    red = torch.zeros_like(crops)
    red[..., 0] = 1.0
    out, mask = paste_back(red, info, original, feather=0.1, shape=shape)
    changed = (out != original)[0].any(-1).numpy()
    m = mask[0].numpy()
    assert not changed[m == 0].any()
    assert changed[m > 0.01].all()
    red_px = np.array([[1.0, 0.0, 0.0]]).repeat((m == 1).sum(), 0)
    np.testing.assert_allclose(out[0].numpy()[m == 1], red_px, rtol=0, atol=1e-6)  # resized red is red
    blend = original[0].numpy() * (1 - m[..., None]) + np.array([1.0, 0, 0]) * m[..., None]
    np.testing.assert_allclose(out[0].numpy(), blend, atol=1e-5)


def test_paste_back_batches_sizes_and_rules(detector, data_dir):
    image = load_image(data_dir / "harris.jpg")
    track = detector.track(image)
    crops, info = crop_faces(image, track, size=256)
    generated = torch.stack([torch.full((200, 200, 3), v) for v in (0.1, 0.5, 0.9)])  # other size, 3 frames
    out, mask = paste_back(generated, info, image, feather=8, feather_unit="pixels")
    assert out.shape == (3, 512, 512, 3) and mask.shape == (3, 512, 512)
    cy, cx = int(track.boxes[0, [1, 3]].mean()), int(track.boxes[0, [0, 2]].mean())
    assert [round(float(out[i, cy, cx, 0]), 3) for i in range(3)] == [0.1, 0.5, 0.9]
    # a larger original with the same aspect ratio: boxes scale with it
    big = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear")
    out1, mask1 = paste_back(crops, info, image)
    out2, mask2 = paste_back(crops, info, big.permute(0, 2, 3, 1))
    assert out2.shape == (1, 1024, 1024, 3) and abs(mask2.sum() / mask1.sum() - 4) < 0.05
    with pytest.raises(ValueError, match="crop info was made from 512x512"):
        paste_back(crops, info, torch.zeros((1, 300, 500, 3)))
    # frame rules: 2 originals, 5 generated frames
    originals = torch.cat([image, image.flip(2)])
    info2 = CropInfo(height=512, width=512, boxes=np.repeat(info.boxes, 2, axis=0), size=256)
    far = (5, 5)  # a pixel outside the box shows which original was used
    loop, _ = paste_back(generated[[0, 1, 2, 0, 1]], info2, originals, frame_rule="loop")
    clamp, _ = paste_back(generated[[0, 1, 2, 0, 1]], info2, originals, frame_rule="clamp")
    pick = [0, 1, 0, 1, 0], [0, 1, 1, 1, 1]
    for out_, idx in ((loop, pick[0]), (clamp, pick[1])):
        for i, j in enumerate(idx):
            assert torch.equal(out_[i, far[0], far[1]], originals[j, far[0], far[1]])
    with pytest.raises(ValueError, match="3 frames but the crop info has 2"):
        paste_back(generated, info2, torch.cat([image] * 3))


def test_box_mask_profiles():
    for shape in ("rounded_rectangle", "ellipse", "rectangle"):
        m = box_mask(101, 0.2, "fraction", shape)
        assert m.shape == (101, 101) and m.dtype == np.float32
        assert m[50, 50] == 1.0 and m[0, 50] < 0.01 and m[0, 0] < 0.01
        row = m[50, :51]
        assert (np.diff(row) >= 0).all()  # rises monotonically from the edge to the centre
    assert (box_mask(64, 0) == 1).all()
    assert box_mask(64, 4, "pixels", "rectangle")[32, 4] == 1.0 and box_mask(64, 4, "pixels", "rectangle")[32, 3] < 1


def test_stable_modes_reduce_jitter(driving_track):
    def jitter(boxes):  # mean absolute frame-to-frame acceleration of centre and side
        centre = np.stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 2] / 2, boxes[:, 2]], 1)
        return np.abs(np.diff(centre, n=2, axis=0)).mean()

    per_frame = compute_crop_boxes(driving_track, mode="per_frame")
    smooth = compute_crop_boxes(driving_track, mode="smooth", window=9)
    fixed = compute_crop_boxes(driving_track, mode="fixed")
    assert jitter(per_frame) > 0.5  # the raw landmarks do jitter
    assert jitter(smooth) < 0.5 * jitter(per_frame)
    assert jitter(fixed) == 0 and (fixed == fixed[0]).all()
    # the fixed box holds every per-frame box
    assert (fixed[0, 0] <= per_frame[:, 0] + 1).all() and (fixed[0, 1] <= per_frame[:, 1] + 1).all()
    assert (fixed[0, :2] + fixed[0, 2] >= per_frame[:, :2] + per_frame[:, 2:] - 1).all()


def test_moving_average_is_centred():
    x = np.arange(10, dtype=np.float64)[:, None]
    np.testing.assert_allclose(moving_average(x, 3)[1:-1, 0], x[1:-1, 0])  # a linear ramp is unchanged inside
    np.testing.assert_allclose(moving_average(x, 3)[[0, -1], 0], [0.5, 8.5])  # shorter windows at the ends
    np.testing.assert_allclose(moving_average(x, 1), x)


def test_crop_rejects_mismatched_inputs(driving_track, videos):
    video = videos["driving_video.mp4"]
    with pytest.raises(ValueError, match="120 frames but input 'images' has 10"):
        crop_faces(video[:10], driving_track)
    with pytest.raises(ValueError, match="512x512 frames but input 'images' is 256x512"):
        crop_faces(video[:, :, :256], driving_track)
    with pytest.raises(ValueError, match="empty batch"):
        crop_faces(video[:0], driving_track)
    with pytest.raises(ValueError, match="unknown stability mode"):
        crop_faces(video, driving_track, mode="steady")


def test_draw_landmarks_preview(driving_track, videos):
    video = videos["driving_video.mp4"][:4]
    preview = draw_landmarks(video, driving_track.select(range(4)), max_side=256)
    assert preview.shape == (4, 256, 256, 3) and preview.dtype == torch.float32
    diff = np.abs(preview[0].numpy() - np.asarray(video[0, ::2, ::2], np.float32) / 255)
    assert (diff.max(-1) > 0.3).mean() > 0.005  # something was drawn
