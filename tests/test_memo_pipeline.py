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
    assert "scrfd_10g_bnkps.onnx" in e.value.report and "glintr100.onnx" in e.value.report


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


def test_missing_identity_without_models_is_a_clear_error(bundle, caplog):
    with pytest.raises(ValueError, match="identity"):
        face_embedding(bundle, torch.rand(1, 64, 64, 3), on_missing_face="error")
    with caplog.at_level("WARNING", logger="portrait_animation.memo.pipeline"):
        assert not face_embedding(bundle, torch.rand(1, 64, 64, 3), on_missing_face="uncond").any()
    assert "without an identity embedding" in caplog.text  # continuing without identity is said, not silent


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


# ---- settings that could only fail later are rejected first ---------------------------------------------------------


def _table_rows(store: ModelStore) -> set[int]:
    """Rows of every temporal positional table in the stand-in diffusion_net checkpoint, read from the file."""
    from safetensors import safe_open

    path = store.folders("portrait_animation")[0] / "memo" / "diffusion_net" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(path), "pt") as f:
        return {f.get_slice(k).get_shape()[1] for k in f.keys() if k.endswith("pos_encoder.pe")}


def test_clip_length_beyond_the_position_table_fails_before_audio_work(bundle, tiny_store, data_dir, monkeypatch):
    import portrait_animation.audio.conditioner as conditioner

    rows = _table_rows(tiny_store)
    assert len(rows) == 1
    limit = rows.pop()
    assert bundle.diffusion_net.module.max_clip_frames == limit

    def no_audio_work(*args, **kwargs):
        raise AssertionError("the audio was encoded before the clip length was checked")

    monkeypatch.setattr(conditioner, "condition_audio", no_audio_work)
    audio = load_audio(data_dir / "speech.wav")
    with pytest.raises(ValueError) as e:
        condition(bundle, audio, clip_length=limit + 1)
    assert f"'clip_length' is {limit + 1}" in str(e.value) and f"from 1 to {limit}" in str(e.value)
    with pytest.raises(AssertionError, match="encoded"):  # the limit itself is fine
        condition(bundle, audio, clip_length=limit)


def test_sampler_settings_fail_before_work(bundle):
    from types import SimpleNamespace

    from portrait_animation.memo.pipeline import check_settings

    limit = bundle.diffusion_net.module.max_clip_frames
    ok = MemoSettings(width=64, height=64)
    check_settings(bundle, SimpleNamespace(clip_length=limit), ok)
    with pytest.raises(ValueError, match=rf"clip_length.* is {limit + 1}.*from 1 to {limit}"):
        check_settings(bundle, SimpleNamespace(clip_length=limit + 1), ok)
    with pytest.raises(ValueError, match="'resolution' is 100: MEMO needs a multiple of 8 from 64 to 2048"):
        check_settings(bundle, SimpleNamespace(clip_length=4), MemoSettings(width=100, height=100))
    # talking_frames checks before it loads a model or draws noise
    loads = []
    bundle.runtime.load, original = (lambda handles: loads.append(handles)), bundle.runtime.load
    try:
        with pytest.raises(ValueError, match="resolution"):
            next(talking_frames(bundle, torch.rand(1, 64, 64, 3), SimpleNamespace(clip_length=4), torch.zeros(512),
                                MemoSettings(width=72, height=76)))
    finally:
        bundle.runtime.load = original
    assert not loads


def test_the_sampler_itself_refuses_clips_longer_than_the_table(bundle):
    from portrait_animation.motion.memo_sampler import MemoSampler, MemoSamplerSettings

    limit = bundle.diffusion_net.module.max_clip_frames
    f = limit + 1
    sampler = MemoSampler(bundle.vae.module, bundle.reference_net.module, bundle.diffusion_net.module,
                          bundle.image_proj.module, MemoSamplerSettings(steps=1, frames_per_clip=f, num_past_frames=2))
    with pytest.raises(ValueError, match=f"frames_per_clip={f}.*1 to {limit}"):
        next(sampler.clips(torch.zeros(1, 3, 64, 64), torch.zeros(1, 512), torch.zeros(1, f, 32, 64)))


