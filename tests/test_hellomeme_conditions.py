"""HelloMeme driving conditions: geometry, pose image, toolkit pre/post-processing, PD-FGC encoder, full flow.

The official ONNX files are not available offline: the toolkit is exercised with synthetic network outputs, fake
sessions (objects with ``run``) and, where the ``onnx`` package is installed, tiny ONNX graphs built here.
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from portrait_animation.motion.hellomeme import conditions as cond
from portrait_animation.motion.hellomeme import geometry as geo
from portrait_animation.motion.hellomeme import pdfgc
from portrait_animation.motion.hellomeme import pose_image
from portrait_animation.motion.hellomeme import toolkit as tk
from portrait_animation.runtime.onnx import onnx_providers


def _rotation(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


def _template_face(box, n: int = 222) -> np.ndarray:
    """A plausible 222-point layout inside ``box`` (x0, y0, x1, y1): an ellipse, eye corners 74/96 level, pupils,
    nose and mouth corners where the alignment templates expect them."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([cx + 0.5 * w * np.cos(t), cy + 0.5 * h * np.sin(t)], axis=1).astype(np.float32)
    fx = lambda u: x0 + u * w  # noqa: E731
    fy = lambda v: y0 + v * h  # noqa: E731
    pts[74] = (fx(0.22), fy(0.40))
    pts[96] = (fx(0.78), fy(0.40))
    pts[182] = (fx(0.32), fy(0.40))
    pts[202] = (fx(0.68), fy(0.40))
    pts[36] = (fx(0.50), fy(0.58))
    pts[33] = (fx(0.50), fy(0.42))
    pts[149] = (fx(0.36), fy(0.76))
    pts[133] = (fx(0.64), fy(0.76))
    return pts


