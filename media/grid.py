"""A labelled comparison grid: several IMAGE tensors side by side in one image, each with a caption bar under it.

Plain torch + Pillow (for the text), no ComfyUI, so it is testable on its own. Every panel is fitted into the cell
(the first image's size) keeping its aspect ratio and centred on the background; the caption bar under each panel is
``label_height`` pixels high. The first panel sits at the grid's top-left corner, unscaled when it is the first image.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

BACKGROUND = 26 / 255  # grey of the empty cell area and of the caption bars (exact in 8 bits)
TEXT = 0.95


def fit_panel(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (height, width, 3): scaled to fit (aspect kept, bilinear, antialiased), centred on the
    background colour."""
    h, w = int(image.shape[0]), int(image.shape[1])
    if (h, w) == (height, width):
        return image.float()
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    scaled = F.interpolate(image.float().permute(2, 0, 1)[None], size=(nh, nw), mode="bilinear", antialias=True,
                           align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)
    out = torch.full((height, width, image.shape[2]), BACKGROUND, dtype=torch.float32)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = scaled
    return out


def caption(text: str, height: int, width: int) -> torch.Tensor:
    """A (height, width, 3) caption bar with ``text`` centred (Pillow's default font at about 60% of the bar's
    height; the built-in bitmap font where no scalable one is available)."""
    from PIL import Image, ImageDraw, ImageFont

    bar = Image.new("RGB", (width, height), (round(BACKGROUND * 255),) * 3)
    if text and height > 0:
        draw = ImageDraw.Draw(bar)
        size = max(8, int(height * 0.6))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: bitmap font only
            font = ImageFont.load_default()
        while True:
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            if right - left <= width - 4 or size <= 8 or not hasattr(font, "font_variant"):
                break
            size -= 2
            font = font.font_variant(size=size)
        x = (width - (right - left)) // 2 - left
        y = (height - (bottom - top)) // 2 - top
        draw.text((x, y), text, fill=(round(TEXT * 255),) * 3, font=font)
    import numpy as np

    return torch.from_numpy(np.asarray(bar, dtype=np.float32) / 255.0)


def labelled_grid(images: Sequence[torch.Tensor], labels: Sequence[str], columns: int,
                  label_height: int) -> torch.Tensor:
    """``images``: (H, W, 3) panels, in order (row by row); ``labels``: a caption per panel ('' for none; missing
    ones are empty). Returns the grid (1, rows * (cell_h + label_height), columns * cell_w, 3), the cell being the
    first panel's size; ``columns`` is capped at the number of panels."""
    if not images:
        raise ValueError("no images to put in the grid")
    if columns < 1 or label_height < 0:
        raise ValueError(f"columns must be >= 1 and label_height >= 0 (got {columns}, {label_height})")
    cell_h, cell_w = int(images[0].shape[0]), int(images[0].shape[1])
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    row_h = cell_h + label_height
    grid = torch.full((rows * row_h, columns * cell_w, 3), BACKGROUND, dtype=torch.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        y, x = r * row_h, c * cell_w
        grid[y:y + cell_h, x:x + cell_w] = fit_panel(image[..., :3], cell_h, cell_w)
        if label_height:
            text = labels[i] if i < len(labels) else ""
            grid[y + cell_h:y + row_h, x:x + cell_w] = caption(text, label_height, cell_w)
    return grid[None]
