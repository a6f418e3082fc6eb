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


def test_a_guard_cancelled_in_its_retries_continues_with_identical_frames(hunyuan_case, tmp_path, caplog):
    """Resume under the guard (hunyuan_portrait/resume.guard_scope): the main run's entry is kept while the guard
    retries, so a cancel in a retry costs neither the run nor the finished retries; the re-queue decodes them from
    their last step, continues the cancelled retry from its step, and gives the uninterrupted guard's frames."""
    import logging

    from portrait_animation.hunyuan_portrait.resume import GUARD_PREFIX, guard_scope
    from portrait_animation.hunyuan_portrait.sampler import window_starts
    from portrait_animation.runtime import Interrupted, StandaloneRuntime
    from portrait_animation.runtime.resume import ResumeOptions

    bundle, cond, _ = hunyuan_case
    s = _settings(cond)
    frames = A.animate(bundle, cond, s, seed=3)
    guard = IdentityGuard(threshold=1.0, max_retries=1, blend_frames=1)  # both windows fail: one retry each
    ref_out, ref_report, ref_guarded = guard_portrait(guard, bundle, cond, s, seed=3, frames=frames)
    assert len(ref_guarded.windows) == 2 and all(len(w.scores) == 2 for w in ref_guarded.windows)

    opts = ResumeOptions(str(tmp_path / "resume"))
    assert guard_scope(None, bundle, cond, s, 3, None)[0] is None
    held, done = guard_scope(opts, bundle, cond, s, 3, None)
    assert held.keep and held.folder.startswith(str(tmp_path / "resume" / GUARD_PREFIX))

    main_total, retries = A.progress_total(s, FRAMES), []

    def step_units(total: int) -> int:  # a retry's windows per step, from its progress total
        k = next(k for k in range(1, FRAMES + 1) if A.progress_total(s, k) == total)
        return len(window_starts(s.padded_length(k), s.n_sample_frames, s.overlap, 0))

    def cancel_in_second_retry(value, total, preview):  # after its first step, in its second
        if total != main_total and value == 1:
            retries.append(total)
        if len(retries) == 2 and total != main_total and value == step_units(total) + 1:
            rt.interrupt()

    rt = StandaloneRuntime(device="cpu", show_progress=False)
    rt.callbacks.append(cancel_in_second_retry)
    main = A.animate(bundle, cond, s, seed=3, runtime=rt, resume=held)
    assert torch.equal(main, frames)
    with pytest.raises(Interrupted):
        guard_portrait(guard, bundle, cond, s, seed=3, frames=main, runtime=rt, resume=held)
    assert len(retries) == 2

    # the re-queue: the same scope, the run and the first retry decoded from their last step, the second continued
    rt = StandaloneRuntime(device="cpu", show_progress=False)
    again, done = guard_scope(opts, bundle, cond, s, 3, None)
    assert again == held
    with caplog.at_level(logging.INFO, logger="portrait_animation.runtime.resume"):
        main = A.animate(bundle, cond, s, seed=3, runtime=rt, resume=again)
        out, report, guarded = guard_portrait(guard, bundle, cond, s, seed=3, frames=main, runtime=rt, resume=again)
    done()
    assert caplog.text.count(f"resuming hunyuan_portrait from step {s.num_inference_steps} of "
                             f"{s.num_inference_steps}") == 2
    assert f"resuming hunyuan_portrait from step 1 of {s.num_inference_steps}" in caplog.text
    assert torch.equal(main, frames) and torch.equal(out, ref_out)
    assert report.per_frame == ref_report.per_frame and guarded.to_dict() == ref_guarded.to_dict()
    assert not any((tmp_path / "resume").iterdir())  # the guard finished: its folder is gone
