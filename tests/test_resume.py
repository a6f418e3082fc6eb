"""Resumable long runs (runtime/resume.py): a run interrupted mid-way and queued again continues from its cached
segments and gives the frames of an uninterrupted run, bit for bit; the key follows every input and setting; a
corrupt segment is ignored; the cache stays under its size cap."""
from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from portrait_animation.runtime import Interrupted, StandaloneRuntime
from portrait_animation.runtime.resume import ResumeOptions, enforce_cap, open_job, resume_key

HUNYUAN_FRAMES = 6  # the driving frames of the shared hunyuan_case fixture (tests/conftest.py)


# ---- the cache itself -------------------------------------------------------------------------------------------------
def test_key_follows_every_input_and_setting():
    from portrait_animation.memo.pipeline import MemoSettings

    x = torch.rand(2, 3)
    base = resume_key(x, MemoSettings(seed=1), {"steps": 4}, torch.nn.Linear(2, 2).requires_grad_(False))
    lin = torch.nn.Linear(2, 2)
    k = lambda *p: resume_key(*p)  # noqa: E731
    assert k(x, MemoSettings(seed=1), lin) == k(x.clone(), MemoSettings(seed=1), lin)
    assert k(x, MemoSettings(seed=1), lin) != k(x + 1e-6, MemoSettings(seed=1), lin)  # another input
    assert k(x, MemoSettings(seed=1), lin) != k(x, MemoSettings(seed=2), lin)  # another seed
    assert k(x, MemoSettings(seed=1), lin) != k(x, MemoSettings(seed=1, steps=3), lin)  # another setting
    assert k(x, MemoSettings(seed=1), lin) != k(x.double(), MemoSettings(seed=1), lin)  # another dtype
    assert k(x, MemoSettings(seed=1), lin) != k(x, MemoSettings(seed=1), torch.nn.Linear(2, 2))  # other weights
    assert len(base) == 32


def test_segments_are_atomic_corrupt_ones_ignored_and_finish_deletes(tmp_path, caplog):
    job = open_job(ResumeOptions(str(tmp_path)), "fam", torch.ones(3))
    assert job.load("step") is None
    job.save("step", {"latents": torch.arange(4.0), "index": 3})
    assert not list(job.path.glob(".*.tmp"))  # written under a temporary name, then renamed
    again = open_job(ResumeOptions(str(tmp_path)), "fam", torch.ones(3))
    assert again.path == job.path and torch.equal(again.load("step")["latents"], torch.arange(4.0))
    assert open_job(ResumeOptions(str(tmp_path)), "fam", torch.zeros(3)).path != job.path
    (job.path / "step.pt").write_bytes(b"not a torch file")  # a partial / corrupt segment
    with caplog.at_level(logging.WARNING, logger="portrait_animation.runtime.resume"):
        assert again.load("step") is None
    assert "ignoring the unreadable segment" in caplog.text
    again.finish()
    assert not job.path.exists()
    kept = open_job(ResumeOptions(str(tmp_path), keep=True), "fam", torch.ones(3))
    kept.save("step", {"x": torch.ones(1)})
    kept.finish()
    assert (kept.path / "step.pt").is_file()
    assert open_job(ResumeOptions(None), "fam") is None and open_job(ResumeOptions(str(tmp_path), enabled=False),
                                                                     "fam") is None


def test_cap_removes_the_oldest_entries_first(tmp_path):
    opts = ResumeOptions(str(tmp_path), max_gb=2.5 * 2 ** 20 / 2 ** 30)  # 2.5 MB
    jobs = []
    for i in range(3):
        job = open_job(opts, "fam", i)
        job.save("seg", {"x": torch.zeros(2 ** 18)})  # 1 MB each
        old = time.time() - 100 + i
        for f in job.path.iterdir():
            os.utime(f, (old, old))
        jobs.append(job)
    newest = open_job(opts, "fam", 99)
    newest.save("seg", {"x": torch.zeros(2 ** 18)})
    assert not jobs[0].path.exists() and not jobs[1].path.exists()  # the two oldest made room
    assert jobs[2].path.exists() and newest.path.exists()
    assert enforce_cap(tmp_path, 10 ** 9) == []


