"""From a reference image and driving frames to HelloMeme's drive parameters (the official pre-processing flow).

:func:`hellomeme_conditions` does, as the original ``Generator``:

1. 222 landmarks of the reference and of every driving frame (official toolkit, two-pass tracking, largest face);
   frames without a face are reported (error naming them) or filled from the nearest face frame on request;
2. one 512 x 512 crop box for the whole driving clip (3x the mean face size, moved up), the reference cropped the
   same way (or resized whole with ``crop_reference=False``);
3. head angles and translation of every 512 crop from the 3DMM, drawn as pose images around the reference head's
   position (driving translation relative to the first frame x ``trans_ratio``);
4. the expression: PD-FGC codes (default, ``"pdfgc"``) or ARKit blendshapes + CLIP ViT-H embeddings of three face
   parts (``"arkit"``);
5. the same for the reference with ``trans_ratio`` 0 (``ref_params``, used by v5c).

Everything is returned as CPU float32 tensors in a :class:`HelloMemeConditions`, so a node can cache it apart from
sampling. ``head_pose="approximate"`` replaces the ONNX toolkit by MediaPipe landmarks (the pack's :mod:`face`
package) and :func:`.toolkit.approximate_head_pose` - an offline APPROXIMATION of the official pose and crop, for
the PD-FGC expression only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import geometry as geo
from . import pose_image
from . import toolkit as tk

EXPRESSIONS = ("pdfgc", "arkit")
HEAD_POSES = ("3dmm", "approximate")
CROP_SIZE = geo.CROP_SIZE


@dataclass
class HelloMemeConditions:
    """Driving conditions of one reference + driving clip (CPU float32 tensors).

    * ``condition`` ``(1, 3, F, 512, 512)`` RGB pose images in [-1, 1];
    * ``pd_fpg`` ``(1, F, 548)`` and ``neg_pd_fpg`` ``(1, 1, 548)`` (expression "pdfgc"), or ``drive_coeff``
      ``(1, F, 51)`` and ``face_parts`` ``(1, F, 3, 1024)`` (expression "arkit");
    * ``ref_params``: the same keys for the reference (``condition`` ``(1, 3, 1, 512, 512)``), as v5c takes them;
    * ``reference_image`` ``(1, 512, 512, 3)`` and ``driving_images`` ``(F, 512, 512, 3)``: the RGB crops in [0, 1]
      (IMAGE layout) the generation works on; ``reference_landmarks`` / ``driving_landmarks`` in those crops;
    * ``angles`` / ``translations`` ``(F, 3)`` and ``ref_angles`` / ``ref_translation`` ``(3,)``: the head poses;
    * ``filled_frames``: ``{driving frame: frame it repeats}`` for frames without a face (with
      ``on_missing="fill_nearest"`` such a frame is replaced by its source frame: same pose, same expression);
    * ``crop_box`` / ``reference_box``: ``(x0, y0, x1, y1)`` source regions of the crops; ``reference_size``
      ``(H, W)`` of the reference input (so :meth:`reference_crop_info` can undo the crop);
    * ``fps``: the frame rate of the driving frames used (after :func:`resample_indices`; 0 = unknown),
      ``source_fps`` / ``source_frame_count`` those of the driving input, ``source_frames``: which input frame each
      used frame is.
    """

    condition: torch.Tensor
    expression: str
    ref_params: dict
    reference_image: torch.Tensor
    driving_images: torch.Tensor
    angles: torch.Tensor
    translations: torch.Tensor
    ref_angles: torch.Tensor
    ref_translation: torch.Tensor
    reference_landmarks: np.ndarray
    driving_landmarks: np.ndarray
    pd_fpg: Optional[torch.Tensor] = None
    neg_pd_fpg: Optional[torch.Tensor] = None
    drive_coeff: Optional[torch.Tensor] = None
    face_parts: Optional[torch.Tensor] = None
    filled_frames: dict = field(default_factory=dict)
    crop_box: tuple = ()
    reference_box: tuple = ()
    trans_ratio: float = 0.0
    head_pose: str = "3dmm"
    reference_size: tuple = ()
    reference_cropped: bool = True
    fps: float = 0.0
    source_fps: float = 0.0
    source_frames: tuple = ()
    source_frame_count: int = 0

    @property
    def num_frames(self) -> int:
        return int(self.condition.shape[2])

    def drive_params(self) -> dict:
        """The pipelines' ``drive_params`` dict."""
        if self.expression == "pdfgc":
            return {"condition": self.condition, "pd_fpg": self.pd_fpg, "neg_pd_fpg": self.neg_pd_fpg}
        return {"condition": self.condition, "drive_coeff": self.drive_coeff, "face_parts": self.face_parts}

    def reference_crop_info(self):
        """:class:`~...face.crop.CropInfo` of the reference crop, in the reference input's pixels, so that
        ``paste_back(generated, info, reference)`` puts a generated image exactly where the crop came from.

        The crop is square (``clip_crop_box``), so it is one ``(x0, y0, side)`` box. Without ``crop_reference`` the
        whole reference was resized to a square: exact for a square reference; a non-square one was stretched,
        which a square box cannot undo, so the info then describes a ``side`` x ``side`` frame (its own size) and
        paste-back into the original refuses the mismatched aspect ratio instead of pasting a distorted face.
        """
        from ...face.crop import CropInfo

        h, w = self.reference_size
        x0, y0, x1, y1 = (int(v) for v in self.reference_box)
        side = x1 - x0
        params = {"source": "HelloMeme Driving Conditions", "face_scale": geo.CROP_FACE_SCALE,
                  "shift_up": geo.CROP_SHIFT_UP, "cropped": self.reference_cropped}
        if not self.reference_cropped and h != w:
            return CropInfo(height=CROP_SIZE, width=CROP_SIZE, boxes=[[0, 0, CROP_SIZE]], size=CROP_SIZE,
                            params=dict(params, stretched_from=[h, w]))
        return CropInfo(height=int(h), width=int(w), boxes=[[x0, y0, side]], size=CROP_SIZE, params=params)

    def report(self) -> str:
        """One line per notable fact (frames, frame rate, pose source, filled frames, crop)."""
        lines = [f"{self.num_frames} driving frame(s), expression {self.expression}, head pose {self.head_pose}, "
                 f"trans_ratio {self.trans_ratio:g}"]
        if self.source_frames and list(self.source_frames) != list(range(self.source_frame_count)):
            lines.append(f"driving at {self.fps:g} fps: {self.num_frames} frame(s) picked (nearest in time) from the "
                         f"{self.source_frame_count} input frames at {self.source_fps:g} fps")
        elif self.fps:
            lines.append(f"driving at {self.fps:g} fps (every input frame)")
        if self.reference_size:
            x0, y0, x1, y1 = self.reference_box
            h, w = self.reference_size
            if self.reference_cropped:
                lines.append(f"reference crop: {x1 - x0} px square at ({x0}, {y0}) of the {w}x{h} reference")
            elif h != w:
                lines.append(f"reference not cropped: the {w}x{h} reference was stretched to a square; its crop "
                             "info cannot be pasted back into the original (use crop_reference)")
        if self.filled_frames:
            from ...face.track import format_ranges

            lines.append(f"frames without a face, filled from the nearest face frame: "
                         f"{format_ranges(sorted(self.filled_frames))}")
        return "\n".join(lines)


