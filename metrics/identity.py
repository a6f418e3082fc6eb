"""Identity similarity: ArcFace cosine similarity of every frame's face to the reference face.

The network is HunyuanPortrait's ``arcface.onnx`` (Arc2Face's ArcFace, found through the model store as the
HunyuanPortrait loader finds it, fetched only when ``download`` is on); each face is aligned to ArcFace's 112 x 112
template by the five points (irises, nose tip, mouth corners) of the pack's MediaPipe landmarks, with
HunyuanPortrait's own alignment (:func:`..hunyuan_portrait.preprocess.align_face`).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .faces import FIVE_POINTS, require_face, track_faces
from .series import MetricSeries

DESCRIPTION = "ArcFace cosine similarity of each frame's face to the reference face (1 = same embedding)"


def load_arcface(store=None, download: bool = False, device: Optional[str] = None):
    """HunyuanPortrait's ArcFace encoder (``arcface.onnx``) from the store; the store's error names the file, its
    source and destination when it is missing and ``download`` is off."""
    from ..hunyuan_portrait.identity import ArcFaceEncoder
    from ..loaders.manifest import load_manifest
    from ..loaders.store import ModelStore

    store = store or ModelStore.default()
    files = load_manifest("hunyuan_portrait").select(groups=["arcface"])
    paths = store.ensure(files, download=download)
    return ArcFaceEncoder(paths[files[0].id], device=device)


def face_embeddings(images, points: list[Optional[np.ndarray]], encoder,
                    progress: Optional[Callable[[int], None]] = None) -> list[Optional[np.ndarray]]:
    """(512,) float64 unit embeddings of the face in each frame, None where ``points`` is None."""
    from ..face.frames import frame_uint8
    from ..hunyuan_portrait.preprocess import align_face

    out: list[Optional[np.ndarray]] = []
    for i, lm in enumerate(points):
        if lm is None:
            out.append(None)
        else:
            aligned, _ = align_face(frame_uint8(images, i), lm[list(FIVE_POINTS), :2])
            out.append(encoder.embed(aligned).reshape(-1).astype(np.float64))
        if progress is not None:
            progress(1)
    return out


def identity_similarity(frames, reference, encoder, detector=None,
                        progress: Optional[Callable[[int], None]] = None) -> MetricSeries:
    """Cosine similarity of each frame's face to the reference face (the mean embedding of the reference frames
    with a face). Frames without a face are None. Raises the no-face error when the reference has no face."""
    ref_points = track_faces(reference, detector, input_name="reference")
    require_face(ref_points, "reference")
    ref = [e for e in face_embeddings(reference, ref_points, encoder) if e is not None]
    ref_emb = np.mean(ref, axis=0)
    ref_emb /= np.linalg.norm(ref_emb) or 1.0
    points = track_faces(frames, detector, input_name="images", progress=progress)
    embs = face_embeddings(frames, points, encoder)
    values = [None if e is None else float(e @ ref_emb) for e in embs]
    notes = [] if any(v is not None for v in values) else ["no face found in any frame"]
    return MetricSeries("identity", DESCRIPTION, "cos", "higher", values,
                        extra={"reference_frames": len(ref)}, notes=notes)


__all__ = ["identity_similarity", "load_arcface", "face_embeddings"]