# ---- MEMO: clip by clip -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def memo_bundle(tmp_path_factory):
    from portrait_animation.loaders.store import ModelStore
    from portrait_animation.memo.pipeline import load_memo_bundle

    from helpers.tiny_models import write_memo_models
    from parity.runner import DEFAULT_PARITY_ROOT

    root = tmp_path_factory.mktemp("memo_models")
    write_memo_models(root, DEFAULT_PARITY_ROOT)
    return load_memo_bundle(StandaloneRuntime("cpu", show_progress=False), ModelStore.at(root), dtype="fp32",
                            emotion_model=False, identity=False)


def _memo_inputs(bundle, data_dir):
    from portrait_animation.media.audio import load_audio
    from portrait_animation.memo.pipeline import condition

    audio = load_audio(data_dir / "speech.wav")
    audio["waveform"] = audio["waveform"][..., : int(0.6 * audio["sample_rate"])]  # 18 frames -> 5 clips of 4
    cond = condition(bundle, audio, fps=30, clip_length=4, emotion="happy")
    gen = torch.Generator().manual_seed(0)
    return cond, torch.rand(1, 96, 80, 3, generator=gen), torch.randn(512, generator=gen)


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_memo_resumes_after_an_interrupt_with_identical_frames(memo_bundle, data_dir, tmp_path, caplog):
    from portrait_animation.memo.pipeline import MemoSettings, talking_frames

    bundle, rt = memo_bundle, memo_bundle.runtime
    cond, ref, face = _memo_inputs(bundle, data_dir)
    settings = MemoSettings(steps=3, num_past_frames=3, seed=7, width=64, height=64)
    opts = ResumeOptions(str(tmp_path / "resume"))
    reference = torch.cat(list(talking_frames(bundle, ref, cond, face, settings)))  # no resume
    assert reference.shape[0] == 18

    calls, hook = _count_calls(bundle.diffusion_net.module)
    stop_at = 3 * 2 + 2  # in clip 2, step 1 (two clips finished)
    rt.callbacks.append(lambda v, t, p: rt.interrupt() if v == stop_at else None)
    try:
        with pytest.raises(Interrupted):
            for _ in talking_frames(bundle, ref, cond, face, settings, resume=opts):
                pass
    finally:
        rt.callbacks.clear()
    interrupted_calls = len(calls)
    entries = list((tmp_path / "resume").iterdir())
    assert len(entries) == 1 and sorted(p.name for p in entries[0].glob("*.pt")) == ["clip00000.pt", "clip00001.pt"]

    calls.clear()
    progress = []
    rt.callbacks.append(lambda v, t, p: progress.append(v))
    try:
        with caplog.at_level(logging.INFO, logger="portrait_animation.runtime.resume"):
            resumed = torch.cat(list(talking_frames(bundle, ref, cond, face, settings, resume=opts)))
    finally:
        rt.callbacks.clear()
        hook.remove()
    assert "resuming memo from clip 2 of 5" in caplog.text
    assert torch.equal(resumed, reference)  # bit-identical to the uninterrupted run
    assert len(calls) == 2 + 3 * 3  # two replayed memory updates + three clips sampled, not 5 x 3
    assert interrupted_calls == 2 * 3 + 2
    assert not entries[0].exists()  # the finished job's entry is gone

    # a corrupt segment: that clip and the ones after it are computed again, same frames
    list(talking_frames(bundle, ref, cond, face, MemoSettings(steps=3, num_past_frames=3, seed=7, width=64,
                                                              height=64), resume=ResumeOptions(opts.folder,
                                                                                               keep=True)))
    entry = next((tmp_path / "resume").iterdir())
    (entry / "clip00003.pt").write_bytes(b"\0" * 10)
    with caplog.at_level(logging.INFO, logger="portrait_animation.runtime.resume"):
        again = torch.cat(list(talking_frames(bundle, ref, cond, face, settings, resume=opts)))
    assert torch.equal(again, reference)
    assert "resuming memo from clip 3 of 5" in caplog.text

    # another seed is another job: nothing is resumed from this one
    other = list(talking_frames(bundle, ref, cond, face, MemoSettings(steps=3, num_past_frames=3, seed=8, width=64,
                                                                      height=64), resume=opts))
    assert not torch.equal(torch.cat(other), reference)