# ---- frame rate ----------------------------------------------------------------------------------------------------------
def resample_indices(num_frames: int, source_fps: float, target_fps: float) -> list[int]:
    """Which of ``num_frames`` input frames (at ``source_fps``) drive a clip at ``target_fps``.

    The original re-encodes the driving video to 8 fps (``ffmpeg -r 8``, libx264 crf 18) before reading it: a
    constant-rate conversion that keeps, for each output instant ``k / target_fps``, (up to ffmpeg's timestamp
    rounding, which is not reproduced) the input frame nearest in time. This is that pick without the lossy
    re-encode: output frame ``k`` is input frame ``floor(k * source_fps / target_fps + 0.5)``
    (clamped to the last frame), for ``round(num_frames * target_fps / source_fps)`` output frames (at least one),
    so the clip keeps its duration (and stays aligned with its audio) to within half an output frame. A target above
    the source rate repeats frames, as the re-encode does. ``target_fps <= 0`` keeps every frame.
    """
    if num_frames < 1:
        raise ValueError("no driving frames")
    if target_fps <= 0 or num_frames == 1:
        return list(range(num_frames))
    if source_fps <= 0:
        raise ValueError(f"resampling {num_frames} driving frames to {target_fps:g} fps needs their frame rate: "
                         "connect Load Video (Frames)'s fps to input 'fps', or set 'driving_fps' to 0 to use every "
                         "frame")
    ratio = float(source_fps) / float(target_fps)
    count = max(1, int(np.floor(num_frames / ratio + 0.5)))
    return [min(num_frames - 1, int(np.floor(k * ratio + 0.5))) for k in range(count)]


