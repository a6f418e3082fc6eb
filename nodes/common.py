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


# Output choice of the sampler nodes: every frame as IMAGE batches, or an mp4 written clip by clip.
OUTPUT_MODES = ("frames", "video file")
OUTPUT_TOOLTIP = ("frames: every frame in memory as IMAGE batches (and a VIDEO made from them), as before; fine for "
                  "short or small videos. video file: each finished clip is pasted back (where that applies) and "
                  "encoded straight into an mp4 with the audio in ComfyUI's temp folder, so memory stays the same "
                  "whatever the length and size; the video output is that file (connect it to Save Video) and the "
                  "IMAGE outputs hold only the first frame, as a preview.")
PREVIEW_NOTE = " With output 'video file': only the first frame, as a preview."


def output_input():
    return io.Combo.Input("output", options=list(OUTPUT_MODES), default="frames", optional=True,
                          tooltip=OUTPUT_TOOLTIP)


def stream_video_path(node_name: str) -> str:
    """A fresh mp4 path under ComfyUI's temp folder (``portrait_animation/<node>_<n>.mp4``; emptied at startup)."""
    import os
    import uuid

    import folder_paths

    folder = os.path.join(folder_paths.get_temp_directory(), "portrait_animation")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{node_name}_{uuid.uuid4().hex[:12]}.mp4")


def video_from_file(path: str):
    """A core VIDEO backed by the file (Save Video copies its streams without re-encoding)."""
    from comfy_api.v0_0_2 import InputImpl

    return InputImpl.VideoFromFile(path)


def paste_frame_fn(crop_info, original):
    """``(i, crop [h, w, 3]) -> full frame [H, W, 3]`` pasting streamed frames back (Face Paste Back's defaults) into
    one reused buffer; None when neither input is connected. Checked before any sampling."""
    if crop_info is None and original is None:
        return None
    if crop_info is None or original is None:
        missing = "crop_info" if crop_info is None else "original"
        raise ValueError(f"input '{missing}' is not connected: connect both crop_info and original to paste the "
                         "video back into the full portrait, or neither to encode the generated frames as they are")
    import numpy as np

    from ..face.paste import FramePaster

    paster = FramePaster(crop_info, original)
    buffer = np.empty((paster.height, paster.width, 3), np.float32)
    return lambda i, crop: paster.frame(i, crop, out=buffer)