# ---- HunyuanPortrait: whole-sequence state after each step ------------------------------------------------------------
def test_hunyuan_resumes_after_an_interrupt_with_identical_frames(hunyuan_case, tmp_path, caplog):
    from portrait_animation.hunyuan_portrait import animate as A

    bundle, cond, _ = hunyuan_case
    s = A.settings_for(cond, num_inference_steps=4, n_sample_frames=4, overlap=1, pad_frames=2, decode_chunk_size=4)
    opts = ResumeOptions(str(tmp_path / "resume"))
    rt = StandaloneRuntime(device="cpu", show_progress=False)

    def run(streamed=False, **kw):  # streamed: the chunks 'video file' encodes as they are decoded
        if streamed:
            return torch.cat(list(A.iter_animate(bundle, cond, s, seed=5, runtime=rt, **kw)))
        return A.animate(bundle, cond, s, seed=5, runtime=rt, **kw)

    reference = run()
    windows = 4  # 10 padded frames, windows of 4 starting every 3
    calls, hook = _count_calls(bundle.unet.module)
    rt.callbacks.append(lambda v, t, p: rt.interrupt() if v == 2 * windows + 1 else None)  # in step 3 of 4
    try:
        with pytest.raises(Interrupted):
            run(resume=opts)
        assert len(calls) == 2 * windows + 1
        calls.clear()
        seen = []
        rt.callbacks[:] = [lambda v, t, p: seen.append(v)]
        with caplog.at_level(logging.INFO, logger="portrait_animation.runtime.resume"):
            resumed = run(streamed=True, resume=opts)
    finally:
        rt.callbacks.clear()
        hook.remove()
    assert "resuming hunyuan_portrait from step 2 of 4" in caplog.text
    assert torch.equal(resumed, reference)
    assert len(calls) == 2 * windows  # only the two steps left
    assert seen[:2] == [2 * windows, 2 * windows + 1]  # the progress bar starts at the resumed step
    assert not any((tmp_path / "resume").iterdir())  # finished: the entry is gone

    # a state that does not fit (another frame count) is dropped, not used
    job_dir = tmp_path / "resume"
    with pytest.raises(Interrupted):
        rt.callbacks.append(lambda v, t, p: rt.interrupt() if v == windows + 1 else None)
        try:
            run(resume=opts)
        finally:
            rt.callbacks.clear()
    entry = next(job_dir.iterdir())
    torch.save({"done": 1, "state": torch.zeros(1, 3, 4, 2, 2)}, entry / "state.pt")
    with caplog.at_level(logging.WARNING, logger="portrait_animation.hunyuan_portrait.resume"):
        assert torch.equal(run(resume=opts), reference)
    assert "does not fit this run" in caplog.text