def test_clip_length_is_free_without_a_position_table(bundle):
    import copy

    from portrait_animation.memo.pipeline import check_clip_length

    net = bundle.diffusion_net.module
    stripped = copy.copy(bundle)
    stripped.diffusion_net = copy.copy(bundle.diffusion_net)
    stripped.diffusion_net.module = copy.deepcopy(net)
    for _, layer in stripped.diffusion_net.module.memory_layers():
        layer.pos_encoder = None  # a checkpoint trained without temporal positions
    assert stripped.diffusion_net.module.max_clip_frames is None
    check_clip_length(stripped, 10 * net.max_clip_frames)
    with pytest.raises(ValueError, match="'clip_length' is 0"):
        check_clip_length(stripped, 0)


# ---- defaults as released -------------------------------------------------------------------------------------------


def test_default_sampling_is_the_released_batching(bundle, data_dir, caplog):
    audio = load_audio(data_dir / "speech.wav")
    audio["waveform"] = audio["waveform"][..., : audio["sample_rate"] // 10]  # 0.1 s -> 3 frames -> 2 clips of 2
    cond = condition(bundle, audio, fps=30, clip_length=2, emotion="happy")
    ref, face = torch.rand(2, 64, 64, 3), torch.randn(512)  # a batch: only the first image is animated

    def run(**faithful):
        settings = MemoSettings(steps=1, num_past_frames=3, seed=5, width=64, height=64, **faithful)
        return torch.cat(list(talking_frames(bundle, ref, cond, face, settings)))

    with caplog.at_level("WARNING", logger="portrait_animation.memo.pipeline"):
        default = run()
    assert "past_frames=3 exceeds clip_length=2" in caplog.text  # not an error, but said
    assert "holds 2 images; only the first" in caplog.text
    assert default.shape[0] == 3
    assert torch.equal(default, run(faithful=True))
    assert not torch.equal(default, run(faithful=False))


# ---- precision -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_is_bf16_where_supported_else_fp32(tiny_store, monkeypatch, native_bf16, expected):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return native_bf16 or including_emulation  # a GPU that emulates bf16 when it has no native support

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    rt = StandaloneRuntime("cuda", show_progress=False)  # nothing is moved to it while loading
    assert rt.dtype("auto") is (torch.bfloat16 if native_bf16 else torch.float16)  # the generic policy would
    b = load_memo_bundle(rt, tiny_store, dtype="auto", emotion_model=False, identity=False)
    assert asked and not any(asked)  # only native support counts
    assert b.dtype is expected
    assert next(b.diffusion_net.module.parameters()).dtype is expected
    assert next(b.vae.module.parameters()).dtype is expected
    assert next(b.audio_proj.module.parameters()).dtype is torch.float32  # as in the original


def test_fp16_only_when_chosen_and_then_with_a_warning(caplog):
    from portrait_animation.memo.pipeline import memo_dtype

    cpu = StandaloneRuntime("cpu")
    with caplog.at_level("WARNING", logger="portrait_animation.memo.pipeline"):
        assert memo_dtype(cpu, "auto") is torch.float32
        assert memo_dtype(cpu, "bf16") is torch.bfloat16
        assert not caplog.records
        assert memo_dtype(cpu, "fp16") is torch.float16
        assert "fp16 (dtype=fp16)" in caplog.text and "overflow" in caplog.text
        caplog.clear()
        assert memo_dtype(StandaloneRuntime("cpu", dtype="fp16"), "auto") is torch.float16  # the runtime's choice
        assert "standalone runtime" in caplog.text


def test_a_runtime_dtype_memo_cannot_run_in_falls_back_to_fp32(caplog):
    from portrait_animation.memo.pipeline import memo_dtype

    class Fp8Runtime(StandaloneRuntime):
        def default_dtype(self, role, supported):
            return torch.float8_e4m3fn

    with caplog.at_level("WARNING", logger="portrait_animation.memo.pipeline"):
        assert memo_dtype(Fp8Runtime("cpu"), None) is torch.float32
    assert "float8_e4m3fn" in caplog.text


def test_loader_report_says_what_was_done_with_the_released_files(bundle):
    """The stand-ins are written in the released layouts: the MEMO Loader's report (bundle.notes) names the legacy
    VAE attention rename and the dropped wav2vec2 CTC head, so nothing is ignored without a report line."""
    text = "\n".join(bundle.notes)
    assert "sd-vae-ft-mse" in text and "converted" in text, text
    assert "lm_head" in text and "dropped" in text, text