# ---- geometry ----------------------------------------------------------------------------------------------------------
def test_umeyama_recovers_a_similarity_and_never_reflects():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (6, 2))
    scale, rot, shift = 1.7, _rotation(23.0), np.array([12.0, -5.0])
    dst = src @ (scale * rot).T + shift
    t = geo.umeyama_similarity(src, dst)
    np.testing.assert_allclose(t[:2, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(t[:2, 2], shift, atol=1e-7)
    mirrored = dst * np.array([-1.0, 1.0])  # a reflection cannot be represented: the fit stays a rotation
    t2 = geo.umeyama_similarity(src, mirrored)
    assert np.linalg.det(t2[:2, :2]) > 0


def test_warp_affine_integer_shift_is_an_exact_copy_and_outside_is_black():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    m = np.array([[1.0, 0, -3], [0, 1, -4]])
    for interp in ("linear", "cubic"):
        out = geo.warp_affine(img, m, (30, 20), interp)
        np.testing.assert_array_equal(out, img[4:24, 3:33])
    far = np.array([[1.0, 0, 500], [0, 1, 500]])
    assert not geo.warp_affine(img, far, (30, 20)).any()


def test_warp_affine_is_close_to_opencv():
    rng = np.random.default_rng(2)
    img = cv2.GaussianBlur(rng.integers(0, 256, (120, 100, 3), dtype=np.uint8), (9, 9), 0)
    m = cv2.getRotationMatrix2D((50.0, 60.0), 17.0, 0.8)
    for flag, name in ((cv2.INTER_LINEAR, "linear"), (cv2.INTER_CUBIC, "cubic")):
        ours = geo.warp_affine(img, m, (90, 110), name).astype(int)
        theirs = cv2.warpAffine(img, m, (90, 110), flags=flag).astype(int)
        assert np.abs(ours - theirs).max() <= 3  # OpenCV 4 quantises coordinates; the values stay within rounding
    np.testing.assert_array_equal(geo.invert_affine(m), cv2.invertAffineTransform(m))


def test_crop_and_resize_one_square_box_for_the_clip():
    frames = np.zeros((3, 300, 400, 3), np.uint8)
    lm = np.stack([_template_face((150 + 10 * i, 120, 230 + 10 * i, 210)) for i in range(3)])
    out, out_lm, (x0, y0, x1, y1) = geo.crop_and_resize(frames, lm, 512, crop=True)
    assert out.shape == (3, 512, 512, 3) and out.dtype == np.uint8
    assert x1 - x0 == y1 - y0 and 0 <= x0 and 0 <= y0 and x1 <= 400 and y1 <= 300
    np.testing.assert_allclose(out_lm, (lm - (x0, y0)) * 512 / (x1 - x0), rtol=1e-6)
    # the box holds 3x the mean face size (90 px tall faces -> 270 px; corners truncated to whole pixels)
    assert 269 <= x1 - x0 <= 270
    # the face sits above the centre (box moved up by 0.115 of its side)
    assert out_lm[..., 1].mean() > 256
    whole, whole_lm, box = geo.crop_and_resize(frames, lm, 512, crop=False)
    assert box == (0, 0, 400, 300)
    np.testing.assert_allclose(whole_lm, lm * (512 / 400, 512 / 300), rtol=1e-6)


def test_landmark_warp_centres_and_fills_the_crop():
    pts = _template_face((100, 80, 220, 230))
    warp = geo.landmark_warp(pts, 0, 224, 0.35)
    mapped = geo.transform_points(pts, warp.matrix)
    ext = mapped.max(0) - mapped.min(0)
    np.testing.assert_allclose((mapped.max(0) + mapped.min(0)) / 2, (112, 112), atol=1e-3)
    assert abs(ext.max() - 224 * 0.65) < 1e-3


def test_arkit_crop_rotates_the_eyes_level():
    pts = _template_face((100, 80, 220, 230))
    centre = pts.mean(0)
    tilted = ((pts - centre) @ _rotation(25.0).T + centre).astype(np.float32)
    img = np.full((320, 320, 3), 128, np.uint8)
    crop, m = geo.arkit_input(img, tilted)
    assert crop.shape == (224, 224, 3)
    eyes = geo.transform_points(tilted[[74, 96]], m)
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-3 and eyes[0, 0] < eyes[1, 0]


def test_threedmm_translation_conversion():
    pts = _template_face((206, 206, 306, 306))  # centred in a 512 image
    img = np.zeros((512, 512, 3), np.uint8)
    crop, warp = geo.threedmm_input(img, pts)
    assert crop.shape == (224, 224, 3)
    coeffs = np.zeros((1, 1201), np.float32)
    coeffs[0, 1168:1171] = (0.1, -0.2, 0.3)
    coeffs[0, -3:] = (0.01, 0.02, -4.0)
    angles, trans = geo.threedmm_head_pose(coeffs, warp, (512, 512))
    np.testing.assert_allclose(angles, [[0.1, -0.2, 0.3]])
    np.testing.assert_allclose(trans, [[0.01, 0.02, -4.0 * warp.scale]], rtol=1e-6)
    # off-centre faces move along x (towards the face) and along y with the flipped image axis
    pts2 = pts + np.float32(100)
    _, warp2 = geo.threedmm_input(img, pts2)
    _, trans2 = geo.threedmm_head_pose(coeffs, warp2, (512, 512))
    assert trans2[0, 0] > 0.01 and trans2[0, 1] < 0.02


def test_pose_image_square_colours_and_translation():
    rot = [np.zeros((1, 3), np.float32)] * 2
    trans = [np.array([[0.0, 0.0, -4.0]], np.float32), np.array([[0.05, 0.0, -4.0]], np.float32)]
    ref = np.array([[0.0, 0.0, -4.0]], np.float32)
    cond_img, corners = pose_image.pose_images(rot, trans, ref, 512, trans_ratio=0.0)
    assert cond_img.shape == (3, 2, 512, 512) and set(cond_img.unique().tolist()) == {-1.0, 1.0}
    half = pose_image.POSE_FOCAL * pose_image.FOCAL_SCALE / 4.0  # 0.05 half side at depth 0.05 * 4
    np.testing.assert_allclose(corners[0], [[256 - half, 256 + half], [256 - half, 256 - half],
                                            [256 + half, 256 - half], [256 + half, 256 + half]], atol=1e-6)
    np.testing.assert_allclose(corners[1], corners[0])  # trans_ratio 0: the driving translation is ignored
    y, x = 256, int(256 - half)  # left edge: corner 0 -> corner 1, BGR (0, 255, 0) = green in RGB
    assert cond_img[:, 0, y, x].tolist() == [-1.0, 1.0, -1.0]
    y, x = int(256 - half), 256  # top edge: corner 1 -> corner 2, BGR (255, 0, 0) = blue in RGB
    assert cond_img[:, 0, y, x].tolist() == [-1.0, -1.0, 1.0]
    _, moved = pose_image.pose_images(rot, trans, ref, 512, trans_ratio=1.0)
    shift = pose_image.POSE_FOCAL * 0.05 / 4.0
    np.testing.assert_allclose(moved[1] - moved[0], np.tile([shift, 0.0], (4, 1)), atol=1e-6)
    assert pose_image.negative_pose_image(512, 3).shape == (1, 3, 3, 512, 512)


def test_thick_lines_are_clipped_like_current_opencv():
    assert pose_image.clip_segment((-10, 5), (20, 5), 10, 10) == (True, (0, 5), (9, 5))
    assert pose_image.clip_segment((-10, -10), (-1, 30), 10, 10)[0] is False
    inside = np.zeros((64, 64, 3), np.uint8)
    pose_image.draw_thick_line(inside, (10, 12), (50, 40), (0, 255, 0), 15)
    ref = cv2.line(np.zeros((64, 64, 3), np.uint8), (10, 12), (50, 40), (0, 255, 0), 15)
    np.testing.assert_array_equal(inside, ref)  # nothing changes for segments inside the image
    far = np.zeros((64, 64, 3), np.uint8)
    pose_image.draw_thick_line(far, (-5000, 30), (5000, 34), (255, 255, 255), 15)
    assert far[30:34, :, 0].all() and not far[:15, :, 0].any()


def test_pose_image_yaw_turns_the_square():
    rot = [np.array([[0.0, 0.5, 0.0]], np.float32)]
    ref = np.array([[0.0, 0.0, -4.0]], np.float32)
    _, c = pose_image.pose_images(rot, [ref], ref, 512)
    left, right = c[0, 1, 1] - c[0, 0, 1], c[0, 2, 1] - c[0, 3, 1]  # heights of the two vertical edges
    assert abs(left - right) > 1.0  # perspective: one side nearer than the other
    np.testing.assert_allclose(pose_image.rotation_matrices(np.zeros((1, 3)))[0], np.eye(3))


def test_pdfgc_warp_identity_and_encoder_input():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    lm = np.zeros((222, 2))
    lm[list(geo.PDFGC_POINTS)] = geo.PDFGC_TEMPLATE * 224
    warped, m = geo.pdfgc_warp(img, lm)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    np.testing.assert_array_equal(warped, img)
    x = geo.bgr_to_signed_rgb(warped)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert float(x[0, 5, 7]) == pytest.approx(img[5, 7, 2] / 255 * 2 - 1, abs=1e-6)  # channel 0 is red


def test_face_part_crops_shapes_and_fixed_boxes():
    img = np.full((2, 256, 256, 3), 90, np.uint8)
    lm = np.stack([_template_face((60, 50, 196, 210)), _template_face((64, 52, 200, 212))])
    crops, align, parts = geo.face_part_crops(img, lm)
    assert crops.shape == (2, 3, 224, 224, 3) and align.shape == (2, 2, 3) and parts.shape == (3, 2, 3)
    assert (parts[:, 0, 1] == 0).all() and np.allclose(parts[:, 0, 0], parts[:, 1, 1])  # scale only, no rotation
    x = geo.clip_normalize(crops[0])
    assert x.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), (90 / 255 - np.array(geo.CLIP_MEAN)) / geo.CLIP_STD, rtol=1e-4)


