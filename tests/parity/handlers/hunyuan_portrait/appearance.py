"""HunyuanPortrait parity handlers for the appearance path and the pre-/post-processing geometry: DINOv2 + IMAdapter
with the image projector, ArcFace alignment and input/output handling, the crop geometry of ``preprocess()`` with
recorded detections, and the soft paste-back. Weights load through ``hunyuan_portrait.appearance_loading`` exactly as
a download would."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from parity.runner import Case, handler
from portrait_animation.hunyuan_portrait import appearance_loading, identity, paste_back, preprocess


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@handler("hunyuan_portrait.dino_appearance")
def dino_appearance(case: Case, ckpt_dir: Path) -> dict:
    dino = appearance_loading.load_dino(ckpt_dir / appearance_loading.DINO_FILE, dtype=torch.float32)
    proj = appearance_loading.load_image_proj(ckpt_dir / appearance_loading.IMAGE_PROJ_FILE, dtype=torch.float32)
    inputs = case.inputs()
    image, arcface = inputs["transformed_image"], inputs["arcface_embedding"]
    tokens = dino(image, arcface)                       # (1, 261, 1024)
    appearance = proj(tokens)                           # (1, 64, 1024)
    return {
        "dino_tokens": tokens,
        "appearance_tokens": appearance,
        "appearance_tokens_uncond": torch.zeros_like(appearance),
        "pos_embed_224": dino.interpolate_pos_embed(image.shape[-2], image.shape[-1]),
    }


@handler("hunyuan_portrait.arcface_preprocess")
def arcface_preprocess(case: Case, ckpt_dir: Path) -> dict:
    inputs = case.inputs()
    size = int(case.settings.get("output_size", 112))
    aligned, inverse = preprocess.align_face(_np(inputs["crop_image"]), _np(inputs["landmarks"]), size)
    return {
        "aligned_face": torch.from_numpy(aligned),
        "onnx_input": torch.from_numpy(identity.arcface_input(aligned)),
        "inverse_similarity": torch.from_numpy(inverse),
        "embedding": torch.from_numpy(identity.normalize_embedding(_np(inputs["raw_embedding"]))),
    }


class _RecordedDetector:
    """Replays recorded detections, one ``(boxes xywh, landmarks)`` pair per detector call, in call order."""

    def __init__(self, calls: list[tuple[np.ndarray, np.ndarray]]):
        self.calls = list(calls)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.calls, "more detector calls than recorded"
        return self.calls.pop(0)


@handler("hunyuan_portrait.preprocess_geometry")
def preprocess_geometry(case: Case, ckpt_dir: Path) -> dict:
    s, inputs = case.settings, {k: _np(v) for k, v in case.inputs().items()}
    size = int(s.get("image_size", 512))
    detector = _RecordedDetector([(inputs["det_source_boxes"], inputs["det_source_landmarks"]),
                                  (inputs["det_crop_boxes"], inputs["det_crop_landmarks"])])
    src = preprocess.prepare_source(inputs["source_image"], detector, image_size=size,
                                    dino_size=int(s.get("dino_size", 224)))
    frames = inputs["driving_frames"]
    detector = _RecordedDetector([(inputs["det_frame_boxes"][i], inputs["det_frame_landmarks"][i])
                                  for i in range(len(frames))])
    drv = preprocess.prepare_driving(frames, detector, image_size=size, motion_size=int(s.get("motion_size", 256)),
                                     motion_scale=float(s.get("motion_scale", 0.45)),
                                     expand_ratio=float(s.get("expand_ratio", 1.0)))
    return {
        "crop_bbox": torch.tensor(src.crop_bbox, dtype=torch.int64),
        "head_crop_bbox": torch.tensor(drv.head_box, dtype=torch.int64),
        "motion_ref_boxes": torch.from_numpy(drv.face_boxes),
        "motion_boxes": torch.from_numpy(drv.motion_boxes),
        "ref_img": src.ref_img,
        "transformed_images": src.dino_image,
        "arcface_image": torch.from_numpy(src.arcface_face),
        "motion_face_image": drv.motion_face,
        "motion_pose_image": drv.motion_pose,
        "lmk_list": torch.from_numpy(drv.landmarks),
    }


@handler("hunyuan_portrait.paste_back")
def paste_back_case(case: Case, ckpt_dir: Path) -> dict:
    inputs = case.inputs()
    original = _np(inputs["original_image"])
    box = [int(v) for v in inputs["crop_bbox"].tolist()]
    frames = paste_back.video_to_uint8(inputs["video"][0].permute(1, 2, 3, 0))   # (T, H, W, 3)
    x1, y1, x2, y2 = box
    mask = paste_back.soft_mask(x2 - x1, y2 - y1, float(case.settings.get("border_ratio", 0.1)))
    pasted = np.stack([paste_back.paste_back_frame(original, f, box, mask) for f in frames])
    return {
        "generated_uint8": torch.from_numpy(frames),
        "soft_mask": torch.from_numpy(mask),
        "pasted": torch.from_numpy(pasted),
    }