# ---- HelloMeme video: whole-pass state after each step ------------------------------------------------------------------
@pytest.mark.parametrize("version, cache_interval", [("v5", 1), ("v5b", 2)])
def test_hellomeme_video_resumes_after_an_interrupt_with_identical_frames(tmp_path, caplog, version, cache_interval):
    from test_hellomeme_pipeline import computed_controls, reference_image, text, tiny_models

    from portrait_animation.runtime.speed import SpeedOptions
    from portrait_animation.sk_attention.pipeline_video import VideoGeneration
    from portrait_animation.sk_attention.resume import hellomeme_job

    models, _ = tiny_models(version)
    speed = SpeedOptions(cache_interval=cache_interval) if cache_interval > 1 else None
    rt = StandaloneRuntime("cpu", show_progress=False)
    opts = ResumeOptions(str(tmp_path / "resume"))

    def run(resume=None, seed=3):
        controls = computed_controls(models, 14, (128, 128))
        job = hellomeme_job(resume, models, "driving conditions", seed, speed)
        gen = VideoGeneration(models, rt, reference_image((128, 128)), text(1), controls,
                              negative_prompt_embeds=text(2), steps=4, guidance_scale=2.0, noise=seed, speed=speed,
                              resume=job)
        with torch.no_grad():
            return torch.cat([img for _, img in gen]), gen

    reference, _ = run()
    # 14 frames: a keyframe pass (1 window) then the whole clip (2 windows), 4 steps each: 4 + 8 UNet calls
    rt.callbacks.append(lambda v, t, p: rt.interrupt() if v == 4 + 2 * 3 + 1 else None)  # in the last pass's step 4
    try:
        with pytest.raises(Interrupted):
            run(opts)
        seen = []
        rt.callbacks[:] = [lambda v, t, p: seen.append(v)]
        with caplog.at_level(logging.INFO, logger="portrait_animation.runtime.resume"):
            resumed, gen = run(opts)
    finally:
        rt.callbacks.clear()
    done = 3 if cache_interval == 1 else 2  # with feature reuse the state is saved before whole-UNet steps only
    assert f"resuming hellomeme from step {4 + 2 * done} of 12" in caplog.text
    assert torch.equal(resumed, reference)
    assert gen.stats.unet_calls == 2 * (4 - done) and seen[0] == 4 + 2 * done
    assert not any((tmp_path / "resume").iterdir())
    other, _ = run(opts, seed=4)  # another seed: its own job, nothing resumed
    assert not torch.equal(other, reference)


def test_hellomeme_v1_video_resumes_in_stage_one_and_in_stage_two(hellomeme_stand_ins, tmp_path, caplog):
    """v1/v2: every frame alone first (a checkpoint per frame), then the AnimateDiff windows (one per step)."""
    from helpers.tiny_models import write_hellomeme_v1_v4_models

    from portrait_animation.loaders.store import ModelStore
    from portrait_animation.sk_attention.loading import load_hellomeme
    from portrait_animation.sk_attention.pipeline_image import controls_from_drive_params
    from portrait_animation.sk_attention.pipeline_video import VideoGeneration
    from portrait_animation.sk_attention.resume import hellomeme_job

    models_dir, info = hellomeme_stand_ins
    write_hellomeme_v1_v4_models(models_dir)
    models = load_hellomeme("v1", video=True, store=ModelStore.at(models_dir), dtype=torch.float32)
    size, frames = info["image_size"], 6
    g = torch.Generator().manual_seed(1)
    params = {"condition": torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1,
              "pd_fpg": torch.randn(1, frames, 548, generator=g), "neg_pd_fpg": torch.randn(1, 1, 548, generator=g)}
    ref = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    pos, neg = torch.randn(1, 5, info["text_dim"], generator=g), torch.randn(1, 5, info["text_dim"], generator=g)
    rt = StandaloneRuntime("cpu", show_progress=False)
    opts = ResumeOptions(str(tmp_path / "resume"))

    def run(resume=None):
        gen = VideoGeneration(models, rt, ref, pos, controls_from_drive_params(models, params),
                              negative_prompt_embeds=neg, steps=3, guidance_scale=2.0, noise=11,
                              resume=hellomeme_job(resume, models, params, ref, pos, neg, 3, 2.0, 11))
        with torch.no_grad():
            return torch.cat([img for _, img in gen]), gen

    reference, gen = run()
    total = gen.stats.unet_calls
    stage1 = frames * 3
    windows = (total - stage1) // 3  # stage-2 windows per step
    assert windows >= 1 and total == stage1 + 3 * windows
    for stop, resumed_at in ((10, None), (stage1 + windows + 1, 9)):  # in stage 1's frame 4, in stage 2's step 2
        rt.callbacks[:] = [lambda v, t, p, stop=stop: rt.interrupt() if v == stop else None]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="portrait_animation.runtime.resume"), pytest.raises(Interrupted):
            run(opts)
        if resumed_at is not None:
            assert f"resuming hellomeme from step {resumed_at} of {total}" in caplog.text
    rt.callbacks.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="portrait_animation.runtime.resume"):
        resumed, gen = run(opts)
    assert f"resuming hellomeme from step {stage1 + windows} of {total}" in caplog.text
    assert torch.equal(resumed, reference)
    assert gen.stats.unet_calls == total - stage1 - windows