def test_coefficient_tokens():
    c = torch.tensor([[[0.0, 0.5]]])
    tok = geo.coefficient_tokens(c, 8, 20.0)
    assert tok.shape == (1, 1, 2, 8)
    np.testing.assert_allclose(tok[0, 0, 0].numpy(), [1, 1, 1, 1, 0, 0, 0, 0])
    freqs = np.exp(-math.log(10000) * np.arange(4) / 4)
    np.testing.assert_allclose(tok[0, 0, 1].numpy(), np.concatenate([np.cos(10 * freqs), np.sin(10 * freqs)]),
                               atol=1e-6)


# ---- toolkit: detector decoding, NMS, smoothing, tracking ---------------------------------------------------------------
def _cells(stride: int) -> int:
    return math.ceil(tk.DET_INPUT_HEIGHT / stride) * math.ceil(tk.DET_INPUT_WIDTH / stride)


def _peaked_distribution(values: np.ndarray) -> np.ndarray:
    """Logits of (cells, 4 * 8) whose softmax expectation per side is ``values`` (cells, 4) (in bins)."""
    logits = np.full(values.shape + (8,), -60.0)
    lo = np.floor(values).astype(int)
    frac = values - lo
    for idx in np.ndindex(values.shape):
        logits[idx + (lo[idx],)] = np.log(max(1 - frac[idx], 1e-30))
        if lo[idx] < 7:
            logits[idx + (lo[idx] + 1,)] = np.log(max(frac[idx], 1e-30))
    return logits.reshape(values.shape[0], 32)


