"""Identity guard on HunyuanPortrait with the stand-in models (tests/helpers/tiny_models.py): a frame range generated
again as a sequence of its own (hunyuan_portrait/reanchor.py), the guard over a real run with the sampler's ArcFace
scores (metrics/identity_guard.guard_portrait)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait_animation.hunyuan_portrait import animate as A
from portrait_animation.hunyuan_portrait.reanchor import regenerate_range
from portrait_animation.metrics.identity_guard import IdentityGuard, guard_portrait

HUNYUAN_FRAMES = FRAMES = 8  # the driving frames of the shared hunyuan_case fixture (tests/conftest.py)


def _settings(cond):
    return A.settings_for(cond, num_inference_steps=2, n_sample_frames=4, overlap=1, pad_frames=2, decode_chunk_size=4)


def test_a_range_generated_again_has_its_frames_and_follows_the_seed(hunyuan_case):
    bundle, cond, _ = hunyuan_case
    s = _settings(cond)
    part = regenerate_range(bundle, cond, s, seed=5, start=4, stop=8, context=2)
    assert part.shape == (4, cond.size, cond.size, 3) and torch.isfinite(part).all() and part.std() > 0.01
    assert torch.equal(part, regenerate_range(bundle, cond, s, seed=5, start=4, stop=8, context=2))
    assert not torch.equal(part, regenerate_range(bundle, cond, s, seed=6, start=4, stop=8, context=2))
    with pytest.raises(ValueError, match="outside"):
        regenerate_range(bundle, cond, s, seed=5, start=6, stop=9)


def test_guard_over_a_run_reports_windows_and_keeps_the_better_attempt(hunyuan_case):
    bundle, cond, _ = hunyuan_case
    s = _settings(cond)
    frames = A.animate(bundle, cond, s, seed=3)
    plain = frames.clone()
    first = A.identity_scores(bundle, cond, frames, window=4)
    scores = [w["mean"] for w in first.windows()]
    assert len(scores) == 2 and None not in scores
    # a threshold just above the lower window: exactly that window fails
    low = int(np.argmin(scores))
    guard = IdentityGuard(threshold=float(min(scores)) + 1e-4, max_retries=2, blend_frames=1)
    if max(scores) < guard.threshold:
        pytest.skip("both windows of the stand-in score alike")
    out, report, guarded = guard_portrait(guard, bundle, cond, s, seed=3, frames=frames)
    w = guarded.windows[low]
    assert guarded.to_dict()["flagged"] == [[4 * low, 4 * low + 3]]
    assert len(w.scores) >= 2 and w.after >= w.before
    other = slice(4, 8) if low == 0 else slice(0, 4)
    assert torch.equal(out[other], plain[other])  # the passing window is never touched
    if w.action == "re-anchored":
        assert not torch.equal(out[4 * low:4 * low + 4], plain[4 * low:4 * low + 4])
        assert report.windows()[low]["mean"] == pytest.approx(w.after, abs=1e-4)
    else:
        assert w.action == "kept original" and torch.equal(out, plain)
    assert len(report.per_frame) == FRAMES


def test_guard_needs_arcface_scores(hunyuan_case):
    bundle, cond, _ = hunyuan_case
    s = _settings(cond)
    no_face = type(cond)(**{**cond.__dict__, "id_embedding": torch.zeros(1, 512)})
    with pytest.raises(ValueError, match="arcface"):
        guard_portrait(IdentityGuard(), bundle, no_face, s, seed=0, frames=torch.zeros(FRAMES, 8, 8, 3))
