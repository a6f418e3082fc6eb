"""Preview drawing: landmarks, face boxes and crop boxes over frames."""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch

from .frames import Frames, as_batch, frame_uint8
from .track import FaceTrack

# Contours worth drawing bigger: eyes, irises, lips (indices into the 478-point mesh).
_FEATURES = sorted({33, 133, 159, 145, 263, 362, 386, 374, 468, 473, 61, 291, 13, 14, 0, 17, 1, 152, 10})


def draw_landmarks(images: Frames, track: FaceTrack, crop_boxes: Optional[np.ndarray] = None,
                   max_side: int = 0) -> torch.Tensor:
    """Frames with the track drawn on them -> IMAGE ``[B, h, w, 3]`` float32.

    Green dots: landmarks (larger for eyes, irises, lips, nose, chin); blue rectangle: the face box; yellow square:
    ``crop_boxes[i]`` (``x0, y0, side``) if given. Frames whose landmarks were filled from another frame are drawn in
    orange; frames without a face get a red border. ``max_side`` > 0 downsizes larger frames (cheaper previews).
    """
    images = as_batch(images)
    n = len(images)
    out = None
    for i in range(n):
        img = frame_uint8(images, i).copy()
        h, w = img.shape[:2]
        k = 1.0
        if max_side and max(h, w) > max_side:
            k = max_side / max(h, w)
            img = cv2.resize(img, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        r = max(1, round(max(img.shape[:2]) / 400))
        ti = i if track.num_frames > 1 else 0
        lm = track.landmarks[ti] if ti < track.num_frames else None
        if lm is None:
            cv2.rectangle(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), (255, 0, 0), 2 * r)
        else:
            color = (255, 140, 0) if ti in track.filled else (0, 255, 0)
            pts = np.round(lm[:, :2] * k).astype(np.int32)
            for j, (x, y) in enumerate(pts):
                cv2.circle(img, (int(x), int(y)), 2 * r if j in _FEATURES else r, color, -1, cv2.LINE_AA)
            x0, y0, x1, y1 = (int(round(v * k)) for v in track.boxes[ti])
            cv2.rectangle(img, (x0, y0), (x1, y1), (0, 120, 255), r)
        if crop_boxes is not None and len(crop_boxes):
            bx, by, bs = (float(v) * k for v in crop_boxes[min(i, len(crop_boxes) - 1)])
            cv2.rectangle(img, (int(round(bx)), int(round(by))), (int(round(bx + bs)), int(round(by + bs))),
                          (255, 220, 0), r)
        if out is None:
            out = torch.empty((n,) + img.shape, dtype=torch.float32)
            out_np = out.numpy()
        out_np[i] = img.astype(np.float32) / 255.0
    return out
