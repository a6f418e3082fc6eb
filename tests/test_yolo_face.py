"""HunyuanPortrait's YOLOv5-face wrapper (``face/yolo_face.py``) on a TorchScript stand-in of ``yoloface_v5m.pt``."""
from __future__ import annotations

import re
import threading

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.tiny_hunyuan import write_yolo_standin, yolo_row, yolo_standin_specs
from portrait_animation.face import yolo_face as yf
from portrait_animation.hunyuan_portrait import preprocess as pp
from portrait_animation.loaders.store import ModelFileError


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return write_yolo_standin(tmp_path_factory.mktemp("yolo") / "yoloface_v5m.pt")


@pytest.fixture(scope="module")
def photo(data_dir):
    return np.array(Image.open(data_dir / "source_image.png").convert("RGB"))  # (512, 512, 3) uint8


def expected_face(name: str, h0: int, w0: int):
    """The stand-in's ``name`` row scaled to an h0 x w0 image: (x, y, w, h), (5, 2) landmarks, score."""
    h1, w1 = yf.detection_size(h0, w0)
    cx, cy, w, h, obj, *rest = yolo_row(yolo_standin_specs()[name][1], h1, w1)
    sx, sy = w0 / w1, h0 / h1
    x, y = (cx - w / 2) * sx, (cy - h / 2) * sy
    box = [x, y, (cx + w / 2) * sx - x, (cy + h / 2) * sy - y]
    return np.array(box), np.array(rest[:10]).reshape(5, 2) * [sx, sy], obj * rest[10]


# ---- geometry --------------------------------------------------------------------------------------------------------
def test_detection_size():
    # hand-checked: 416 / 1080 * 1920 = 739.6 -> int(770.6) // 32 = 24 -> 768; 416 / 384 * 512 = 554.7 -> 576
    # 416 / 37 * 100 = 1124.3 -> int(1155.3) // 32 = 36 -> 1152
    sizes = {(512, 512): (416, 416), (1080, 1920): (416, 768), (1920, 1080): (768, 416), (512, 384): (576, 416),
             (480, 640): (416, 576), (100, 37): (1152, 416)}
    assert {hw: yf.detection_size(*hw) for hw in sizes} == sizes
    assert yf.detection_size(512, 512, short_side=256) == (256, 256)
    rng = np.random.default_rng(0)
    for h0, w0 in rng.integers(1, 4000, size=(200, 2)).tolist():
        r = 416 / min(h0, w0)
        want = (int(h0 * r + 31) // 32 * 32, int(w0 * r + 31) // 32 * 32)
        assert yf.detection_size(h0, w0) == want, (h0, w0)
        assert min(want) == 416 and want[0] % 32 == want[1] % 32 == 0
    with pytest.raises(ValueError):
        yf.detection_size(0, 10)


def test_anchor_grids():
    grids = yf.anchor_grids(416, 768)
    assert [tuple(g.shape) for g in grids] == [(1, 1, 52, 96, 2), (1, 1, 26, 48, 2), (1, 1, 13, 24, 2)]
    for g in grids:
        ny, nx = g.shape[2:4]
        assert g.dtype == torch.float32
        # x (slot 0) counts along the last-but-one axis, y (slot 1) along the one before it
        assert torch.equal(g[0, 0, :, :, 0], torch.arange(nx).float().expand(ny, nx))
        assert torch.equal(g[0, 0, :, :, 1], torch.arange(ny).float()[:, None].expand(ny, nx))
    assert grids[2][0, 0, 3, 5].tolist() == [5.0, 3.0]


def _nms_reference(boxes, scores, thr):
    """Plain-Python greedy NMS, written independently of the module."""
    def iou(a, b):
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def _random_boxes(n, seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 200
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=gen) * 60], 1), torch.rand(n, generator=gen)


def test_nms():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 4.0]])
    # box 1 overlaps box 0 by 9/11; box 3 lies inside box 0 with IoU 0.4 (kept at 0.45, dropped at 0.3)
    assert yf.nms(boxes, torch.tensor([0.8, 0.9, 0.5, 0.7]), 0.45).tolist() == [1, 3, 2]
    assert yf.nms(boxes, torch.tensor([0.9, 0.8, 0.5, 0.7]), 0.3).tolist() == [0, 2]
    assert yf.nms(torch.zeros(0, 4), torch.zeros(0), 0.45).tolist() == []
    boxes, scores = _random_boxes(300, 0)
    for thr in (0.3, 0.45, 0.7):
        keep = yf.nms(boxes, scores, thr)
        assert keep.dtype == torch.int64 and 0 < len(keep) < 300
        assert keep.tolist() == _nms_reference(boxes.tolist(), scores.tolist(), thr)


