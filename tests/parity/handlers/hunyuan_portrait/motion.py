"""HunyuanPortrait parity handlers for the motion side: the expression encoder, the head-pose net, the intensity ids,
the intensity-aware refiner and the pose guider. Weights load through ``motion.hunyuan.loading`` and
``hunyuan_portrait.pose_guider`` exactly as a download would."""
from __future__ import annotations

from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.hunyuan_portrait import pose_guider as hp_pose_guider
from portrait_animation.motion.hunyuan import intensity as hp_intensity
from portrait_animation.motion.hunyuan import loading as motion_loading
from portrait_animation.motion.hunyuan.head_pose import pose_embedding


@handler("hunyuan_portrait.expression_encoder")
def expression_encoder(case: Case, ckpt_dir: Path) -> dict:
    model = motion_loading.load_expression_encoder(ckpt_dir / motion_loading.EXPRESSION_FILE)
    return {"expression_feature": model(case.inputs()["motion_face_image"])}


@handler("hunyuan_portrait.head_pose")
def head_pose(case: Case, ckpt_dir: Path) -> dict:
    from portrait_animation.motion.hunyuan.head_pose import head_pose_input

    model = motion_loading.load_head_pose(ckpt_dir / motion_loading.HEAD_POSE_FILE)
    pose = model(head_pose_input(case.inputs()["motion_pose_image"]))
    return {"rotation": pose.rotation, "translation": pose.translation, "pose_embedding": pose_embedding(pose)}


@handler("hunyuan_portrait.intensity_ids")
def intensity_ids(case: Case, ckpt_dir: Path) -> dict:
    s = case.settings
    settings = hp_intensity.IntensitySettings(chunk=int(s["chunk_frames"]), nose_index=int(s["nose_index"]),
                                              max_value=int(s["max_value"]), exp_scale=float(s["exp_scale"]),
                                              head_scale=float(s["head_scale"]))
    out = {}
    for name, lmk in case.inputs().items():
        ids, raw = hp_intensity.chunk_intensity_ids(lmk.numpy(), settings)
        tag = name.removeprefix("landmarks_")
        out[f"ids_{tag}"], out[f"raw_{tag}"] = torch.from_numpy(ids), torch.from_numpy(raw)
    return out


@handler("hunyuan_portrait.motion_refiner")
def motion_refiner(case: Case, ckpt_dir: Path) -> dict:
    model = motion_loading.load_motion_refiner(ckpt_dir / motion_loading.MOTION_REFINER_FILE)
    x = case.inputs()
    tokens, block0 = model(x["motion_features"], x["head_id"], x["exp_id"], return_block0=True)
    return {"motion_tokens": tokens, "intensity_embedding": model.intensity(x["head_id"], x["exp_id"]),
            "latents_after_block0": block0}


@handler("hunyuan_portrait.pose_guider")
def pose_guider(case: Case, ckpt_dir: Path) -> dict:
    guider = hp_pose_guider.load_pose_guider(ckpt_dir / hp_pose_guider.POSE_GUIDER_FILE)
    image = case.inputs()["pose_image_random"]                     # (B, 3, F, H, W)
    black = guider(torch.zeros_like(image))
    # the constant-map shortcut used by the sampler must equal the full run on every frame
    h, w = image.shape[-2:]
    const = hp_pose_guider.pose_feature_map(guider, h, w)
    assert torch.allclose(black[0].transpose(0, 1), const.expand(black.shape[2], -1, -1, -1), atol=1e-6)
    return {"pose_features_black": black, "pose_features_random": guider(image)}
