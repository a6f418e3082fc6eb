"""Shared node vocabulary: categories, custom types, conversions between ComfyUI values and core objects."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..runtime import get_runtime

CATEGORY = "Portrait Animation"
CAT_MODELS = f"{CATEGORY}/Models"
CAT_FACE = f"{CATEGORY}/Face"
CAT_MEDIA = f"{CATEGORY}/Media"
PREFIX = "PortraitAnim"  # node ids are PortraitAnim_<Name>
DTYPES = ("auto", "bf16", "fp16", "fp32")  # model precision choices; auto follows ComfyUI's policy

# Custom wire types. Values are core Python objects passed by reference.
FaceLandmarks = io.Custom("PA_FACE_LANDMARKS")   # face.FaceTrack: per-frame detections and landmarks
CropInfo = io.Custom("PA_CROP_INFO")             # face.CropInfo: crop boxes and original frame size
FaceDetector = io.Custom("PA_FACE_DETECTOR")     # face.FaceDetector configured by the loader node


def node_runtime(cls):
    """The ComfyUI runtime bound to the executing node (for per-node progress)."""
    return get_runtime(node_id=getattr(getattr(cls, "hidden", None), "unique_id", None))