def test_nms_matches_torchvision():
    tv = pytest.importorskip("torchvision", reason="torchvision not installed: torchvision.ops.nms check skipped")
    boxes, scores = _random_boxes(500, 1)
    for thr in (0.1, 0.45, 0.8):
        assert yf.nms(boxes, scores, thr).tolist() == tv.ops.nms(boxes, scores, thr).tolist()


# ---- decoding --------------------------------------------------------------------------------------------------------
def test_decode_predictions():
    h1, w1 = 416, 416
    rows = {name: yolo_row(spec, h1, w1) for name, (_, spec) in yolo_standin_specs().items()}
    rows["weak_class"] = yolo_row([0.85, 0.5, 0.1, 0.1, 0.8, 0.6], h1, w1)    # obj passes, 0.8 * 0.6 = 0.48 does not
    rows["at_threshold"] = yolo_row([0.15, 0.8, 0.1, 0.1, 0.5, 1.0], h1, w1)  # obj must be strictly above 0.5
    rows["passes"] = yolo_row([0.85, 0.85, 0.1, 0.1, 0.55, 0.95], h1, w1)    # 0.5225
    pred = torch.zeros(1, 100, 16)
    for i, row in enumerate(rows.values()):
        pred[0, 7 * i + 1] = torch.tensor(row)
    boxes, scores, landmarks = yf.decode_predictions(pred)
    assert boxes.shape == (3, 4) and landmarks.shape == (3, 5, 2)
    assert scores.tolist() == pytest.approx([0.9 * 0.95, 0.7 * 0.9, 0.55 * 0.95], abs=1e-6)  # conf = obj * cls
    for k, name in enumerate(("face", "small", "passes")):   # the duplicate is suppressed, the small face kept
        cx, cy, w, h = rows[name][:4]
        assert boxes[k].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], abs=1e-4)
        assert landmarks[k].flatten().tolist() == pytest.approx(rows[name][5:15], abs=1e-4)
    assert boxes[0, 0] < landmarks[0, 0, 0] < landmarks[0, 2, 0] < landmarks[0, 1, 0] < boxes[0, 2]  # eyes, nose
    assert len(yf.decode_predictions(pred, iou=0.99)[0]) == 4      # with a lenient IoU the duplicate stays
    assert len(yf.decode_predictions(pred[0], conf=0.6)[0]) == 2   # (A, 16) works; only the face and small face
    assert len(yf.decode_predictions(torch.zeros(1, 63, 16))[0]) == 0


# ---- the detector on the stand-in file -------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["square", "portrait", "float"])
def test_detector_on_photo(standin, photo, variant):
    image = {"square": photo, "portrait": photo[:, 64:448], "float": photo.astype(np.float32) / 255}[variant]
    h0, w0 = image.shape[:2]
    detect = yf.YoloFaceDetector(standin)
    boxes, landmarks, scores = detect.detect(image)
    assert boxes.shape == (2, 4) and landmarks.shape == (2, 5, 2) and scores.shape == (2,)
    assert boxes.dtype == landmarks.dtype == np.float64
    big = pp.largest_face(boxes)
    for i, name in ((big, "face"), (1 - big, "small")):
        box, points, score = expected_face(name, h0, w0)
        np.testing.assert_allclose(boxes[i], box, rtol=0, atol=1e-3)
        np.testing.assert_allclose(landmarks[i], points, rtol=0, atol=1e-3)
        assert scores[i] == pytest.approx(score, abs=1e-6)
    for got, want in zip(detect(image), (boxes, landmarks)):  # the Detector interface
        np.testing.assert_array_equal(got, want)


