"""HunyuanPortrait parity handler for the whole inference script (``hunyuan_portrait.pipeline``): the recorded
pre-processing result, the ArcFace network output and the two Gaussian draws go in; every network loads from the
official layout through :func:`hunyuan_portrait.pipeline.load_models`, as a download would."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from parity.runner import Case, handler
from portrait_animation.hunyuan_portrait import identity
from portrait_animation.hunyuan_portrait import pipeline as hp_pipeline

WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _settings(s: dict) -> hp_pipeline.PortraitSettings:
    return hp_pipeline.PortraitSettings(
        width=s["width"], height=s["height"], num_inference_steps=s["num_inference_steps"],
        pad_frames=s["pad_frames"], n_sample_frames=s["n_sample_frames"], overlap=s["overlap"],
        shift_offset=s["shift_offset"], fps=s["fps"], motion_bucket_id=s["motion_bucket_id"],
        noise_aug_strength=s["noise_aug_strength"], decode_chunk_size=s["decode_chunk_size"],
        min_appearance_guidance_scale=s["min_appearance_guidance_scale"],
        max_appearance_guidance_scale=s["max_appearance_guidance_scale"],
        min_motion_guidance_scale=s["min_motion_guidance_scale"],
        max_motion_guidance_scale=s["max_motion_guidance_scale"], i2i_noise_strength=s["i2i_noise_strength"])


@handler("hunyuan_portrait.e2e_inference")
def e2e_inference(case: Case, ckpt_dir: Path) -> dict:
    s, x = case.settings, case.inputs()
    settings = _settings(s)
    models = hp_pipeline.load_models(ckpt_dir, dtype=WEIGHT_DTYPES[s["weight_dtype"]])
    arcface_input = identity.arcface_input(x["arcface_image"].numpy())             # (1, 3, 112, 112)
    embedding = hp_pipeline.identity_embedding(x["arcface_raw_output"].numpy())    # (1, 512)
    result = hp_pipeline.generate(models, x["ref_img"], x["transformed_images"], embedding,
                                  x["motion_face_image"], x["motion_pose_image"], x["lmk_list"].numpy(), settings,
                                  noise_aug_noise=x["noise_aug_noise"], initial_noise=x["initial_noise"])
    assert result.video.shape[2] == len(x["motion_face_image"]), "pads not trimmed"
    pasted = list(hp_pipeline.iter_pasted_frames(x["original_image"].numpy(), result.video,
                                                 x["crop_bbox"].tolist(), settings.border_ratio))
    return {
        "arcface_input": torch.from_numpy(arcface_input),
        "intensity_ids": torch.from_numpy(result.intensity_ids),
        "motion_tokens_padded": result.motion_tokens,
        "final_latents": result.final_latents,
        "video": result.video,
        "pasted": torch.from_numpy(np.stack(pasted)),
    }
