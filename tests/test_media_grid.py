"""Labelled Image Grid's arithmetic (media/grid.py): layout, fitting, captions."""
from __future__ import annotations

import pytest
import torch

from portrait_animation.media.grid import BACKGROUND, caption, fit_panel, labelled_grid


def _solid(h, w, value):
    return torch.full((h, w, 3), float(value))


def test_grid_layout_first_panel_unscaled_and_captions_below():
    g = torch.Generator().manual_seed(0)
    first = torch.rand(64, 48, 3, generator=g)
    panels = [first, _solid(64, 48, 0.5), _solid(32, 24, 0.8), _solid(64, 48, 0.2), _solid(64, 48, 0.7)]
    out = labelled_grid(panels, ["ref", "v1", "v2", "v3", "v4"], columns=3, label_height=20)
    assert out.shape == (1, 2 * (64 + 20), 3 * 48, 3)
    assert torch.equal(out[0, :64, :48], first)  # top-left, untouched
    assert torch.allclose(out[0, :64, 48:96], torch.full((64, 48, 3), 0.5))
    assert torch.allclose(out[0, :64, 96:144], torch.full((64, 48, 3), 0.8), atol=1e-6)  # scaled up, same aspect
    assert torch.allclose(out[0, 84:148, :48], torch.full((64, 48, 3), 0.2))  # second row
    # captions: text pixels brighter than the bar; the empty sixth cell stays background
    bar = out[0, 64:84, :48]
    assert bar.max() > 0.5 and (bar == BACKGROUND).float().mean() > 0.5
    assert torch.all(out[0, 84:, 96:] == BACKGROUND)


def test_different_labels_draw_different_captions_and_none_draws_nothing():
    a, b = caption("v1", 24, 96), caption("v5c", 24, 96)
    assert a.shape == (24, 96, 3) and not torch.equal(a, b)
    assert torch.all(caption("", 24, 96) == BACKGROUND)
    long = caption("a rather long caption that cannot fit at this size", 24, 96)
    assert long.max() > 0.5  # shrunk to fit, still drawn


def test_fit_keeps_aspect_and_centres():
    out = fit_panel(_solid(10, 40, 1.0), 40, 40)
    assert out.shape == (40, 40, 3)
    assert torch.all(out[:15] == BACKGROUND) and torch.allclose(out[15:25], torch.ones(10, 40, 3))


def test_columns_capped_and_no_labels():
    out = labelled_grid([_solid(8, 8, 0.3), _solid(8, 8, 0.6)], [], columns=8, label_height=0)
    assert out.shape == (1, 8, 16, 3)
    with pytest.raises(ValueError):
        labelled_grid([], [], 2, 10)