def test_detector_threads_and_module(standin, photo):
    detect = yf.YoloFaceDetector(torch.jit.load(str(standin)), device="cpu").to("cpu")
    want = detect(photo)[0]
    out = {}
    threads = [threading.Thread(target=lambda w=w: out.setdefault(w, detect(photo[:, :w])[0])) for w in (400, 408, 416)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w, boxes in out.items():  # each width has its own input size and grids
        np.testing.assert_allclose(boxes[0], expected_face("face", 512, w)[0], atol=1e-3)
    np.testing.assert_array_equal(detect(photo)[0], want)


def test_standin_rejects_wrong_grids(standin):
    model = torch.jit.load(str(standin))
    img = torch.zeros(1, 3, 416, 576)
    assert model(img, yf.anchor_grids(416, 576)).shape == (1, 3 * (52 * 72 + 26 * 36 + 13 * 18), 16)
    for grids in (yf.anchor_grids(416, 576)[::-1], yf.anchor_grids(576, 416), yf.anchor_grids(416, 576)[:2],
                  [g.flip(-1) for g in yf.anchor_grids(416, 576)]):
        with pytest.raises((RuntimeError, torch.jit.Error), match="grid"):
            model(img, grids)


class _Recorder(torch.nn.Module):  # keeps what the detector feeds the network; answers no face
    def forward(self, img, grids):
        self.seen = (img.clone(), [g.clone() for g in grids])
        return torch.zeros(1, sum(3 * g.shape[2] * g.shape[3] for g in grids), 16)


def test_network_input(photo):
    image = photo[:, 64:448]                                    # (512, 384, 3) -> (576, 416)
    net = _Recorder()
    boxes, landmarks = yf.YoloFaceDetector(net)(image)
    assert boxes.shape == (0, 4) and landmarks.shape == (0, 5, 2)
    img, grids = net.seen
    want = cv2.resize(image, (416, 576), interpolation=cv2.INTER_LINEAR)  # RGB kept, bilinear
    assert img.dtype == torch.float32 and tuple(img.shape) == (1, 3, 576, 416)
    assert torch.equal(img, torch.from_numpy(want).permute(2, 0, 1)[None].float() / 255)
    assert all(torch.equal(a, b) for a, b in zip(grids, yf.anchor_grids(576, 416)))


def test_image_inputs(standin, photo):
    np.testing.assert_array_equal(yf.as_rgb_uint8(photo.astype(np.float64) / 255), photo)
    np.testing.assert_array_equal(yf.as_rgb_uint8(torch.from_numpy(photo).float() / 255), photo)
    np.testing.assert_array_equal(yf.as_rgb_uint8(photo.astype(np.int32)), photo)
    detect = yf.YoloFaceDetector(standin)
    for bad in (np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8), np.zeros((2, 64, 64, 3), np.uint8)):
        with pytest.raises(ValueError, match=re.escape(str(bad.shape))):
            detect(bad)
    with pytest.raises(ValueError, match="0, 1"):
        detect(np.full((64, 64, 3), 200.0))


def test_model_file_errors(tmp_path):
    state = tmp_path / "state_dict.pt"
    torch.save({"model.0.conv.weight": torch.zeros(2, 3)}, state)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model" * 100)
    for path in (state, garbage, tmp_path / "missing.pt"):
        with pytest.raises(ModelFileError) as err:
            yf.YoloFaceDetector(path)
        assert str(path) in str(err.value)
        assert "TorchScript" in str(err.value) and "yoloface_v5m.pt" in str(err.value)
        assert "LeonJoe13/Sonic" in str(err.value)


# ---- HunyuanPortrait pre-processing with the detector ----------------------------------------------------------------
def test_prepare_source_and_driving(standin, photo):
    detect = yf.YoloFaceDetector(standin)
    src = pp.prepare_source(photo, detect)
    box = expected_face("face", 512, 512)[0]
    assert src.crop_bbox == pp.square_crop_box(pp.xywh_to_xyxy(box), 1.0, 512, 512)
    assert src.crop.size == (512, 512)
    assert tuple(src.ref_img.shape) == (3, 512, 512) and float(src.ref_img.min()) >= -1
    assert tuple(src.dino_image.shape) == (3, 224, 224)
    assert src.arcface_face.shape == (112, 112, 3)
    # the second detection runs on the 512 crop: landmarks at the stand-in's positions in a 512 x 512 image
    np.testing.assert_allclose(src.crop_landmarks, expected_face("face", 512, 512)[1], atol=1e-3)

    frames = [photo, photo[:, ::-1], np.roll(photo, 7, axis=0)]
    drv = pp.prepare_driving(frames, detect)
    assert drv.landmarks.shape == (3, 5, 2) and drv.face_boxes.shape == (3, 4) and drv.motion_boxes.shape == (3, 4)
    assert tuple(drv.motion_face.shape) == (3, 3, 256, 256) and tuple(drv.motion_pose.shape) == (3, 3, 256, 256)
    assert drv.head_box == src.crop_bbox
    np.testing.assert_allclose(drv.face_boxes[0], pp.xywh_to_xyxy(box), atol=1e-3)
