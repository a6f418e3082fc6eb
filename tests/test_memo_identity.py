"""MEMO identity embedding without insightface (memo/identity.py): SCRFD decoding, NMS, the ArcFace alignment, the
ONNX graph reader, and the whole detect -> largest face -> align -> embed path on tiny hand-built ONNX models.

The released scrfd_10g_bnkps.onnx / glintr100.onnx are not used (no network here); the tiny models reproduce their
input/output layouts (9 SCRFD outputs: scores, box distances, keypoint offsets for strides 8/16/32 with 2 anchors;
one ArcFace output from a 112 x 112 input) with weights chosen so the right answer is known in closed form.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import tiny_insightface
from portrait_animation.memo import identity as I

# ---------------------------------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------------------------------


def test_anchor_centers_row_major_with_repeated_anchors():
    pts = I.anchor_centers(2, 3, 8, num_anchors=2)
    assert pts.dtype == np.float32 and pts.shape == (12, 2)
    expected = [(0, 0), (0, 0), (8, 0), (8, 0), (16, 0), (16, 0), (0, 8), (0, 8), (8, 8), (8, 8), (16, 8), (16, 8)]
    np.testing.assert_array_equal(pts, np.array(expected, np.float32))
    np.testing.assert_array_equal(I.anchor_centers(2, 2, 16, num_anchors=1), [[0, 0], [16, 0], [0, 16], [16, 16]])


def test_distance_decoding():
    pts = np.array([[10, 20], [0, 0]], np.float32)
    dist = np.array([[1, 2, 3, 4], [0, 0, 5, 5]], np.float32)
    np.testing.assert_array_equal(I.distance2bbox(pts, dist), [[9, 18, 13, 24], [0, 0, 5, 5]])
    offs = np.array([[1, -1, 2, -2, 3, -3, 4, -4, 5, -5]], np.float32)
    np.testing.assert_array_equal(I.distance2kps(pts[:1], offs), [[11, 19, 12, 18, 13, 17, 14, 16, 15, 15]])


def _empty_outputs(height, width, strides=(8, 16, 32), anchors=2):
    scores, boxes, kps = [], [], []
    for s in strides:
        k = (height // s) * (width // s) * anchors
        scores.append(np.zeros((k, 1), np.float32))
        boxes.append(np.zeros((k, 4), np.float32))
        kps.append(np.zeros((k, 10), np.float32))
    return scores, boxes, kps


def test_decode_scrfd_known_anchor():
    scores, boxes, kps = _empty_outputs(64, 96)
    # stride 16: grid 4 high x 6 wide; location (y=1, x=2), anchor 1 -> row (1 * 6 + 2) * 2 + 1
    row = (1 * 6 + 2) * 2 + 1
    scores[1][row, 0] = 0.9
    boxes[1][row] = [1, 2, 3, 4]  # stride units
    kps[1][row] = np.arange(10, dtype=np.float32) / 4
    # stride 32 (grid 2 x 3), location (0, 1) anchor 0: exactly at the threshold (kept); another just below
    scores[2][(0 * 3 + 1) * 2 + 0, 0] = 0.5
    scores[2][(1 * 3 + 2) * 2 + 1, 0] = 0.4999
    # stride 8: last anchor of the grid, batched layout (1, K, C) must decode the same
    scores[0][-1, 0] = 0.7
    outs = [x[None] if i % 3 == 0 else x for i, x in enumerate(scores + boxes + kps)]
    s, b, k = I.decode_scrfd(outs, 64, 96, threshold=0.5)
    assert s.shape == (3, 1) and b.shape == (3, 4) and k.shape == (3, 5, 2)
    np.testing.assert_allclose(s.ravel(), [0.7, 0.9, 0.5])
    # stride 8, grid 8 x 12: last anchor at (x=11, y=7) * 8 = (88, 56), zero distances
    np.testing.assert_allclose(b[0], [88, 56, 88, 56])
    cx, cy = 2 * 16, 1 * 16
    np.testing.assert_allclose(b[1], [cx - 16, cy - 32, cx + 48, cy + 64])
    offs = (np.arange(10, dtype=np.float32) / 4 * 16).reshape(5, 2)
    np.testing.assert_allclose(k[1], np.array([cx, cy]) + offs)
    np.testing.assert_allclose(b[2], [32, 0, 32, 0])


def test_decode_scrfd_rejects_wrong_anchor_count():
    scores, boxes, kps = _empty_outputs(64, 64, anchors=1)
    with pytest.raises(ValueError, match="anchors"):
        I.decode_scrfd(scores + boxes + kps, 64, 64)


def test_nms_order_and_pixel_inclusive_areas():
    dets = np.array([
        [0, 0, 9, 9, 0.8],     # 0: suppressed by 1 (IoU 81/119 with "+1" areas)
        [1, 1, 10, 10, 0.9],   # 1: best
        [40, 40, 42, 42, 0.7],  # 2: kept
        [41, 40, 43, 42, 0.6],  # 3: IoU with 2 is 6/12 = 0.5 with "+1" areas (0.33 without): suppressed
        [100, 100, 120, 120, 0.1],  # 4: kept, no overlap
    ], np.float32)
    assert I.nms(dets, 0.4) == [1, 2, 4]
    assert I.nms(dets, 0.5) == [1, 2, 3, 4]  # IoU == thresh is kept
    assert I.nms(dets[:0], 0.4) == []


def test_detection_canvas_keeps_aspect_top_left():
    img = np.full((960, 1280, 3), 200, np.uint8)
    canvas, scale = I.detection_canvas(img, (640, 640))
    assert canvas.shape == (640, 640, 3) and scale == 0.5
    assert (canvas[:480] == 200).all() and (canvas[480:] == 0).all()
    tall = np.full((1000, 500, 3), 7, np.uint8)
    canvas, scale = I.detection_canvas(tall, (640, 640))
    assert scale == pytest.approx(0.64) and (canvas[:, :320] == 7).all() and (canvas[:, 320:] == 0).all()


def test_largest_face_by_area_stable():
    def face(box, score):
        return I.DetectedFace(np.array(box, np.float32), score, np.zeros((5, 2), np.float32))

    faces = [face([0, 0, 10, 10], 0.9), face([0, 0, 20, 5], 0.8), face([5, 5, 25, 25], 0.7), face([0, 0, 20, 20], 0.6)]
    assert I.largest_face(faces) is faces[2]  # area 400 ties with faces[3]: the earlier (higher score) wins
    assert I.largest_face([]) is None


# ---------------------------------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------------------------------
def _similar(points, scale, angle, shift):
    c, s = np.cos(angle), np.sin(angle)
    rot = scale * np.array([[c, -s], [s, c]])
    return (points.astype(np.float64) @ rot.T + shift).astype(np.float32)


@pytest.mark.parametrize("scale,angle,shift", [(1.0, 0.0, (0, 0)), (2.7, 0.4, (310.5, 122.25)),
                                               (0.6, -1.1, (40, 500))])
def test_alignment_maps_keypoints_onto_template(scale, angle, shift):
    kps = _similar(I.ARCFACE_TEMPLATE, scale, angle, np.array(shift))
    m = I.estimate_norm(kps)
    assert m.shape == (2, 3) and m.dtype == np.float64
    mapped = kps.astype(np.float64) @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(mapped, I.ARCFACE_TEMPLATE, atol=2e-3)
    # a similarity: equal scales, no shear, no reflection
    a = m[:, :2]
    assert a[0, 0] == pytest.approx(a[1, 1], rel=1e-5) and a[0, 1] == pytest.approx(-a[1, 0], rel=1e-5, abs=1e-7)
    assert np.linalg.det(a) == pytest.approx(1.0 / scale ** 2, rel=1e-4)


def test_alignment_is_least_squares_and_never_reflects():
    rng = np.random.default_rng(3)
    kps = _similar(I.ARCFACE_TEMPLATE, 1.8, 0.3, np.array([200.0, 90.0])) + rng.normal(0, 3, (5, 2)).astype(np.float32)
    m = I.estimate_norm(kps)

    def residual(mat):
        return ((kps @ mat[:, :2].T + mat[:, 2] - I.ARCFACE_TEMPLATE) ** 2).sum()

    base = residual(m)
    a, b, tx, ty = m[0, 0], m[1, 0], m[0, 2], m[1, 2]
    for da, db, dx, dy in [(1e-3, 0, 0, 0), (0, 1e-3, 0, 0), (0, 0, 0.05, 0), (0, 0, 0, 0.05), (-1e-3, 0, 0, 0)]:
        other = np.array([[a + da, -(b + db), tx + dx], [b + db, a + da, ty + dy]])
        assert residual(other) > base
    mirrored = kps[[1, 0, 2, 4, 3]]  # left/right swapped: best fit is still a rotation
    assert np.linalg.det(I.estimate_norm(mirrored)[:, :2]) > 0


def test_norm_crop_places_landmarks_on_template():
    img = np.zeros((400, 500, 3), np.uint8)
    kps = _similar(I.ARCFACE_TEMPLATE, 2.0, 0.25, np.array([150.0, 60.0]))
    for i, (x, y) in enumerate(kps):
        img[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3] = 50 * (i + 1)
    crop = I.norm_crop(img, kps)
    assert crop.shape == (112, 112, 3)
    for i, (x, y) in enumerate(I.ARCFACE_TEMPLATE):
        assert crop[int(round(y)), int(round(x)), 0] == pytest.approx(50 * (i + 1), abs=30)
    # 128-pixel crops use the template scaled by 128/128 and shifted 8 px right (insightface's rule)
    np.testing.assert_allclose(I.arcface_template(128), I.ARCFACE_TEMPLATE + np.array([8, 0], np.float32))
    with pytest.raises(ValueError):
        I.arcface_template(100)


# ---------------------------------------------------------------------------------------------------------------------
# tiny ONNX models
# ---------------------------------------------------------------------------------------------------------------------
def _onnx():
    """The ``onnx`` package (builds the tiny models); tests that need it skip without it."""
    return pytest.importorskip("onnx")

V_MAX = (255 - 127.5) / 128  # detector blob value of a 255 pixel
V_MIN = (0 - 127.5) / 128


def make_fake_scrfd(path, fixed_size=None):
    """The picture-reading SCRFD stand-in (``helpers.tiny_insightface``; skips without ``onnx``)."""
    _onnx()
    return tiny_insightface.make_fake_scrfd(path, fixed_size)


def make_fake_arcface(path, weights, node_names=None):
    _onnx()
    return tiny_insightface.make_fake_arcface(path, weights, node_names)


def arcface_reference(crop_rgb, weights):
    """The fake ArcFace computed in numpy on an RGB crop with insightface's (x - 127.5) / 127.5 blob."""
    x = (crop_rgb.astype(np.float64) - 127.5) / 127.5
    pooled = x.reshape(7, 16, 7, 16, 3).mean(axis=(1, 3)).transpose(2, 0, 1).reshape(-1)
    return pooled @ weights


