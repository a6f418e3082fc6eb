"""Parity handlers of HelloMeme's pre-processing geometry (``hellomeme.geom_*``): no weights, pure numpy/OpenCV."""
from __future__ import annotations

import numpy as np
import torch

from parity.runner import handler
from portrait_animation.motion.hellomeme import geometry as geo
from portrait_animation.motion.hellomeme import pose_image


def _np(inputs: dict, name: str) -> np.ndarray:
    return inputs[name].numpy()


@handler("hellomeme.geom_crop_and_resize")
def crop_and_resize(case, ckpt_dir):
    inputs = case.inputs()
    settings = case.settings
    frames, landmarks, _ = geo.crop_and_resize(_np(inputs, "frames"), _np(inputs, "landmarks"),
                                               size=int(settings.get("save_size", 512)),
                                               crop=bool(settings.get("crop", True)))
    return {"frame0": torch.from_numpy(frames[0]), "landmarks_out": torch.from_numpy(np.asarray(landmarks))}


@handler("hellomeme.geom_3dmm_align")
def threedmm_align(case, ckpt_dir):
    inputs = case.inputs()
    image, landmarks, coeffs = _np(inputs, "image"), _np(inputs, "landmarks"), _np(inputs, "coeffs")
    crop_rgb, warp = geo.threedmm_input(image, landmarks)
    angles, trans = geo.threedmm_head_pose(coeffs, warp, image.shape[:2])
    return {"warp_M": torch.from_numpy(warp.matrix), "onnx_input_u8": torch.from_numpy(crop_rgb),
            "angles": torch.from_numpy(np.ascontiguousarray(angles)), "trans": torch.from_numpy(trans)}


@handler("hellomeme.geom_control_heatmaps")
def control_heatmaps(case, ckpt_dir):
    inputs = case.inputs()
    settings = case.settings
    rot, trans, ref = _np(inputs, "rot"), _np(inputs, "trans"), _np(inputs, "ref_trans")
    condition, corners = pose_image.pose_images(list(rot), list(trans), ref, size=int(settings.get("save_size", 512)),
                                                trans_ratio=float(settings.get("trans_ratio", 0.0)))
    return {"rect": torch.from_numpy(corners), "condition_last": condition[:, -1:].round().to(torch.int8)}


@handler("hellomeme.geom_arkit_align")
def arkit_align(case, ckpt_dir):
    inputs = case.inputs()
    crop, m = geo.arkit_input(_np(inputs, "image"), _np(inputs, "landmarks"))
    return {"warp_M": torch.from_numpy(m), "onnx_input_u8": torch.from_numpy(crop)}


@handler("hellomeme.geom_face_parts")
def face_parts(case, ckpt_dir):
    inputs = case.inputs()
    crops, align, parts = geo.face_part_crops(_np(inputs, "images"), _np(inputs, "landmarks"))
    # the CLIP input itself must be computable from these crops
    clip_in = geo.clip_normalize(crops[0])
    assert clip_in.shape == (3, 3, 224, 224) and clip_in.dtype == torch.float32
    return {"align_M": torch.from_numpy(align), "part_M": torch.from_numpy(parts),
            "clip_input_u8_frame0": torch.from_numpy(np.ascontiguousarray(crops[0]))}


@handler("hellomeme.geom_pdfgc_warp")
def pdfgc_warp(case, ckpt_dir):
    inputs = case.inputs()
    warped, m = geo.pdfgc_warp(_np(inputs, "image"), _np(inputs, "landmarks"))
    return {"similarity": torch.from_numpy(m), "warped": torch.from_numpy(warped),
            "encoder_input": geo.bgr_to_signed_rgb(warped)}


_PDFGC_ROWS = list(range(0, 48)) + list(range(500, 548))


@handler("hellomeme.geom_coeff_tokens")
def coeff_tokens(case, ckpt_dir):
    inputs = case.inputs()
    arkit, pd = inputs["arkit"], inputs["pd_fgc"]
    out = {}
    for dim in (320, 1024):
        out[f"tokens_arkit_{dim}"] = geo.coefficient_tokens(arkit, dim, geo.ARKIT_TOKEN_SCALE).reshape(-1, dim)
        table = geo.coefficient_tokens(pd, dim, geo.PDFGC_TOKEN_SCALE).reshape(-1, dim)
        out[f"tokens_pdfgc_{dim}_rows"] = table[[r for r in _PDFGC_ROWS if r < table.shape[0]]]
    return out
