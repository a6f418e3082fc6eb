"""Tiny ONNX stand-ins for MEMO's two insightface models (``scrfd_10g_bnkps.onnx``, ``glintr100.onnx``).

They reproduce the released input/output layouts (SCRFD: input ``input.1`` (1, 3, H, W), 9 outputs: scores, box
distances and keypoint offsets for strides 8/16/32 with 2 anchors; ArcFace: ``data`` (1, 3, 112, 112) -> ``fc1``
(1, 512)) and run through ``memo/identity.py`` exactly as the real files do.

* :func:`make_fake_scrfd`: a detector that reads the picture (its faces are made-up red squares), with weights
  chosen so the right boxes and keypoints are known in closed form (``tests/test_memo_identity.py``).
* :func:`make_anywhere_scrfd`: a detector that finds one large face in the middle of every picture, whatever it
  shows (the stand-in MEMO networks draw noise, not faces); fixed 640 x 640 input as MEMO's ``det_size``.
* :func:`make_fake_arcface`: 16 x 16 average pooling, then a linear map: different crops, different embeddings.
* :func:`write_memo_identity_standins`: both, where a ComfyUI models folder keeps MEMO's identity models.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from portrait_animation.memo.identity import ARCFACE_TEMPLATE, DET_SIZE

STRIDES = (8, 16, 32)
ANCHORS = 2


def _helper():
    import onnx

    return onnx, onnx.helper, onnx.TensorProto


def _init(name, arr, dtype=np.float32):
    import onnx

    return onnx.numpy_helper.from_array(np.asarray(arr, dtype), name)


def _save(graph, path) -> Path:
    onnx, helper, _ = _helper()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _scrfd_head(nodes, inits, outs, s: int, name: str, w, b, k: int, act: bool, position=None) -> None:
    """One SCRFD output ``{name}_{s}`` (K, k): 1 x 1 conv of the stride's pooled input (+ a constant per cell and
    channel ``position (1, ANCHORS * k, gh, gw)`` where given), sigmoid for scores, cells row-major, anchors inner."""
    _, helper, TensorProto = _helper()
    inits += [_init(f"{name}{s}_w", w), _init(f"{name}{s}_b", b), _init(f"{name}{s}_shape", [-1, k], np.int64)]
    nodes.append(helper.make_node("Conv", [f"pool{s}", f"{name}{s}_w", f"{name}{s}_b"], [f"{name}{s}_c"]))
    src = f"{name}{s}_c"
    if position is not None:
        inits.append(_init(f"{name}{s}_pos", position))
        nodes.append(helper.make_node("Add", [src, f"{name}{s}_pos"], [f"{name}{s}_p"]))
        src = f"{name}{s}_p"
    if act:
        nodes.append(helper.make_node("Sigmoid", [src], [f"{name}{s}_sig"]))
        src = f"{name}{s}_sig"
    nodes.append(helper.make_node("Transpose", [src], [f"{name}{s}_t"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("Reshape", [f"{name}{s}_t", f"{name}{s}_shape"], [f"{name}_{s}"]))
    outs[(name, s)] = helper.make_tensor_value_info(f"{name}_{s}", TensorProto.FLOAT, [None, k])


def _scrfd_graph(nodes, inits, outs, inp, name: str):
    _, helper, _ = _helper()
    order = [outs[(n, s)] for n in ("score", "bbox", "kps") for s in STRIDES]
    return helper.make_graph(nodes, name, [inp], order, inits)


def make_fake_scrfd(path, fixed_size=None) -> Path:
    """9-output SCRFD stand-in. Only stride 16 fires: per cell (16 x 16 average of the RGB blob ``v``)
    score anchor 0 = sigmoid(4 v_R + v_B - 2), anchor 1 = sigmoid(4 v_R + v_B - 3); box distances (2 v_G + 2.5) strides
    on every side; keypoints = anchor + (template - 56) * 0.5 pixels."""
    _, helper, TensorProto = _helper()
    hw = list(fixed_size) if fixed_size else ["h", "w"]
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3] + hw)
    nodes, inits, outs = [], [], {}
    kps_bias = ((ARCFACE_TEMPLATE - 56.0) * 0.5 / 16.0).reshape(-1)
    for s in STRIDES:
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]))
        live = s == 16
        w_score = np.zeros((2, 3, 1, 1))
        b_score = np.array([-2.0, -3.0]) if live else np.array([-20.0, -20.0])
        if live:
            w_score[:, 0] = 4.0
            w_score[:, 2] = 1.0
        w_box = np.zeros((8, 3, 1, 1))
        w_box[:, 1] = 2.0 if live else 0.0
        for name, w, b, k, act in (("score", w_score, b_score, 1, True), ("bbox", w_box, np.full(8, 2.5), 4, False),
                                   ("kps", np.zeros((20, 3, 1, 1)), np.tile(kps_bias, 2), 10, False)):
            _scrfd_head(nodes, inits, outs, s, name, w, b, k, act)
    return _save(_scrfd_graph(nodes, inits, outs, inp, "fake_scrfd"), path)


ANYWHERE_STRIDE = 32
ANYWHERE_SCORE = 0.9     # the one face's score (every other anchor scores sigmoid(-20))
ANYWHERE_HALF = 6.0      # box half-size in strides: 384 x 384 of the 640 x 640 canvas
ANYWHERE_KPS_SCALE = 3.0  # keypoints = centre + (ARCFACE_TEMPLATE - 56) * scale pixels: a 336-pixel face


def anywhere_face(size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(box (4,), kps (5, 2))`` that :func:`make_anywhere_scrfd` reports on its ``size`` (width, height) canvas."""
    cx, cy = (size[0] // ANYWHERE_STRIDE // 2) * ANYWHERE_STRIDE, (size[1] // ANYWHERE_STRIDE // 2) * ANYWHERE_STRIDE
    half = ANYWHERE_HALF * ANYWHERE_STRIDE
    box = np.array([cx - half, cy - half, cx + half, cy + half], np.float32)
    kps = (np.array([cx, cy], np.float32) + (ARCFACE_TEMPLATE - 56.0) * ANYWHERE_KPS_SCALE).astype(np.float32)
    return box, kps


def make_anywhere_scrfd(path, size: tuple[int, int] = DET_SIZE) -> Path:
    """SCRFD stand-in (fixed input ``size`` (width, height)) that finds exactly one face in every picture: anchor 0 of
    the stride-32 cell in the middle of the canvas, score :data:`ANYWHERE_SCORE`, box and keypoints of
    :func:`anywhere_face`. The outputs are constants per cell (the input passes through a zero convolution), so
    noise, a blank frame or a portrait all give the same detection; the aligned crop (and so the embedding) still
    follows the picture."""
    _, helper, TensorProto = _helper()
    width, height = size
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, height, width])
    nodes, inits, outs = [], [], {}
    logit = float(np.log(ANYWHERE_SCORE / (1 - ANYWHERE_SCORE)))
    kps_offsets = ((ARCFACE_TEMPLATE - 56.0) * ANYWHERE_KPS_SCALE / ANYWHERE_STRIDE).reshape(-1)  # strides
    for s in STRIDES:
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]))
        gh, gw = height // s, width // s
        score = np.full((1, ANCHORS, gh, gw), -20.0)
        if s == ANYWHERE_STRIDE:
            score[0, 0, gh // 2, gw // 2] = logit
        for name, k, bias, act, position in (("score", 1, np.zeros(ANCHORS), True, score),
                                             ("bbox", 4, np.full(ANCHORS * 4, ANYWHERE_HALF), False, None),
                                             ("kps", 10, np.tile(kps_offsets, ANCHORS), False, None)):
            _scrfd_head(nodes, inits, outs, s, name, np.zeros((ANCHORS * k, 3, 1, 1)), bias, k, act, position)
    return _save(_scrfd_graph(nodes, inits, outs, inp, "anywhere_scrfd"), path)


def make_fake_arcface(path, weights, node_names=None) -> Path:
    """112 x 112 input -> 16 x 16 average pool (3 x 7 x 7) -> flatten -> ``weights (147, D)``."""
    _, helper, TensorProto = _helper()
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, weights.shape[1]])
    names = node_names or ["", "", ""]
    nodes = [helper.make_node("AveragePool", ["data"], ["p"], kernel_shape=[16, 16], strides=[16, 16], name=names[0]),
             helper.make_node("Reshape", ["p", "shape"], ["flat"], name=names[1]),
             helper.make_node("MatMul", ["flat", "w"], ["fc1"], name=names[2])]
    inits = [_init("shape", [1, 147], np.int64), _init("w", weights)]
    return _save(helper.make_graph(nodes, "fake_arcface", [inp], [out], inits), path)


MEMO_FACE_FOLDER = ("portrait_animation", "memo", "misc", "face_analysis", "models")  # the manifest's destination


def write_memo_identity_standins(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """MEMO's identity models under a ComfyUI ``models_dir`` where the manifest puts them
    (``portrait_animation/memo/misc/face_analysis/models/{scrfd_10g_bnkps,glintr100}.onnx``): the find-anywhere
    detector and a fake ArcFace with weights ~ N(0, 1/147) (embeddings of unit scale). Returns the two paths by the
    keys of ``memo.identity.MODEL_FILE_IDS``."""
    folder = Path(models_dir).joinpath(*MEMO_FACE_FOLDER)
    weights = np.random.default_rng(seed).normal(0, 147 ** -0.5, (147, 512)).astype(np.float32)
    return {"detector": make_anywhere_scrfd(folder / "scrfd_10g_bnkps.onnx"),
            "recognizer": make_fake_arcface(folder / "glintr100.onnx", weights)}
