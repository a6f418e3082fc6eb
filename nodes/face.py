"""Face nodes: MediaPipe detector loader, landmark detection, stable square face crop, feathered paste-back.

Thin adapters over :mod:`..face`; the core (OpenCV, MediaPipe) is imported when a node runs, not at import time.
"""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..face.constants import (BACKENDS, DEFAULT_CROP_SIZE, DEFAULT_FEATHER, DEFAULT_OFFSET_Y, DEFAULT_SCALE,
                              DEFAULT_WINDOW, FEATHER_UNITS, FRAME_RULES, MASK_SHAPES, ON_MISSING, PAD_MODES,
                              STABILITY_MODES)
from .common import CAT_FACE, PREFIX, CropInfo, FaceDetector, FaceLandmarks, node_runtime

PREVIEW_MAX_SIDE = 512  # the landmark preview is downsized to this (it is for looking at, not for compositing)


def _image_batch(images, name: str):
    if images is None or images.ndim != 4 or images.shape[0] == 0:
        shape = None if images is None else tuple(images.shape)
        raise ValueError(f"input '{name}' must be a non-empty IMAGE batch [B, H, W, 3], got shape {shape}")
    return images


class FaceDetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_FaceDetector",
            display_name="Face Detector (MediaPipe)",
            category=CAT_FACE,
            description="Sets up MediaPipe face detection with 478 face landmarks (eyes, irises, lips, contour). "
                        "Works offline with the models bundled in mediapipe <= 0.10.21; newer mediapipe versions "
                        "need face_landmarker.task (models/portrait_animation/face/), fetched when 'download' is on.",
            inputs=[
                io.Combo.Input("backend", options=list(BACKENDS), default="auto",
                               tooltip="auto: use face_landmarker.task if it is installed, else the models bundled "
                                       "with mediapipe, else the task file (needs 'download' or a manual copy). "
                                       "bundled: legacy mediapipe.solutions models (mediapipe <= 0.10.21 only), "
                                       "best for small faces in large frames. task: MediaPipe Tasks FaceLandmarker."),
                io.Int.Input("max_faces", default=4, min=1, max=16,
                             tooltip="Most faces detected per frame. The face to use is chosen later by "
                                     "'face_index' (0 = largest)."),
                io.Float.Input("min_confidence", default=0.5, min=0.05, max=0.95, step=0.05,
                               tooltip="Detection confidence threshold. Lower it when faces are missed (profile "
                                       "views, dark or blurry frames); raise it when non-faces are detected."),
                io.Boolean.Input("download", default=True,
                                 tooltip="Fetch face_landmarker.task (3.6 MB, from Google's MediaPipe model storage) on "
                                         "first use when the chosen backend needs it and it is missing. Off: never "
                                         "download (offline installs); the error says where the file goes."),
            ],
            outputs=[FaceDetector.Output(display_name="detector",
                                         tooltip="The configured face detector, for Detect Face Landmarks or "
                                                 "Face Crop.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, backend, max_faces, min_confidence, download) -> io.NodeOutput:
        from ..face.detect import FaceDetector as CoreFaceDetector

        detector = CoreFaceDetector(backend=backend, max_faces=max_faces, min_confidence=min_confidence,
                                    download=download)
        detector.prepare()  # resolves the backend now: a missing model is reported on this node
        return io.NodeOutput(detector)


class DetectFaceLandmarks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_DetectFaceLandmarks",
            display_name="Detect Face Landmarks",
            category=CAT_FACE,
            description="Finds one face in every frame and its 478 MediaPipe landmarks (pixel coordinates). "
                        "Frames without the face stop the run with the frame numbers, or are filled from the "
                        "nearest frame with a face.",
            inputs=[
                FaceDetector.Input("detector", tooltip="A face detector from 'Face Detector (MediaPipe)'."),
                io.Image.Input("images", tooltip="Frames to analyse (an image or a video as an IMAGE batch)."),
                io.Int.Input("face_index", default=0, min=0, max=15,
                             tooltip="Which face when there are several: 0 = the largest, 1 = the second largest, "
                                     "... In a video the chosen face is then followed from frame to frame."),
                io.Combo.Input("on_missing", options=list(ON_MISSING), default="error",
                               tooltip="error: stop and list the frames where the face was not found. "
                                       "fill_nearest: reuse the landmarks of the nearest frame with a face (the "
                                       "filled frames are drawn orange in the preview)."),
            ],
            outputs=[
                FaceLandmarks.Output(display_name="landmarks",
                                     tooltip="Per-frame landmarks, face boxes and frame size, for Face Crop."),
                io.Image.Output(display_name="preview",
                                tooltip=f"The frames with landmarks and face boxes drawn (at most "
                                        f"{PREVIEW_MAX_SIDE} px on the long side): green = detected, orange = "
                                        "filled from another frame, red border = no face."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, detector, images, face_index, on_missing) -> io.NodeOutput:
        from ..face.draw import draw_landmarks

        images = _image_batch(images, "images")
        rt = node_runtime(cls)
        with rt.progress(len(images), desc="face landmarks") as p:
            track = detector.track(images, face_index=face_index, on_missing=on_missing, input_name="images",
                                   progress=p.update)
        preview = draw_landmarks(images, track, max_side=PREVIEW_MAX_SIDE)
        return io.NodeOutput(track, preview)


class FaceCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_FaceCrop",
            display_name="Face Crop",
            category=CAT_FACE,
            description="Cuts a square crop around the face in every frame and resizes it (512 px for the "
                        "portrait-animation models). The box can be held steady over a video. Keep 'crop_info' "
                        "to paste the animated face back with Face Paste Back.",
            inputs=[
                io.Image.Input("images", tooltip="Frames to crop (an image or a video as an IMAGE batch)."),
                io.Int.Input("size", default=DEFAULT_CROP_SIZE, min=64, max=4096, step=8,
                             tooltip="Side of the square output crops in pixels."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=1.0, max=6.0, step=0.05,
                               tooltip="Box side as a multiple of the face size (landmark extent, forehead to "
                                       "chin). About 1.6 is a tight face, 2.0 the head with hair, 2.5+ includes "
                                       "shoulders."),
                io.Float.Input("offset_y", default=DEFAULT_OFFSET_Y, min=-1.0, max=1.0, step=0.01,
                               tooltip="Moves the box vertically by this fraction of the face size: negative = up "
                                       "(more hair), positive = down (more neck)."),
                io.Combo.Input("stability", options=list(STABILITY_MODES), default="smooth",
                               tooltip="smooth: average the box over 'smoothing_window' frames (steady, follows "
                                       "the head). fixed: one box for the whole clip, holding the face in every "
                                       "frame. per_frame: each frame's own box (jitters with the landmarks)."),
                io.Int.Input("smoothing_window", default=DEFAULT_WINDOW, min=1, max=301, step=2,
                             tooltip="Frames averaged by the 'smooth' mode (centred window). Larger is steadier "
                                     "but lags fast head motion."),
                io.Combo.Input("padding", options=list(PAD_MODES), default="replicate",
                               tooltip="How to fill parts of the box outside the frame: repeat the edge pixels, "
                                       "black, or mirror the image."),
                FaceLandmarks.Input("landmarks", optional=True,
                                    tooltip="Landmarks from Detect Face Landmarks for these same frames. If not "
                                            "connected, the largest face is detected with default settings (auto "
                                            "backend, no download) and the run stops if a frame has no face."),
            ],
            outputs=[
                io.Image.Output(display_name="crops", tooltip="Square face crops [B, size, size, 3]."),
                CropInfo.Output(display_name="crop_info",
                                tooltip="Where each crop came from (boxes in source pixels, frame size), for Face "
                                        "Paste Back."),
                FaceLandmarks.Output(display_name="crop_landmarks",
                                     tooltip="The landmarks moved into the crops' pixel coordinates."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, images, size, scale, offset_y, stability, smoothing_window, padding,
                landmarks=None) -> io.NodeOutput:
        from ..face.crop import crop_faces, crop_track
        from ..face.detect import detect_landmarks

        images = _image_batch(images, "images")
        n = len(images)
        rt = node_runtime(cls)
        with rt.progress(n if landmarks is not None else 2 * n, desc="face crop") as p:
            if landmarks is None:
                landmarks = detect_landmarks(images, input_name="images", progress=p.update)
            crops, info = crop_faces(images, landmarks, size=size, scale=scale, offset_y=offset_y, mode=stability,
                                     window=smoothing_window, pad_mode=padding, input_name="images",
                                     progress=p.update)
        return io.NodeOutput(crops, info, crop_track(landmarks, info))


class FacePasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}_FacePasteBack",
            display_name="Face Paste Back",
            category=CAT_FACE,
            description="Puts generated face crops back into the original frames at the boxes from Face Crop, "
                        "blended with a soft-edged mask. Pixels outside the mask stay exactly the original. One "
                        "output frame per generated frame; a single original image is used for all of them.",
            inputs=[
                io.Image.Input("generated",
                               tooltip="The generated (animated) face frames, any size; each is resized to its box."),
                CropInfo.Input("crop_info", tooltip="The crop_info output of the Face Crop that made the crops."),
                io.Image.Input("original",
                               tooltip="The frames that went into Face Crop (or a resized copy with the same aspect "
                                       "ratio). One image is used for every generated frame."),
                io.Float.Input("feather", default=DEFAULT_FEATHER, min=0.0, max=512.0, step=0.01,
                               tooltip="Width of the soft edge of the mask: a fraction of the box side (0.1 = 10%) "
                                       "or pixels, per 'feather_unit'. 0 gives a hard edge."),
                io.Combo.Input("feather_unit", options=list(FEATHER_UNITS), default="fraction",
                               tooltip="fraction: 'feather' is a fraction of the box side (at most 0.5). pixels: "
                                       "'feather' is in pixels of the original frames."),
                io.Combo.Input("mask_shape", options=list(MASK_SHAPES), default="rounded_rectangle",
                               tooltip="Shape of the blend mask inside the box: rounded rectangle (keeps most of "
                                       "the crop), ellipse (the circle inscribed in the box), or rectangle."),
                io.Combo.Input("frame_rule", options=list(FRAME_RULES), default="loop",
                               tooltip="When there are more generated frames than original frames (or crop "
                                       "boxes): loop repeats the originals from the start, clamp holds the last "
                                       "one. A single original image is always used for every frame."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The original frames with the generated face pasted in."),
                io.Mask.Output(display_name="mask", tooltip="The blend mask used per frame [B, H, W] (1 = generated)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, generated, crop_info, original, feather, feather_unit, mask_shape,
                frame_rule) -> io.NodeOutput:
        from ..face.paste import paste_back

        generated = _image_batch(generated, "generated")
        original = _image_batch(original, "original")
        rt = node_runtime(cls)
        with rt.progress(len(generated), desc="face paste-back") as p:
            images, masks = paste_back(generated, crop_info, original, feather=feather, feather_unit=feather_unit,
                                       shape=mask_shape, frame_rule=frame_rule, progress=p.update)
        return io.NodeOutput(images, masks)


NODES = [FaceDetectorLoader, DetectFaceLandmarks, FaceCrop, FacePasteBack]
