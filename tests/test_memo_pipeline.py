"""MEMO end to end on small stand-in models laid out like a ComfyUI models folder: store -> loaders -> audio
conditions -> clip-by-clip sampling, with progress, cancellation and bounded accelerator memory."""
from __future__ import annotations

import pytest
import torch

from portrait_animation.loaders.store import MissingModelFiles, ModelStore
from portrait_animation.media.audio import load_audio
from portrait_animation.memo.pipeline import (MemoSettings, condition, face_embedding, load_memo_bundle,
                                              talking_frames)
from portrait_animation.runtime import Interrupted, StandaloneRuntime

from helpers.tiny_models import write_memo_models
from parity.runner import DEFAULT_PARITY_ROOT


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_memo_models(root, DEFAULT_PARITY_ROOT)
    return ModelStore.at(root)


@pytest.fixture(scope="module")
def bundle(tiny_store):
    return load_memo_bundle(StandaloneRuntime("cpu", show_progress=False), tiny_store, dtype="fp32",
                            emotion_model=False, identity=False)


def test_missing_identity_files_are_listed(tiny_store):
    with pytest.raises(MissingModelFiles) as e:
        load_memo_bundle(StandaloneRuntime("cpu"), tiny_store, identity=True, emotion_model=False)
    assert "scrfd_10g_bnkps.onnx" in str(e.value) and "glintr100.onnx" in str(e.value)


def test_speech_to_frames(bundle, data_dir):
    audio = load_audio(data_dir / "speech.wav")
    audio["waveform"] = audio["waveform"][..., : int(0.5 * audio["sample_rate"])]  # 0.5 s -> 15 frames at 30 fps
    cond = condition(bundle, audio, fps=30, clip_length=4, emotion="happy")
    assert cond.frames_with_audio == 15 and cond.num_frames == 16 and cond.clip_emotions == [cond.clip_emotions[0]] * 4
    ref = torch.rand(1, 160, 120, 3)
    face = face_embedding(bundle, ref, on_missing_face="uncond")
    assert torch.count_nonzero(face) == 0
    settings = MemoSettings(steps=2, num_past_frames=4, seed=3, width=128, height=128)
    steps_seen = []
    bundle.runtime.callbacks.append(lambda v, t, p: steps_seen.append((v, t)))
    clips = list(talking_frames(bundle, ref, cond, face, settings))
    bundle.runtime.callbacks.clear()
    assert [c.shape[0] for c in clips] == [4, 4, 4, 3]  # trimmed to the speech
    assert all(c.shape[1:] == (128, 128, 3) and c.min() >= 0 and c.max() <= 1 for c in clips)
    assert steps_seen[-1] == (8, 8)  # one progress update per denoising step (4 clips x 2 steps)
    again = list(talking_frames(bundle, ref, cond, face, settings))
    assert all(torch.equal(a, b) for a, b in zip(clips, again))  # seeded: reproducible


def test_missing_identity_without_models_is_a_clear_error(bundle):
    with pytest.raises(ValueError, match="identity"):
        face_embedding(bundle, torch.rand(1, 64, 64, 3), on_missing_face="error")


def test_cancel_stops_between_steps(bundle, data_dir):
    audio = load_audio(data_dir / "speech.wav")
    cond = condition(bundle, audio, fps=30, clip_length=4, emotion="neutral")
    rt = bundle.runtime
    done = []

    def stop_after_three(v, t, p):
        done.append(v)
        if v == 3:
            rt.interrupt()

    rt.callbacks.append(stop_after_three)
    try:
        with pytest.raises(Interrupted):
            for _ in talking_frames(bundle, torch.rand(1, 64, 64, 3), cond, torch.zeros(512),
                                    MemoSettings(steps=2, num_past_frames=4, width=64, height=64)):
                pass
    finally:
        rt.callbacks.clear()
    assert max(done) == 3  # stopped at the cancellation point, long before the 15 s of speech were done