# ---- inputs --------------------------------------------------------------------------------------------------------------
def _uint8_rgb_frames(images, name: str) -> list[np.ndarray]:
    """IMAGE tensor ``[B, H, W, C]`` float 0..1 / uint8 RGB array(s) -> list of contiguous ``(H, W, 3)`` uint8 RGB."""
    from ...face.frames import as_batch, frame_uint8

    batch = as_batch(images, name)
    frames = [frame_uint8(batch, i) for i in range(len(batch))]
    h, w = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape[:2] != (h, w):
            raise ValueError(f"input '{name}': frame {i} is {f.shape[1]}x{f.shape[0]}, frame 0 is {w}x{h}; all "
                             "frames must have the same size")
    return frames


def _to_bgr(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.ascontiguousarray(f[..., ::-1]) for f in frames]


def _image_tensor(frames_bgr: np.ndarray) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 BGR -> IMAGE ``(F, H, W, 3)`` float32 RGB in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames_bgr[..., ::-1])).float() / 255.0


# ---- expression encoders -------------------------------------------------------------------------------------------------
def load_clip_image_encoder(store=None, download: bool = False, dtype: Optional[torch.dtype] = None):
    """CLIP ViT-H/14 ``CLIPVisionModelWithProjection`` (transformers) from the manifest's ``clip_vision`` file and
    its config (group ``expression_arkit``); strict apart from the ``position_ids`` buffer older exports carry."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ...loaders.checkpoint import CheckpointKeyError, diff_keys, read_state_dict
    from ...loaders.manifest import load_manifest
    from ...loaders.store import ModelStore

    manifest = load_manifest("hellomeme")
    files = [manifest.file("clip_vit_h_image_encoder"), manifest.file("clip_vit_h_image_encoder_config")]
    found = (store or ModelStore.default()).ensure(files, download=download)
    config = CLIPVisionConfig.from_json_file(str(found["clip_vit_h_image_encoder_config"]))
    model = CLIPVisionModelWithProjection(config)
    path = found["clip_vit_h_image_encoder"]
    sd = {k: v for k, v in read_state_dict(path, dtype=dtype).items() if not k.endswith("position_ids")}
    missing, unexpected, mismatched = diff_keys(model, sd)
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(str(path), missing, unexpected, mismatched, what="CLIPVisionModelWithProjection")
    model.load_state_dict(sd, strict=False)
    return model.to(dtype or torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def face_part_embeddings(clip_encoder, frames_bgr: np.ndarray, landmarks: np.ndarray,
                         batch_size: int = 24) -> torch.Tensor:
    """``(1, F, 3, 1024)`` CLIP ``image_embeds`` of the three face parts of every frame (see
    :func:`.geometry.face_part_crops`)."""
    crops, _, _ = geo.face_part_crops(frames_bgr, landmarks)
    pixels = geo.clip_normalize(crops.reshape(-1, *crops.shape[2:]))  # (F*3, 3, 224, 224)
    p = next(clip_encoder.parameters())
    out = [clip_encoder(pixel_values=pixels[i:i + batch_size].to(p.device, p.dtype)).image_embeds.float().cpu()
           for i in range(0, pixels.shape[0], batch_size)]
    emb = torch.cat(out, dim=0)
    return emb.reshape(crops.shape[0], crops.shape[1], -1)[None]


def pdfgc_faces(frames_bgr: np.ndarray, points5: np.ndarray) -> torch.Tensor:
    """``(F, 3, 224, 224)`` PD-FGC encoder inputs from the five alignment points ``(F, 5, 2)`` of every frame."""
    return torch.stack([geo.bgr_to_signed_rgb(geo.pdfgc_warp_points(f, p)[0]) for f, p in zip(frames_bgr, points5)])


# ---- landmark schemes ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Scheme:
    """Which points size the crop and feed the PD-FGC alignment, for 222 (official) or 478 (MediaPipe) landmarks."""

    extent: Optional[tuple]
    pdfgc: tuple


_OFFICIAL = _Scheme(extent=None, pdfgc=geo.PDFGC_POINTS)
_APPROX = _Scheme(extent=tk.APPROX_EXTENT_POINTS, pdfgc=tk.APPROX_PDFGC_POINTS)


def _mediapipe_landmarks(frames_rgb: list[np.ndarray], name: str, on_missing: str, detector):
    """``(landmarks (F, 478, 2), filled)`` from the pack's MediaPipe face detector."""
    track = detector.track(np.stack(frames_rgb), on_missing=on_missing, input_name=name)
    return track.stacked()[..., :2], dict(track.filled)