def _detector_outputs(box_in_input=None):
    """Raw NanoDet outputs with one face at ``box_in_input`` (x0, y0, x1, y1 in the 160x272 input), on stride 32."""
    scores = [np.zeros((_cells(s),), np.float32) for s in tk.DET_STRIDES]
    dists = [np.zeros((_cells(s), 32), np.float32) for s in tk.DET_STRIDES]
    if box_in_input is not None:
        x0, y0, x1, y1 = box_in_input
        cols = math.ceil(tk.DET_INPUT_WIDTH / 32)
        r, c = int(round((y0 + y1) / 2 / 32)), int(round((x0 + x1) / 2 / 32))
        cell = r * cols + c
        ax, ay = c * 32, r * 32
        scores[2][cell] = 0.9
        scores[2][cell + 1] = 0.8  # a duplicate, suppressed by NMS
        d = np.array([[ax - x0, ay - y0, x1 - ax, y1 - ay], [ax + 32 - x0, ay - y0, x1 - ax - 32, y1 - ay]]) / 32
        dists[2][[cell, cell + 1]] = _peaked_distribution(np.clip(d, 0, 7))
    return scores, dists


def test_letterbox_keeps_aspect_and_centres():
    m = tk.letterbox_matrix(400, 300)  # wide frame: width limits, scale 160 / 400
    corners = np.array([[0, 0, 1], [400, 300, 1]], float) @ m.T
    np.testing.assert_allclose(corners[:, :2], [[0, 136 - 60], [160, 136 + 60]])
    tensor, _ = tk.detector_input(np.zeros((300, 400, 3), np.uint8))
    assert tensor.shape == (1, 3, 272, 160) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, :, 0, 0], -np.array(tk.DET_MEAN_BGR) / np.array(tk.DET_STD_BGR), rtol=1e-5)


def test_decode_detections_box_nms_and_threshold():
    m = tk.letterbox_matrix(320, 544)  # exactly 2x the input size
    scores, dists = _detector_outputs((40, 60, 120, 180))
    boxes, probs = tk.decode_detections(scores, dists, m, (544, 320))
    assert boxes.shape == (1, 4) and boxes.dtype == np.int32
    np.testing.assert_allclose(boxes[0], [80, 120, 240, 360], atol=2)
    assert probs[0] == pytest.approx(0.9)
    empty, _ = tk.decode_detections(*_detector_outputs(None), m, (544, 320))
    assert empty.shape == (0, 4)


def test_hard_nms_keeps_best_of_overlaps():
    rows = np.array([[0, 0, 10, 10, 0.5], [1, 1, 11, 11, 0.9], [50, 50, 60, 60, 0.7]], float)
    kept = tk.hard_nms(rows, 0.3)
    np.testing.assert_array_equal(kept[:, 4], [0.9, 0.7])


def test_smoother_holds_still_points_and_follows_fast_motion():
    pts = _template_face((100, 100, 200, 220))
    s = tk.LandmarkSmoother()
    np.testing.assert_array_equal(s.smooth(pts, 150.0), pts)
    np.testing.assert_array_equal(s.smooth(pts.copy(), 150.0), pts)  # no motion: nothing moves (no NaN)
    jitter = pts + np.float32(0.05)
    out = s.smooth(jitter, 150.0)
    assert np.abs(out - pts).max() < 0.05  # small jitter is damped
    jump = pts + np.float32(40)
    out = s.smooth(jump, 150.0)
    assert np.abs(out - jump).max() < np.abs(out - pts).min()  # a big move is followed mostly
    assert tk.region_speed(0.0, tk.SMOOTH_REGIONS[0]) == 0.0
    assert tk.region_speed(1.0, tk.SMOOTH_REGIONS[0]) == tk.SMOOTH_REGIONS[0].fast


class _BlobDetector:
    """Stands in for the ONNX detector: the box of the bright pixels of a frame, or nothing."""

    def detect(self, image_bgr):
        ys, xs = np.nonzero(image_bgr[..., 1] > 200)
        if len(xs) == 0:
            return np.zeros((0, 4), np.int32), np.zeros((0,), np.float32)
        return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.int32), np.array([0.9], np.float32)


