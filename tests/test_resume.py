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