def _torch_device(device: Optional[str]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---- main entry ----------------------------------------------------------------------------------------------------------
def hellomeme_conditions(reference, driving, expression: str = "pdfgc", trans_ratio: float = 0.0,
                         crop_reference: bool = True, on_missing: str = "error", head_pose: str = "3dmm",
                         toolkit: Optional[tk.HelloFaceToolkit] = None, pdfgc_encoder=None, clip_encoder=None,
                         face_detector=None, store=None, download: bool = False, device: Optional[str] = None,
                         fps: float = 0.0, driving_fps: float = 0.0,
                         progress: Optional[Callable[[str, int, int], None]] = None) -> HelloMemeConditions:
    """Drive parameters for HelloMeme from ``reference`` (one RGB image: IMAGE tensor or uint8 array) and
    ``driving`` (RGB frames: IMAGE batch ``[F, H, W, 3]``, uint8 array or list).

    ``expression``: "pdfgc" (default, PD-FGC codes) or "arkit" (ARKit blendshapes + CLIP face parts).
    ``trans_ratio``: how much of the driving head's translation (relative to frame 0) moves the pose square.
    ``crop_reference``: crop the reference around its face like the driving frames (else resize it whole).
    ``on_missing``: "error" (default: raise naming the frames without a face) or "fill_nearest".
    ``fps``: the driving frames' rate (0 = unknown); ``driving_fps``: resample them in time to this rate first
    (:func:`resample_indices`; the original drives at 8; 0 keeps every frame). Frames not picked are never
    analysed; frame numbers in errors and reports are those of the picked clip.
    ``head_pose``: "3dmm" (official ONNX toolkit) or "approximate" (MediaPipe + solvePnP; PD-FGC only).
    Models not given are loaded from ``store`` (``ModelStore.default()``); ``device`` is "cpu", "cuda[:N]" or None
    (CUDA when available). ``progress(stage, done, total)`` is called as the work advances.
    """
    if expression not in EXPRESSIONS:
        raise ValueError(f"expression must be one of {EXPRESSIONS}, got {expression!r}")
    if head_pose not in HEAD_POSES:
        raise ValueError(f"head_pose must be one of {HEAD_POSES}, got {head_pose!r}")
    if head_pose == "approximate" and expression == "arkit":
        raise ValueError("the ARKit expression needs the official 222-point landmarks and hello_arkit_blendshape.onnx;"
                         " use expression 'pdfgc' with the approximate head pose, or head_pose '3dmm'")
    ref_rgb = _uint8_rgb_frames(reference, "reference")
    if len(ref_rgb) != 1:
        raise ValueError(f"input 'reference' must be one image, got a batch of {len(ref_rgb)}")
    drive_rgb = _uint8_rgb_frames(driving, "driving")
    n_input = len(drive_rgb)
    picked = resample_indices(n_input, fps, driving_fps)
    drive_rgb = [drive_rgb[i] for i in picked]
    used_fps = float(driving_fps) if driving_fps > 0 else float(fps)
    report = progress or (lambda stage, done, total: None)
    torch_device = _torch_device(device)

    # 1. landmarks
    if head_pose == "3dmm":
        toolkit = toolkit or tk.HelloFaceToolkit(store=store, download=download, device=device)
        scheme = _OFFICIAL
        report("landmarks", 0, len(drive_rgb) + 1)
        ref_lm, _ = toolkit.landmarks_222(_to_bgr(ref_rgb), input_name="reference", on_missing="error")
        drive_lm, filled = toolkit.landmarks_222(_to_bgr(drive_rgb), input_name="driving", on_missing=on_missing)
    else:
        from ...face.detect import FaceDetector

        scheme = _APPROX
        detector = face_detector or FaceDetector()
        try:
            ref_lm, _ = _mediapipe_landmarks(ref_rgb, "reference", "error", detector)
            drive_lm, filled = _mediapipe_landmarks(drive_rgb, "driving", on_missing, detector)
        finally:
            if face_detector is None:
                detector.close()
    report("landmarks", len(drive_rgb) + 1, len(drive_rgb) + 1)
    # a filled frame takes its source frame whole (image and landmarks): pose and expression are repeated
    drive_rgb = [drive_rgb[filled.get(i, i)] for i in range(len(drive_rgb))]

    # 2. crops
    ref512, ref_lm512, ref_box = geo.crop_and_resize(_to_bgr(ref_rgb), ref_lm, CROP_SIZE, crop=crop_reference,
                                                     extent_points=scheme.extent)
    drive512, drive_lm512, box = geo.crop_and_resize(_to_bgr(drive_rgb), drive_lm, CROP_SIZE, crop=True,
                                                     extent_points=scheme.extent)

    # 3. head pose -> pose images
    if head_pose == "3dmm":
        ref_rot, ref_trans = toolkit.threedmm.pose(ref512[0], ref_lm512[0])
        rots, transs = toolkit.head_poses(drive512, drive_lm512)
    else:
        ref_rot, ref_trans = tk.approximate_head_pose(ref_lm512[0], CROP_SIZE, CROP_SIZE)
        poses = [tk.approximate_head_pose(lm, CROP_SIZE, CROP_SIZE) for lm in drive_lm512]
        rots, transs = [p[0] for p in poses], [p[1] for p in poses]
    report("head pose", len(drive_rgb), len(drive_rgb))
    condition, _ = pose_image.pose_images(rots, transs, ref_trans, CROP_SIZE, trans_ratio)
    ref_condition, _ = pose_image.pose_images([ref_rot], [ref_trans], ref_trans, CROP_SIZE, 0.0)
    ref_params: dict = {"condition": ref_condition[None]}
    out = dict(condition=condition[None], expression=expression, ref_params=ref_params,
               reference_image=_image_tensor(ref512), driving_images=_image_tensor(drive512),
               angles=torch.from_numpy(np.concatenate(rots, 0)).float(),
               translations=torch.from_numpy(np.concatenate(transs, 0)).float(),
               ref_angles=torch.from_numpy(np.asarray(ref_rot)).float().reshape(3),
               ref_translation=torch.from_numpy(np.asarray(ref_trans)).float().reshape(3),
               reference_landmarks=np.asarray(ref_lm512[0]), driving_landmarks=np.asarray(drive_lm512),
               filled_frames=filled, crop_box=box, reference_box=ref_box, trans_ratio=float(trans_ratio),
               head_pose=head_pose, reference_size=tuple(ref_rgb[0].shape[:2]), reference_cropped=bool(crop_reference),
               fps=used_fps, source_fps=float(fps), source_frames=tuple(picked), source_frame_count=n_input)

    # 4./5. expression of the driving frames and of the reference
    if expression == "pdfgc":
        from . import pdfgc

        encoder = pdfgc_encoder or pdfgc.load_fan_encoder(pdfgc.encoder_folder(store, download), device=torch_device)
        pts = list(scheme.pdfgc)
        out["pd_fpg"] = pdfgc.encode_faces(encoder, pdfgc_faces(drive512, drive_lm512[:, pts]))
        out["neg_pd_fpg"] = pdfgc.negative_code(encoder)
        ref_params["pd_fpg"] = pdfgc.encode_faces(encoder, pdfgc_faces(ref512, ref_lm512[:, pts]))
        ref_params["neg_pd_fpg"] = out["neg_pd_fpg"]
    else:
        clip = clip_encoder or load_clip_image_encoder(store, download).to(torch_device)
        out["drive_coeff"] = torch.from_numpy(toolkit.blendshapes(drive512, drive_lm512)).float()[None]
        out["face_parts"] = face_part_embeddings(clip, drive512, drive_lm512)
        ref_params["drive_coeff"] = torch.from_numpy(toolkit.blendshapes(ref512, ref_lm512)).float()[None]
        ref_params["face_parts"] = face_part_embeddings(clip, ref512, ref_lm512)
    report("expression", len(drive_rgb), len(drive_rgb))
    return HelloMemeConditions(**out)