class _BlobLandmarks:
    """Stands in for the landmark model: the template face fitted to the bright blob of the 128 crop."""

    def predict(self, crop):
        ys, xs = np.nonzero(crop[..., 1] > 200)
        if len(xs) == 0:
            return np.zeros((222, 2), np.float32), np.zeros(3, np.float32), 0.0
        pts = _template_face((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        return pts, np.array([0.0, 0.0, geo.eye_corner_radians(pts)], np.float32), 0.9


def _frames_with_faces(n: int, missing=(), size=(360, 480)) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        f = np.full(size + (3,), 40, np.uint8)
        if i not in missing:
            cv2.ellipse(f, (200 + 4 * i, 170), (70, 95), 0, 0, 360, (230, 230, 230), -1)
        frames.append(f)
    return frames


def test_tracking_finds_the_face_and_reports_frames_without_one():
    frames = _frames_with_faces(5, missing=(1, 3))
    pts = tk.track_landmarks_222(frames, _BlobDetector(), _BlobLandmarks())
    assert [p is None for p in pts] == [False, True, False, True, False]
    centre = pts[0].mean(0)
    assert abs(centre[0] - 200) < 6 and abs(centre[1] - 170) < 8
    from portrait_animation.face.track import NoFaceError

    with pytest.raises(NoFaceError) as err:
        tk.resolve_missing(pts, "driving")
    assert "'driving'" in str(err.value) and "1" in str(err.value) and "3" in str(err.value)
    filled, which = tk.resolve_missing(pts, "driving", on_missing="fill_nearest")
    assert filled.shape == (5, 222, 2) and which == {1: 0, 3: 2}
    with pytest.raises(NoFaceError):
        tk.resolve_missing([None, None], "reference", on_missing="fill_nearest")


def test_tracker_drops_small_faces():
    small = np.full((200, 200, 3), 40, np.uint8)
    cv2.circle(small, (100, 100), 30, (230, 230, 230), -1)  # 60 px: below the 96 px minimum
    assert tk.track_landmarks_222([small], _BlobDetector(), _BlobLandmarks()) == [None]


def test_approximate_head_pose_yaw_sign_flips_with_the_image(data_dir):
    from portrait_animation.face import FaceDetector

    rgb = cv2.cvtColor(cv2.imread(str(data_dir / "harris.jpg")), cv2.COLOR_BGR2RGB)
    det = FaceDetector()
    try:
        track = det.track(np.stack([rgb, np.ascontiguousarray(rgb[:, ::-1])]))
    finally:
        det.close()
    lm = track.stacked()
    h, w = rgb.shape[:2]
    a0, t0 = tk.approximate_head_pose(lm[0], w, h)
    a1, t1 = tk.approximate_head_pose(lm[1], w, h)
    assert a0.shape == (1, 3) and t0.shape == (1, 3)
    assert abs(a0[0, 1]) > math.radians(5) and np.sign(a0[0, 1]) == -np.sign(a1[0, 1])  # yaw
    assert np.sign(a0[0, 2]) == -np.sign(a1[0, 2]) or abs(a0[0, 2]) < 0.03  # roll mirrors too
    assert t0[0, 2] < 0 and np.sign(t0[0, 0]) == -np.sign(t1[0, 0])  # in front of the camera, mirrored x
    assert abs(a0[0, 0] - a1[0, 0]) < math.radians(3)  # pitch is unchanged by a horizontal flip


def test_euler_round_trip():
    a = np.array([0.2, -0.4, 0.1])
    r = pose_image.rotation_matrices(a[None])[0].T  # rotation_matrices returns (Rz Ry Rx)^T
    np.testing.assert_allclose(tk.euler_xyz_from_matrix(r), a, atol=1e-12)


# ---- ONNX sessions (tiny graphs) ---------------------------------------------------------------------------------------
def _constant_model(path, input_shape, outputs: dict):
    """An ONNX graph whose outputs are constants (the input is read, times 0, so it stays connected)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, outs, inits = [], [], []
    nodes.append(helper.make_node("ReduceMean", ["x"], ["m"], axes=list(range(len(input_shape))), keepdims=1))
    nodes.append(helper.make_node("Mul", ["m", "zero"], ["m0"]))
    inits.append(numpy_helper.from_array(np.zeros((1,) * len(input_shape), np.float32), "zero"))
    for name, value in outputs.items():
        value = np.asarray(value, np.float32)
        inits.append(numpy_helper.from_array(value, f"{name}_c"))
        nodes.append(helper.make_node("Reshape", ["m0", f"{name}_s"], [f"{name}_m"]))
        inits.append(numpy_helper.from_array(np.array([1] * value.ndim, np.int64), f"{name}_s"))
        nodes.append(helper.make_node("Add", [f"{name}_m", f"{name}_c"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_models_run_through_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    # detector: one face in the letterboxed input of a 320 x 544 frame
    scores, dists = _detector_outputs((40, 60, 120, 180))
    det_out = {f"cls{k}": s[None, :, None] for k, s in enumerate(scores)}
    det_out.update({f"reg{k}": d[None] for k, d in enumerate(dists)})
    det = tk.FaceBoxDetector.from_file(_constant_model(tmp_path / "det.onnx", (1, 3, 272, 160), det_out), "cpu")
    boxes, _ = det.detect(np.zeros((544, 320, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[80, 120, 240, 360]], atol=2)
    # landmarks: a face filling the middle of the crop
    face = _template_face((24, 20, 104, 112)) / 128
    lmk = tk.LandmarkModel.from_file(_constant_model(
        tmp_path / "lmk.onnx", (1, 3, 128, 128),
        {"landmark": face.T.reshape(1, -1), "euler": [[0.1, -0.2]], "prob": [[0.95]]}), "cpu")
    res = tk.align_face(lmk, np.zeros((300, 300, 3), np.uint8), box=(100, 80, 200, 200))
    assert res.points.shape == (222, 2) and res.prob == pytest.approx(0.95)
    assert np.allclose(res.euler[:2], [0.1, -0.2])
    # 3DMM and ARKit
    coeffs = np.zeros((1, 1201), np.float32)
    coeffs[0, 1168:1171] = (0.1, 0.2, 0.3)
    coeffs[0, -3:] = (0.0, 0.0, -5.0)
    pose = tk.HeadPoseModel.from_file(_constant_model(tmp_path / "3dmm.onnx", (1, 3, 224, 224),
                                                      {"coeffs": coeffs}), "cpu")
    angles, trans = pose.pose(np.zeros((512, 512, 3), np.uint8), _template_face((200, 180, 320, 330)))
    np.testing.assert_allclose(angles, [[0.1, 0.2, 0.3]])
    assert trans.shape == (1, 3) and trans[0, 2] < 0
    arkit = tk.BlendshapeModel.from_file(_constant_model(tmp_path / "arkit.onnx", (1, 3, 224, 224),
                                                         {"bs": np.linspace(0, 1, 51)[None]}), "cpu")
    bs = arkit.coefficients(np.zeros((512, 512, 3), np.uint8), _template_face((200, 180, 320, 330)))
    assert bs.shape == (51,) and bs[-1] == pytest.approx(1.0)
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]


def test_model_files_reports_missing_toolkit_files(tmp_path):
    from portrait_animation.loaders.store import MissingModelFiles, ModelStore

    with pytest.raises(MissingModelFiles) as err:
        tk.model_files(["detector", "threedmm"], store=ModelStore.at(tmp_path))
    assert "hello_face_det" in str(err.value) and "hello_3dmm" in str(err.value)
    with pytest.raises(KeyError):
        tk.model_files(["nope"], store=ModelStore.at(tmp_path))


# ---- PD-FGC encoder ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fan_encoder():
    torch.manual_seed(0)
    return pdfgc.FanEncoder().eval()


def _save_encoder(enc, folder, drop_counters=False):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in enc.state_dict().items()
          if not (drop_counters and k.endswith("num_batches_tracked"))}
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "FanEncoder", "pose_dim": 6, "eye_dim": 6}))
    return folder


@pytest.mark.slow
def test_fan_encoder_reloads_strictly_and_encodes(tmp_path, fan_encoder):
    folder = _save_encoder(fan_encoder, tmp_path / "pd_fgc_motion")
    enc = pdfgc.load_fan_encoder(folder)
    assert not enc.training
    for k, v in fan_encoder.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    faces = torch.rand(2, 3, 224, 224) * 2 - 1
    codes = pdfgc.encode_faces(enc, faces, batch_size=1)
    assert codes.shape == (1, 2, pdfgc.CODE_DIM) == (1, 2, 548)
    with torch.no_grad():
        torch.testing.assert_close(codes[0], fan_encoder(faces))
    neg = pdfgc.negative_code(enc)
    assert neg.shape == (1, 1, 548)
    with torch.no_grad():
        torch.testing.assert_close(neg[0], fan_encoder(-torch.ones(1, 3, 224, 224)))
    # an export without BatchNorm counters still loads; a missing weight does not
    assert pdfgc.load_fan_encoder(_save_encoder(fan_encoder, tmp_path / "nocount", drop_counters=True))
    from safetensors.torch import load_file, save_file

    from portrait_animation.loaders.checkpoint import CheckpointKeyError

    broken = tmp_path / "broken"
    _save_encoder(fan_encoder, broken)
    sd = load_file(str(broken / "diffusion_pytorch_model.safetensors"))
    del sd["emo_embed.1.weight"]
    save_file(sd, str(broken / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointKeyError, match="emo_embed.1.weight"):
        pdfgc.load_fan_encoder(broken)


def test_fan_encoder_key_layout(fan_encoder):
    keys = fan_encoder.state_dict()
    for k in ("model.conv1.weight", "model.m0.b1_4.conv1.weight", "model.m0.b2_plus_1.bn3.running_var",
              "model.m0.b3_1.conv3.weight", "model.conv2.downsample.2.weight",
              "model.conv_last0.bias", "model.l0.weight", "model.bn_end0.weight", "model.conv6.weight",
              "model.fc.weight", "model.bn5.running_mean", "to_mouth.2.running_var", "mouth_embed.1.weight",
              "eye_embed.1.weight", "emo_embed.1.bias", "to_emo.3.weight"):
        assert k in keys, k
    assert keys["mouth_embed.1.weight"].shape == (500, 512)
    assert keys["model.fc.weight"].shape == (512, 784)
    assert "model.top_m_0.downsample.0.weight" not in keys  # same width: no projection
    assert sum(v.numel() for v in fan_encoder.parameters()) == 8506313


# ---- full flow with stand-in models --------------------------------------------------------------------------------------
class _FakeSession:
    def __init__(self, value):
        self.value = np.asarray(value, np.float32)

    def get_inputs(self):
        return [type("I", (), {"name": "x"})()]

    def get_outputs(self):
        return [type("O", (), {"name": "y"})()]

    def run(self, names, feeds):
        return [self.value.copy()]


def _tiny_expression_encoder() -> torch.nn.Module:
    """A stand-in for the FanEncoder with the same interface ((N, 3, 224, 224) -> (N, 548)), fast on the CPU."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 548)).eval()


def _fake_toolkit():
    toolkit = tk.HelloFaceToolkit(paths={})
    coeffs = np.zeros((1, 1201), np.float32)
    coeffs[0, 1168:1171] = (0.0, 0.3, 0.0)
    coeffs[0, -3:] = (0.0, 0.0, -5.0)
    toolkit._models = {"detector": _BlobDetector(), "landmarks": _BlobLandmarks(),
                       "threedmm": tk.HeadPoseModel(_FakeSession(coeffs)),
                       "arkit": tk.BlendshapeModel(_FakeSession(np.full((1, 51), 0.25)))}
    return toolkit


def _rgb(frames):
    return np.stack([f[..., ::-1] for f in frames])


def test_conditions_pdfgc_flow_and_missing_faces():
    from portrait_animation.face.track import NoFaceError

    fan_encoder = _tiny_expression_encoder()
    frames = _frames_with_faces(4, missing=(2,))
    ref = _rgb(_frames_with_faces(1))[0]
    with pytest.raises(NoFaceError, match=r"frame 2 of 4 of input 'driving'"):
        cond.hellomeme_conditions(ref, _rgb(frames), toolkit=_fake_toolkit(), pdfgc_encoder=fan_encoder)
    c = cond.hellomeme_conditions(torch.from_numpy(ref).float()[None] / 255, _rgb(frames), toolkit=_fake_toolkit(),
                                  pdfgc_encoder=fan_encoder, on_missing="fill_nearest", trans_ratio=0.5)
    assert c.num_frames == 4 and c.filled_frames == {2: 1}
    assert c.condition.shape == (1, 3, 4, 512, 512) and set(c.condition.unique().tolist()) == {-1.0, 1.0}
    assert c.pd_fpg.shape == (1, 4, 548) and c.neg_pd_fpg.shape == (1, 1, 548)
    torch.testing.assert_close(c.pd_fpg[0, 2], c.pd_fpg[0, 1])  # the filled frame repeats its neighbour
    torch.testing.assert_close(c.condition[:, :, 2], c.condition[:, :, 1])
    torch.testing.assert_close(c.driving_images[2], c.driving_images[1])
    assert not torch.equal(c.pd_fpg[0, 0], c.pd_fpg[0, 1])  # other frames have their own expression
    assert c.ref_params["condition"].shape == (1, 3, 1, 512, 512) and c.ref_params["pd_fpg"].shape == (1, 1, 548)
    assert c.reference_image.shape == (1, 512, 512, 3) and c.driving_images.shape == (4, 512, 512, 3)
    assert 0.0 <= float(c.driving_images.min()) and float(c.driving_images.max()) <= 1.0
    assert c.angles.shape == (4, 3) and c.angles[:, 1].allclose(torch.tensor(0.3))
    assert set(c.drive_params()) == {"condition", "pd_fpg", "neg_pd_fpg"}
    x0, y0, x1, y1 = c.crop_box
    assert x1 - x0 == y1 - y0 and "filled" in c.report()
    # the reference's pose image (trans_ratio 0) equals the driving one when the poses are equal
    torch.testing.assert_close(c.ref_params["condition"][:, :, 0], c.condition[:, :, 0])


def test_conditions_arkit_flow():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=224, patch_size=32,
                                           projection_dim=1024)
    clip = transformers.CLIPVisionModelWithProjection(config).eval()
    frames = _frames_with_faces(2)
    c = cond.hellomeme_conditions(_rgb(frames)[0], _rgb(frames), expression="arkit", toolkit=_fake_toolkit(),
                                  clip_encoder=clip)
    assert c.drive_coeff.shape == (1, 2, 51) and c.face_parts.shape == (1, 2, 3, 1024)
    assert c.ref_params["drive_coeff"].shape == (1, 1, 51) and c.ref_params["face_parts"].shape == (1, 1, 3, 1024)
    assert set(c.drive_params()) == {"condition", "drive_coeff", "face_parts"}
    assert c.pd_fpg is None
    with pytest.raises(ValueError, match="ARKit"):
        cond.hellomeme_conditions(_rgb(frames)[0], _rgb(frames), expression="arkit", head_pose="approximate")


@pytest.mark.slow
def test_conditions_approximate_pose_on_a_real_portrait(data_dir):
    fan_encoder = _tiny_expression_encoder()
    rgb = cv2.cvtColor(cv2.imread(str(data_dir / "harris.jpg")), cv2.COLOR_BGR2RGB)
    driving = np.stack([rgb, np.ascontiguousarray(rgb[:, ::-1])])
    c = cond.hellomeme_conditions(rgb, driving, head_pose="approximate", pdfgc_encoder=fan_encoder)
    assert c.condition.shape == (1, 3, 2, 512, 512) and c.pd_fpg.shape == (1, 2, 548)
    assert np.sign(float(c.angles[0, 1])) == -np.sign(float(c.angles[1, 1]))
    assert c.head_pose == "approximate"


def test_models_resolve_through_the_model_store(tmp_path):
    pytest.importorskip("onnxruntime")
    from portrait_animation.loaders.manifest import load_manifest
    from portrait_animation.loaders.store import ModelStore

    store = ModelStore.at(tmp_path)
    manifest = load_manifest("hellomeme")

    def dest(file_id):
        f = manifest.file(file_id)
        path = tmp_path / f.folder / f.dest
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    coeffs = np.zeros((1, 1201), np.float32)
    coeffs[0, 1168:1171] = (0.3, 0.2, 0.1)
    coeffs[0, -3:] = (0.0, 0.0, -5.0)
    _constant_model(dest("hello_3dmm"), (1, 3, 224, 224), {"coeffs": coeffs})
    toolkit = tk.HelloFaceToolkit(store=store, device="cpu")
    angles, _ = toolkit.head_poses([np.zeros((512, 512, 3), np.uint8)], [_template_face((200, 180, 320, 330))])
    np.testing.assert_allclose(angles[0], [[0.3, 0.2, 0.1]])
    from portrait_animation.loaders.store import MissingModelFiles

    with pytest.raises(MissingModelFiles, match="hello_arkit_blendshape"):
        toolkit.arkit  # noqa: B018 (not in the store)


def test_pdfgc_and_clip_files_resolve_through_the_model_store(tmp_path, fan_encoder):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    from portrait_animation.loaders.manifest import load_manifest
    from portrait_animation.loaders.store import ModelStore

    store = ModelStore.at(tmp_path)
    manifest = load_manifest("hellomeme")
    pd = manifest.file("pd_fgc_motion")
    folder = _save_encoder(fan_encoder, (tmp_path / pd.folder / pd.dest).parent)
    assert pdfgc.encoder_folder(store) == folder
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=224, patch_size=32, projection_dim=16)
    clip = transformers.CLIPVisionModelWithProjection(config).eval()
    w, c = manifest.file("clip_vit_h_image_encoder"), manifest.file("clip_vit_h_image_encoder_config")
    (tmp_path / w.folder / w.dest).parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    sd["vision_model.embeddings.position_ids"] = torch.arange(50)[None]  # older exports carry this buffer
    save_file(sd, str(tmp_path / w.folder / w.dest))
    (tmp_path / c.folder / c.dest).parent.mkdir(parents=True, exist_ok=True)
    config.to_json_file(str(tmp_path / c.folder / c.dest))
    loaded = cond.load_clip_image_encoder(store)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).image_embeds, clip(pixel_values=x).image_embeds)
