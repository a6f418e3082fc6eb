"""HunyuanPortrait end-to-end pipeline: settings against the official yaml, validation messages, trimming and the
frame-by-frame paste-back (the numerics are the parity case ``hunyuan_portrait/e2e_inference``)."""
from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from conftest import SHARED
from portrait_animation.hunyuan_portrait import paste_back
from portrait_animation.hunyuan_portrait.pipeline import PortraitSettings, generate, iter_pasted_frames, trim_pads

YAML = SHARED / "parity" / "hunyuan_portrait" / "manifests" / "configs" / "hunyuan-portrait.yaml"


def test_defaults_are_the_official_yaml():
    yaml = pytest.importorskip("yaml")
    if not YAML.is_file():
        pytest.skip(f"{YAML} not found")
    official = yaml.safe_load(YAML.read_text())
    settings = PortraitSettings()
    shared = [f.name for f in fields(settings) if f.name in official]
    assert len(shared) >= 15
    assert {n: getattr(settings, n) for n in shared} == {n: official[n] for n in shared}
    sampler = settings.sampler_settings()
    assert (sampler.window, sampler.steps, sampler.overlap) == (25, 25, 3)
    assert settings.intensity_settings().chunk == 25
    assert settings.padded_length(5) == 35


@pytest.mark.parametrize("name, value", [("width", 500), ("height", 0), ("overlap", 25), ("pad_frames", -1),
                                         ("decode_chunk_size", 0), ("i2i_noise_strength", 0.0)])
def test_settings_validation_names_the_field(name, value):
    with pytest.raises(ValueError, match=name):
        PortraitSettings(**{name: value})


def test_generate_checks_inputs_before_running_models():
    crops = torch.zeros(3, 3, 8, 8)
    with pytest.raises(ValueError, match="pose_crops"):
        generate(None, torch.zeros(3, 64, 64), torch.zeros(3, 224, 224), torch.zeros(1, 512), crops,
                 crops[:2], np.zeros((3, 5, 2)), PortraitSettings(width=64, height=64))
    with pytest.raises(ValueError, match="ref_img"):
        generate(None, torch.zeros(3, 32, 64), torch.zeros(3, 224, 224), torch.zeros(1, 512), crops,
                 crops, np.zeros((3, 5, 2)), PortraitSettings(width=64, height=64))


def test_trim_pads_keeps_the_driving_frames():
    video = torch.arange(9.0).view(1, 1, 9, 1, 1).expand(1, 3, 9, 2, 2)
    out = trim_pads(video, 2)
    assert out[0, 0, :, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert trim_pads(video, 0).shape == video.shape


def test_iter_pasted_frames_matches_the_batch_paste_back():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 3, 16, 16, generator=g)
    original = (torch.rand(30, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
    box = (5, 4, 25, 24)
    frames = list(iter_pasted_frames(original, video, box))
    assert len(frames) == 3 and frames[0].dtype == np.uint8 and frames[0].shape == (30, 40, 3)
    expected = paste_back.paste_back(original, video[0].permute(1, 2, 3, 0), box)
    np.testing.assert_array_equal(np.stack(frames), expected)
    assert not np.array_equal(frames[0], frames[1])