CELL_A = (10, 8)  # stride-16 cells (x, y) of the two fake faces on the detector canvas
CELL_B = (30, 20)


def make_scene(seed=0):
    """1280 x 960 RGB image: textured background (R, B <= 100) and two 32 x 32 'faces' with R = 255 at the original
    pixels of CELL_A (G 255: big box, B 0) and CELL_B (G 0: small box, B 255: higher score)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 101, (960, 1280, 3)).astype(np.uint8)
    img[:, :, 1] = rng.integers(0, 256, (960, 1280))
    for (cx, cy), g, b in ((CELL_A, 255, 0), (CELL_B, 0, 255)):
        img[32 * cy:32 * cy + 32, 32 * cx:32 * cx + 32] = (255, g, b)
    return img


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("face_models")
    weights = np.random.default_rng(1).normal(0, 1, (147, 512)).astype(np.float32)
    det = make_fake_scrfd(root / "scrfd_10g_bnkps.onnx")
    rec = make_fake_arcface(root / "glintr100.onnx", weights)
    return det, rec, weights


@pytest.fixture(scope="module")
def embedder(models):
    det, rec, _ = models
    return I.FaceEmbedder(det, rec, device="cpu")


def _expected_box(cell, v_g):
    dist = (2 * v_g + 2.5) * 16
    ax, ay = cell[0] * 16, cell[1] * 16
    return np.array([ax - dist, ay - dist, ax + dist, ay + dist]) / 0.5


def test_detect_finds_both_fake_faces(embedder):
    faces = embedder.detect(make_scene())
    assert len(faces) == 2
    b_face, a_face = faces  # score order: B's blue channel raises its score
    assert b_face.score > a_face.score > 0.5
    np.testing.assert_allclose(a_face.score, 1 / (1 + np.exp(-(4 * V_MAX + V_MIN - 2))), rtol=1e-5)
    np.testing.assert_allclose(a_face.box, _expected_box(CELL_A, V_MAX), rtol=1e-5)
    np.testing.assert_allclose(b_face.box, _expected_box(CELL_B, V_MIN), rtol=1e-5)
    for face, cell in ((a_face, CELL_A), (b_face, CELL_B)):
        np.testing.assert_allclose(face.kps, I.ARCFACE_TEMPLATE - 56 + np.array(cell, np.float32) * 32, atol=1e-3)


def test_embed_uses_largest_face_aligned_crop(embedder, models):
    _, _, weights = models
    img = make_scene()
    emb = embedder.embed(img)
    assert emb.shape == (I.EMBEDDING_DIM,) and emb.dtype == np.float32
    # face A (largest box): keypoints = template - 56 + 32 * cell -> the crop is a pure translation of the image
    x0, y0 = 32 * CELL_A[0] - 56, 32 * CELL_A[1] - 56
    expected = arcface_reference(img[y0:y0 + 112, x0:x0 + 112], weights)
    np.testing.assert_allclose(emb, expected, rtol=2e-3, atol=2e-3)
    # raw, not normalised; and clearly not face B's crop nor the BGR-ordered crop
    assert np.linalg.norm(emb) > 5
    xb, yb = 32 * CELL_B[0] - 56, 32 * CELL_B[1] - 56
    assert np.abs(emb - arcface_reference(img[yb:yb + 112, xb:xb + 112], weights)).max() > 0.1
    assert np.abs(emb - arcface_reference(img[y0:y0 + 112, x0:x0 + 112, ::-1], weights)).max() > 0.1


def test_embed_accepts_comfy_image_tensor(embedder):
    torch = pytest.importorskip("torch")
    img = make_scene()
    tensor = torch.from_numpy(img.astype(np.float32) / 255.0)[None]
    np.testing.assert_array_equal(embedder.embed(tensor), embedder.embed(img))
    with pytest.raises(ValueError, match="2 images"):
        embedder.embed(torch.cat([tensor, tensor]))


def test_no_face_error_and_uncond_option(embedder):
    blank = np.zeros((300, 400, 3), np.uint8)
    with pytest.raises(ValueError) as info:
        embedder.embed(blank, input_name="reference_image")
    assert isinstance(info.value, I.NoFaceError)
    msg = str(info.value)
    assert "no face found" in msg and "'reference_image'" in msg and "on_missing_face='uncond'" in msg
    zero = embedder.embed(blank, on_missing_face="uncond")
    assert zero.shape == (512,) and zero.dtype == np.float32 and not zero.any()
    with pytest.raises(ValueError, match="on_missing_face"):
        embedder.embed(blank, on_missing_face="zeros")


def test_fixed_input_size_overrides_det_size(tmp_path):
    det = I.ScrfdDetector(make_fake_scrfd(tmp_path / "fixed.onnx", fixed_size=(320, 480)), det_size=(640, 640),
                          device="cpu")
    assert det.input_size == (480, 320)  # (width, height) from the model


def test_arcface_normalisation_rule(tmp_path, models):
    _, rec, weights = models
    assert I.onnx_node_names(rec) == ["", "", ""]
    assert I.arcface_input_normalisation(rec) == (127.5, 127.5)
    mx = make_fake_arcface(tmp_path / "mx.onnx", weights, ["_minusscalar0", "_mulscalar0", "fc1"])
    assert I.onnx_node_names(mx) == ["_minusscalar0", "_mulscalar0", "fc1"]
    assert I.arcface_input_normalisation(mx) == (0.0, 1.0)
    only_sub = make_fake_arcface(tmp_path / "sub.onnx", weights, ["Sub_0", "Reshape_1", "fc1"])
    assert I.arcface_input_normalisation(only_sub) == (127.5, 127.5)
    assert I.ArcFaceRecognizer(mx, device="cpu").input_std == 1.0


def test_damaged_onnx_is_reported(tmp_path, models):
    from portrait_animation.loaders.store import CorruptModelFile

    _, rec, _ = models
    data = rec.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptModelFile, match="cut.onnx"):
        I.arcface_input_normalisation(cut)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(CorruptModelFile):
        I.ArcFaceRecognizer(empty)


def test_from_store_resolves_manifest_files(tmp_path, models):
    import shutil

    from portrait_animation.loaders.manifest import load_manifest
    from portrait_animation.loaders.store import MissingModelFiles, ModelStore

    store = ModelStore.at(tmp_path)
    with pytest.raises(MissingModelFiles) as info:
        I.FaceEmbedder.from_store(store)
    assert "scrfd_10g_bnkps" in str(info.value) and "glintr100" in str(info.value)
    manifest = load_manifest("memo")
    assert {f.id for f in manifest.select(groups=["face"])} == set(I.MODEL_FILE_IDS.values())
    for key, src in (("detector", models[0]), ("recognizer", models[1])):
        dest = store.destination(manifest.file(I.MODEL_FILE_IDS[key]))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    emb = I.FaceEmbedder.from_store(store, device="cpu")
    assert len(emb.detect(make_scene())) == 2


def test_find_anywhere_standin_finds_one_face_in_every_picture(tmp_path):
    """The integration server's stand-in (``write_memo_identity_standins``): one face, the same box, in noise, a blank
    frame and a portrait-sized picture, found through the manifest's destinations; the embedding follows the picture."""
    from portrait_animation.loaders.store import ModelStore

    _onnx()
    paths = tiny_insightface.write_memo_identity_standins(tmp_path)
    assert {p.name for p in paths.values()} == {"scrfd_10g_bnkps.onnx", "glintr100.onnx"}
    emb = I.FaceEmbedder.from_store(ModelStore.at(tmp_path), device="cpu")
    assert emb.detector.input_size == I.DET_SIZE
    box, kps = tiny_insightface.anywhere_face()
    rng = np.random.default_rng(5)
    pictures = [rng.integers(0, 256, (64, 64, 3)).astype(np.uint8), np.zeros((64, 64, 3), np.uint8),
                rng.integers(0, 256, (512, 512, 3)).astype(np.uint8)]
    embeddings = []
    for img in pictures:
        faces = emb.detect(img)
        scale = img.shape[0] / I.DET_SIZE[1]  # square pictures fill the canvas
        assert len(faces) == 1 and faces[0].score == pytest.approx(tiny_insightface.ANYWHERE_SCORE, rel=1e-5)
        np.testing.assert_allclose(faces[0].box, box * scale, rtol=1e-5)
        np.testing.assert_allclose(faces[0].kps, kps * scale, rtol=1e-4, atol=1e-3)
        embeddings.append(emb.embed(img))
    assert all(np.isfinite(e).all() and e.shape == (512,) for e in embeddings)
    assert 1 < np.linalg.norm(embeddings[0]) < 10  # unit-scale entries, not a zero (no face) embedding
    cos = embeddings[0] @ embeddings[2] / np.linalg.norm(embeddings[0]) / np.linalg.norm(embeddings[2])
    assert np.abs(embeddings[0] - embeddings[1]).max() > 0.1 and cos < 0.999
