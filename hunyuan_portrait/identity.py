"""HunyuanPortrait identity embedding: the ArcFace ONNX network (``arcface.onnx`` from Arc2Face) on the aligned face.

Input ``data`` is (1, 3, 112, 112) float32 **RGB in [0, 1]** (the scikit-image-style warp output of
:func:`.preprocess.align_face`, no mean/std, no BGR swap: a quirk of the official code that the trained adapters
expect). The 512-d output is divided by its L2 norm. Without ArcFace, or without an aligned face, the embedding is a
zero vector (1, 512); the IMAdapters still add their constant bias path then.

onnxruntime is imported only when a session is created, through the pack's shared session helper (CUDA when
available, else the CPU).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

EMBEDDING_DIM = 512
INPUT_NAME = "data"
INPUT_SIZE = 112
MODEL_FILE = "arcface.onnx"


def arcface_input(aligned_face: np.ndarray) -> np.ndarray:
    """(112, 112, 3) float RGB in [0, 1] -> (1, 3, 112, 112) float32 network input."""
    face = np.asarray(aligned_face)
    if face.ndim != 3 or face.shape[2] != 3:
        raise ValueError(f"ArcFace input must be an (H, W, 3) aligned face, got shape {face.shape}")
    return face.transpose(2, 0, 1).astype(np.float32)[np.newaxis]


def normalize_embedding(raw: np.ndarray) -> np.ndarray:
    """The network output divided by its L2 norm (float32 arithmetic, as numpy does it for a float32 output)."""
    raw = np.asarray(raw)
    return raw / np.linalg.norm(raw)


def zero_embedding(batch: int = 1) -> np.ndarray:
    """The embedding used when ArcFace is off or no face was aligned: zeros (batch, 512)."""
    return np.zeros((batch, EMBEDDING_DIM), dtype=np.float32)


class ArcFaceEncoder:
    """Runs ``arcface.onnx`` on aligned faces; ``session`` may be any object with ``run``/``get_inputs``."""

    def __init__(self, model_path: str | Path | None = None, session=None, device: Optional[str] = None):
        if session is None:
            if model_path is None:
                raise ValueError("ArcFaceEncoder needs model_path (arcface.onnx) or a session")
            session = _create_session(model_path, device)
        self.session = session
        inputs = session.get_inputs()
        self.input_name = inputs[0].name if inputs else INPUT_NAME
        self._lock = threading.Lock()

    def embed(self, aligned_face: Optional[np.ndarray]) -> np.ndarray:
        """(1, 512) float32 L2-normalised embedding of one aligned face; zeros when ``aligned_face`` is None."""
        if aligned_face is None:
            return zero_embedding()
        with self._lock:
            raw = self.session.run(None, {self.input_name: arcface_input(aligned_face)})[0]
        return normalize_embedding(np.asarray(raw, dtype=np.float32)).reshape(1, EMBEDDING_DIM)


def _create_session(path: str | Path, device: Optional[str]):
    from ..loaders.store import ModelFileError
    from ..runtime.onnx import create_session

    try:
        return create_session(path, device)
    except FileNotFoundError:
        raise
    except ImportError as e:
        raise ImportError("the HunyuanPortrait identity embedding needs onnxruntime (pip install onnxruntime, or "
                          "onnxruntime-gpu for CUDA)") from e
    except Exception as e:  # onnxruntime's load errors: usually a damaged or wrong file
        raise ModelFileError(f"onnxruntime cannot load {path}: {type(e).__name__}: {e}. If the file is damaged, "
                             "delete it and download it again.") from e


__all__ = ["ArcFaceEncoder", "EMBEDDING_DIM", "arcface_input", "normalize_embedding", "zero_embedding"]
