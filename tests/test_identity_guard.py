"""Identity guard (metrics/identity_guard.py): window scores, reports, MEMO clip re-anchoring in the real sampler loop
with small stand-in networks whose identity drifts through the temporal memory, and HunyuanPortrait range
re-generation spliced into the video."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from portrait_animation.metrics.identity_guard import (ClipGuard, IdentityGuard, guard_windows, report_windows,
                                                       retry_seed, splice, window_score)
from portrait_animation.motion.memo_sampler import LATENT_SCALE, MemoSampler, MemoSamplerSettings
from portrait_animation.motion.memory_attention import MemoryState

# ---- stand-in MEMO networks ------------------------------------------------------------------------------------------
# The VAE is an exact 8x block average / nearest upsampling; the Diffusion Net's velocity lands every clip on the
# mean latent of its past frames plus DRIFT per memory update since the memory was rebuilt. So clip 0 (past = the
# reference, memory rebuilt) reproduces the reference, and every later clip drifts further away from it, through its
# past frames and its memory: the way identity drifts in MEMO. A clip made again as a first clip comes back.
DRIFT = 0.1  # in [-1, 1] image units per memory update


class _Latent:
    def __init__(self, mean):
        self.mean = mean


class StandinVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def encode(self, x):  # (N, 3, H, W) -> (N, 4, H/8, W/8)
        pooled = F.avg_pool2d(x, 8)
        return type("E", (), {"latent_dist": _Latent(torch.cat([pooled, pooled.mean(1, keepdim=True)], 1))})()

    def decode(self, z):
        return type("D", (), {"sample": F.interpolate(z[:, :3], scale_factor=8, mode="nearest")})()


class StandinReferenceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, latents, t, tokens, faithful_tiling=True):
        return latents  # (2 (1 + N), 4, h, w)


class StandinImageProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, face):
        return face.reshape(1, 4, -1)


class _Layer:
    def __init__(self):
        self.memory = MemoryState()


class StandinDiffusionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.layer = _Layer()

    def memory_layers(self):
        yield "layer", self.layer

    def reset_memory(self):
        self.layer.memory.reset()

    def memory_to(self, device=None, dtype=None):
        self.layer.memory.to(device, dtype)

    def load_memory_state(self, state):
        self.layer.memory = state["layer"].clone()

    def forward(self, x, ref_features, t, tokens, audio, emotion, uc_mask=None, is_new_audio=False,
                update_past_memory=False, faithful_tiling=True, reference_cache=None, deep=None):
        memory = self.layer.memory
        if is_new_audio or memory.empty:
            self.layer.memory = MemoryState(torch.zeros(1), torch.zeros(1))
        elif update_past_memory:
            self.layer.memory = MemoryState(memory.kv + 1, memory.z)
        n = ref_features.shape[0] // 2 - 1
        target = ref_features[1:1 + n].mean(0) + DRIFT * LATENT_SCALE * self.layer.memory.kv  # (4, h, w)
        target = target[None, :, None].expand_as(x)                                            # (2, 4, f, h, w)
        return (x - target) / (t / 1000)  # the velocity that lands on the target at sigma 0


CLIP, CLIPS, SIZE = 4, 5, 32


def _reference():
    gen = torch.Generator().manual_seed(1)
    small = torch.rand(1, 3, SIZE // 8, SIZE // 8, generator=gen) * 0.6 - 0.3  # [-1, 1] units, away from the clamp
    return F.interpolate(small, scale_factor=8, mode="nearest")                 # (1, 3, H, W)


def _sampler():
    return MemoSampler(StandinVAE(), StandinReferenceNet(), StandinDiffusionNet(), StandinImageProj(),
                       MemoSamplerSettings(steps=3, frames_per_clip=CLIP, num_past_frames=CLIP, faithful=False,
                                           vae_batch=CLIP))


def _run(guard=None, steps=None, retries=None):
    ref = _reference()
    tokens = torch.zeros(1, CLIP * CLIPS, 2, 8)
    sampler = _sampler()
    clips = sampler.clips(ref, torch.zeros(1, 8), tokens, noise=7, guard=guard,
                          on_step=None if steps is None else (lambda k, s: steps.append(k)),
                          on_retry=None if retries is None else (lambda k, attempt: retries.append((k, attempt))))
    return ref, [c.frames[0].transpose(0, 1) for c in clips]  # per clip (F, 3, H, W) in [0, 1]


def _closeness(ref):
    """Stand-in identity score of each frame: 1 - 4 x mean absolute difference to the reference (1 = the reference)."""
    ref01 = (ref[0] / 2 + 0.5).permute(1, 2, 0)  # (H, W, 3)

    def score(images):  # IMAGE (n, H, W, 3)
        return [1 - 4 * float((images[i] - ref01).abs().mean()) for i in range(images.shape[0])]

    return score


def _clip_scores(ref, clips):
    score = _closeness(ref)
    return [window_score(score(c.permute(0, 2, 3, 1))) for c in clips]


def test_the_standin_drifts_clip_after_clip():
    ref, clips = _run()
    scores = _clip_scores(ref, clips)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert all(a > b for a, b in zip(scores, scores[1:]))  # identity drifts further with every clip


def test_report_lists_the_failing_clips_with_their_frame_ranges_and_changes_nothing():
    ref, plain = _run()
    expected = _clip_scores(ref, plain)
    threshold = (expected[1] + expected[2]) / 2  # clips 2.. fall below
    guard = ClipGuard(IdentityGuard(threshold=threshold, action="report"), _closeness(ref), seed=7,
                      guidance_scale=3.5, clip_length=CLIP)
    _, clips = _run(guard)
    assert all(torch.equal(a, b) for a, b in zip(plain, clips))
    report = guard.report.to_dict()
    assert report["flagged"] == [[8, 11], [12, 15], [16, 19]]
    assert [w["action"] for w in report["windows"]] == ["ok", "ok", "reported", "reported", "reported"]
    assert [w["before"] for w in report["windows"]] == pytest.approx(expected, abs=1e-4)
    assert report["re_anchored"] == []
    assert "frames 8-11" in guard.report.summary() and "3 of 5 windows below" in guard.report.summary()
    json.loads(guard.report.json())


def test_re_anchor_regenerates_the_failing_clip_and_continues_from_it():
    ref, plain = _run()
    expected = _clip_scores(ref, plain)
    threshold = (expected[1] + expected[2]) / 2
    steps, retries = [], []
    guard = ClipGuard(IdentityGuard(threshold=threshold, max_retries=2), _closeness(ref), seed=7,
                      guidance_scale=3.5, clip_length=CLIP)
    _, clips = _run(guard, steps, retries)
    assert all(torch.equal(a, b) for a, b in zip(plain[:2], clips[:2]))  # the clips before are untouched
    windows = guard.report.windows
    assert windows[2].action == "re-anchored" and (windows[2].first, windows[2].last) == (8, 11)
    assert windows[2].after > windows[2].before and windows[2].after == pytest.approx(1.0, abs=1e-5)
    assert len(windows[2].scores) == 2  # the first retry passed: no second one
    # the next clips continue from the re-anchored clip (its frames and the memory it left), so they drift from there
    # again: clip 3 is now as close as clip 1 was
    scores = _clip_scores(ref, clips)
    assert scores[2] == pytest.approx(1.0, abs=1e-5) and scores[3] == pytest.approx(expected[1], abs=1e-5)
    assert [w.action for w in windows] == ["ok", "ok", "re-anchored", "ok", "re-anchored"]
    assert steps.count(2) == 2 * 3  # the retry's steps count on the progress bar, under the clip they belong to
    assert retries == [(2, 1), (4, 1)]  # announced before they run (the bar grows by their steps)
    assert len(steps) == 3 * (CLIPS + len(retries))


def test_a_retry_that_scores_lower_is_dropped_and_the_run_continues_exactly_as_without_the_guard():
    ref, plain = _run()
    closeness = _closeness(ref)

    def worse_retries(images):  # a re-anchored clip (the reference itself, as clip 0) scores lowest
        values = closeness(images)
        return [-1.0] * len(values) if window_score(values) > 0.999 else values

    guard = ClipGuard(IdentityGuard(threshold=0.95, max_retries=1), worse_retries, seed=7, guidance_scale=3.5,
                      clip_length=CLIP)
    _, clips = _run(guard)
    assert all(torch.equal(a, b) for a, b in zip(plain, clips))  # memory restored: every clip as unguarded
    assert [w.action for w in guard.report.windows] == ["kept original"] * CLIPS
    assert all(w.scores[1] == pytest.approx(-1.0) and w.kept == 0 for w in guard.report.windows)
    assert "kept the original" in guard.report.summary()


def test_threshold_zero_is_the_unguarded_run_bit_for_bit():
    ref, plain = _run()
    guard = ClipGuard(IdentityGuard(threshold=0.0), _closeness(ref), seed=7, guidance_scale=3.5, clip_length=CLIP)
    _, clips = _run(guard)
    assert all(torch.equal(a, b) for a, b in zip(plain, clips))
    assert all(w.action == "ok" and len(w.scores) == 1 for w in guard.report.windows)


def test_last_clip_is_scored_only_over_the_kept_frames():
    ref, _ = _run()
    guard = ClipGuard(IdentityGuard(threshold=0.1, action="report"), _closeness(ref), seed=7, guidance_scale=3.5,
                      clip_length=CLIP, frames_total=CLIP * CLIPS - 3)
    _run(guard)
    assert (guard.report.windows[-1].first, guard.report.windows[-1].last) == (16, 16)


def test_retry_seeds_differ_per_window_and_attempt():
    seeds = {retry_seed(42, w, a) for w in range(4) for a in (1, 2)}
    assert len(seeds) == 8 and 42 not in seeds


def test_settings_errors_name_the_input():
    for kwargs, name in (({"threshold": 1.5}, "threshold"), ({"action": "fix"}, "action"),
                         ({"statistic": "median"}, "statistic"), ({"max_retries": -1}, "max_retries"),
                         ({"blend_frames": -2}, "blend_frames")):
        with pytest.raises(ValueError, match=f"'{name}'"):
            IdentityGuard(**kwargs)


# ---- HunyuanPortrait: windows of frames, a failing range generated again and spliced -----------------------------------


def _video(n=20, drift_at=(8, 12)):
    frames = torch.full((n, 4, 4, 3), 0.5)
    frames[drift_at[0]:drift_at[1]] = 0.9  # the drifted range
    return frames


def _brightness_score(images):
    return [1 - 2 * abs(float(images[i].mean()) - 0.5) for i in range(images.shape[0])]


def test_guard_windows_reports_and_re_anchors_only_the_failing_window():
    frames = _video()
    before = frames.clone()
    calls = []

    def regenerate(start, stop, attempt):
        calls.append((start, stop, attempt))
        return torch.full((stop - start, 4, 4, 3), 0.5)

    out, scores, report = guard_windows(IdentityGuard(threshold=0.8, blend_frames=1), frames,
                                        _brightness_score(frames), 4, regenerate, _brightness_score)
    assert calls == [(8, 12, 1)]
    assert report.to_dict()["flagged"] == [[8, 11]] and report.to_dict()["re_anchored"] == [[8, 11]]
    w = report.windows[2]
    assert w.before == pytest.approx(0.2) and w.after > w.before
    # outside the window nothing changed; inside, the edges are cross-faded with the neighbours
    assert torch.equal(out[:8], before[:8]) and torch.equal(out[12:], before[12:])
    assert torch.allclose(out[8], 0.5 * before[8] + 0.5 * 0.5) and torch.allclose(out[9:11], torch.tensor(0.5))
    assert scores[9] == pytest.approx(1.0) and len(scores) == 20


def test_guard_windows_keeps_the_original_when_the_retry_is_worse_and_threshold_zero_does_nothing():
    frames = _video()
    before = frames.clone()
    out, _, report = guard_windows(IdentityGuard(threshold=0.8, max_retries=2), frames, _brightness_score(frames), 4,
                                   lambda a, b, k: torch.ones((b - a, 4, 4, 3)), _brightness_score)
    assert torch.equal(out, before) and report.windows[2].action == "kept original"
    assert len(report.windows[2].scores) == 3
    out, _, report = guard_windows(IdentityGuard(threshold=0.0), frames, _brightness_score(frames), 4,
                                   None, None)
    assert torch.equal(out, before) and not report.flagged


def test_report_windows_only_reports_and_says_why():
    scores = [0.9] * 4 + [0.1, None, 0.2, 0.3] + [None] * 4
    report = report_windows(IdentityGuard(threshold=0.5), scores, 4, note="streamed: reported only")
    assert [w.action for w in report.windows] == ["ok", "reported", "no face"]
    assert report.windows[1].before == pytest.approx(0.2) and report.notes == ["streamed: reported only"]
    assert report.guard.action == "re-anchor"


def test_splice_without_neighbours_is_the_new_frames():
    frames = torch.zeros(6, 2)
    new = torch.ones(6, 2)
    assert torch.equal(splice(frames, new, 0, 3), new)


# ---- MEMO end to end on the small stand-in MEMO models (the real networks and their temporal memory) -------------------


class _ColourFace:
    """Stand-in for MEMO's FaceEmbedder: the embedding of an image is its mean colour minus 0.45 (so the cosine
    similarity of two images follows their colour); with no_face_every n, every n-th call finds no face."""

    def __init__(self, no_face_every: int = 0):
        self.calls, self.no_face_every = 0, no_face_every

    def embed(self, image, input_name="reference_image", on_missing_face="error"):
        self.calls += 1
        rgb = torch.as_tensor(image).float().reshape(-1, 3).mean(0)
        if self.no_face_every and self.calls % self.no_face_every == 0:
            return torch.zeros(3).numpy()
        return (rgb - 0.45).numpy()


@pytest.fixture(scope="module")
def memo_run(tmp_path_factory, data_dir):
    from helpers.tiny_models import write_memo_models
    from parity.runner import DEFAULT_PARITY_ROOT
    from portrait_animation.loaders.store import ModelStore
    from portrait_animation.media.audio import load_audio
    from portrait_animation.memo.pipeline import MemoSettings, condition, load_memo_bundle
    from portrait_animation.runtime import StandaloneRuntime

    root = tmp_path_factory.mktemp("memo_models")
    write_memo_models(root, DEFAULT_PARITY_ROOT)
    bundle = load_memo_bundle(StandaloneRuntime("cpu", show_progress=False), ModelStore.at(root), dtype="fp32",
                              emotion_model=False, identity=False)
    audio = load_audio(data_dir / "speech.wav")
    audio["waveform"] = audio["waveform"][..., : int(0.5 * audio["sample_rate"])]  # 15 frames at 30 fps
    cond = condition(bundle, audio, fps=30, clip_length=4, emotion="happy")
    ref = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    settings = MemoSettings(steps=2, num_past_frames=4, seed=3, width=64, height=64)
    return bundle, cond, ref, settings


def _memo_frames(memo_run, guard=None):
    from portrait_animation.memo.pipeline import talking_frames

    bundle, cond, ref, settings = memo_run
    return torch.cat(list(talking_frames(bundle, ref, cond, torch.ones(512), settings, guard=guard)))


def test_memo_guard_on_the_real_networks(memo_run):
    from portrait_animation.metrics.identity_guard import memo_clip_guard

    bundle, cond, ref, settings = memo_run
    plain = _memo_frames(memo_run)
    assert plain.shape[0] == 15
    bundle.face = _ColourFace()
    try:
        face_emb = torch.as_tensor(bundle.face.embed(ref[0]))
        assert memo_clip_guard(IdentityGuard(threshold=0.0), bundle, face_emb, settings, 4, 15) is None
        # every clip fails a threshold of 1 and is made again once; the report covers the 15 kept frames
        guard = memo_clip_guard(IdentityGuard(threshold=1.0, max_retries=1), bundle, face_emb, settings, 4, 15)
        frames = _memo_frames(memo_run, guard)
        assert frames.shape == plain.shape and torch.isfinite(frames).all()
        windows = guard.report.windows
        assert [(w.first, w.last) for w in windows] == [(0, 3), (4, 7), (8, 11), (12, 14)]
        assert all(len(w.scores) == 2 and w.after == max(w.scores) for w in windows)
        kept = [w.kept for w in windows]
        first_retry = kept.index(1) if 1 in kept else len(kept)
        assert torch.equal(frames[:4 * first_retry], plain[:4 * first_retry])
        if first_retry < len(kept):
            assert not torch.equal(frames[4 * first_retry:4 * first_retry + 4],
                                   plain[4 * first_retry:4 * first_retry + 4])

        # retries that never win: the real temporal memory is restored, so the run is the unguarded one exactly
        class Worse(ClipGuard):
            def check(self, clip, attempt, images):
                plan = super().check(clip, attempt, images)
                if attempt > 0:
                    self._records[clip].scores[-1] = -1.0
                return plan

        worse = Worse(IdentityGuard(threshold=1.0, max_retries=1), guard.score_frames, settings.seed, 3.5, 4, 15)
        assert torch.equal(_memo_frames(memo_run, worse), plain)
        assert all(w.action == "kept original" for w in worse.report.windows)
    finally:
        bundle.face = None


def test_memo_guard_retries_grow_the_progress_total_so_the_bar_ends_at_100_percent(memo_run):
    from portrait_animation.metrics.identity_guard import memo_clip_guard

    bundle, _, ref, settings = memo_run
    seen = []
    record = lambda value, total, preview: seen.append((value, total))  # noqa: E731
    bundle.runtime.callbacks.append(record)
    bundle.face = _ColourFace()
    try:
        plain = _memo_frames(memo_run)
        assert seen[-1] == (4 * settings.steps, 4 * settings.steps) and len(seen) == 4 * settings.steps
        seen.clear()
        face_emb = torch.as_tensor(bundle.face.embed(ref[0]))
        guard = memo_clip_guard(IdentityGuard(threshold=1.0, max_retries=2), bundle, face_emb, settings, 4, 15)
        frames = _memo_frames(memo_run, guard)
        assert frames.shape == plain.shape
        retries = sum(len(w.scores) - 1 for w in guard.report.windows)
        assert retries >= 4  # every clip fails a threshold of 1 at least once
        total = (4 + retries) * settings.steps
        assert seen[-1] == (total, total)  # one update per step, retries included: exactly 100% at the end
        assert [v for v, _ in seen] == list(range(1, total + 1)) and all(v <= t for v, t in seen)
        assert seen[0][1] == 4 * settings.steps  # the total grows only when a retry starts
    finally:
        bundle.face = None
        bundle.runtime.callbacks.remove(record)


def test_memo_guard_needs_identity_models_and_a_reference_face(memo_run):
    from portrait_animation.metrics.identity_guard import memo_clip_guard

    bundle, _, _, settings = memo_run
    with pytest.raises(ValueError, match="turn on 'identity' on MEMO Loader"):
        memo_clip_guard(IdentityGuard(), bundle, torch.ones(512), settings, 4, 15)
    with pytest.raises(ValueError, match="needs a face in input 'reference'"):
        memo_clip_guard(IdentityGuard(), type("B", (), {"face": _ColourFace()})(), torch.zeros(512), settings, 4, 15)
