"""MEMO's audio conditioning: wav2vec2 features, emotion schedule, emotion2vec+, vocal separation, the conditioner."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from parity import runner
from portrait_animation.audio import conditioner as cond
from portrait_animation.audio import emotion as emo
from portrait_animation.audio import emotion2vec as e2v
from portrait_animation.audio import features as feat
from portrait_animation.audio import separation as sep
from portrait_animation.audio import wav2vec as w2v
from portrait_animation.loaders.checkpoint import CheckpointKeyError
from portrait_animation.media.audio import load_audio, make_audio, samples_for_frames

W2V_CASE = "audio_features_speech"


# ---------------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def w2v_folder(tmp_path_factory) -> Path:
    """The tiny wav2vec2 of the speech parity case, written in the released facebook/wav2vec2-base-960h layout."""
    root = runner.parity_root()
    if not root.is_dir():
        pytest.fail(f"parity root {root} not found (set PARITY_ROOT)")
    out = tmp_path_factory.mktemp("w2v")
    runner._materialize_module(root).materialize(root / "memo" / W2V_CASE / "weights.json", out)
    return out / "wav2vec2-base-960h-tiny"


@pytest.fixture(scope="module")
def encoder(w2v_folder) -> w2v.Wav2Vec2Encoder:
    return w2v.load_wav2vec2(w2v_folder)


@pytest.fixture(scope="module")
def speech(data_dir):
    return load_audio(data_dir / "speech.wav")


# A tiny emotion2vec (data2vec 2.0 audio) config in funasr's config.yaml layout.
E2V_CONF = {
    "embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "norm_eps": "1e-05", "norm_affine": True,
    "layer_norm_first": False, "end_of_block_targets": False, "dropout_input": 0.0, "encoder_dropout": 0.0,
    "post_mlp_drop": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0,
    "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0,
    "modalities": {"audio": {
        "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] + [(16,2,2)]",
        "extractor_mode": "layer_norm", "conv_pos_width": 9, "conv_pos_groups": 4, "conv_pos_depth": 3,
        "conv_pos_pre_ln": False, "prenet_depth": 1, "prenet_layerdrop": 0.0, "prenet_dropout": 0.0,
        "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_extra_tokens": 2, "init_extra_token_zero": True,
        "use_alibi_encoder": True, "alibi_scale": 1.0, "learned_alibi": False, "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True, "learned_alibi_scale_per_layer": False, "num_alibi_heads": 4,
        "model_depth": 2, "local_grad_mult": 1.0, "decoder": None}},
}


def _deterministic_fill(shapes: dict) -> dict:
    """Key-order-deterministic sinusoidal values (norm scales around 1), independent of any RNG."""
    out = {}
    for i, k in enumerate(sorted(shapes)):
        shape = shapes[k]
        n = math.prod(shape)
        v = 0.3 * torch.sin(0.7 * torch.arange(n, dtype=torch.float64) + i)
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".1.weight")) and len(shape) == 1:
            v = 1.0 + v
        out[k] = v.reshape(shape).float()
    return out


def _e2v_state_dict() -> dict:
    model = e2v.Emotion2VecModel(e2v.Emotion2VecConfig.from_model_conf(E2V_CONF))
    return _deterministic_fill({k: tuple(v.shape) for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def e2v_folder(tmp_path_factory) -> Path:
    """model.pt as funasr would hold it: nested under "model", "module."-prefixed, with decoder/head extras."""
    out = tmp_path_factory.mktemp("e2v")
    sd = {"module." + k: v for k, v in _e2v_state_dict().items()}
    sd["module.modality_encoders.AUDIO.decoder.proj.weight"] = torch.zeros(32, 16)
    sd["module.proj.weight"] = torch.zeros(9, 32)
    sd["module.proj.bias"] = torch.zeros(9)
    torch.save({"model": sd}, out / "model.pt")
    (out / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": E2V_CONF}))
    (out / "tokens.txt").write_text("\n".join(emo.EMOTION_NAMES))
    return out


class _TinyClassifier(torch.nn.Module):
    """Stands in for MEMO's MLP: mean features (1, D) -> 9 probabilities, favouring a class by feature sign."""

    def __init__(self, dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = torch.nn.Linear(dim, emo.NUM_EMOTIONS)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(emo.NUM_EMOTIONS, dim, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        return torch.softmax(self.fc(x), dim=-1)


def _expected_frames(num_samples_16k: int, fps, clip: int) -> int:
    t = math.ceil(num_samples_16k / 16000 * fps)
    return t + (clip - t % clip) % clip


# ---------------------------------------------------------------------------------------------------------------------
# frame bookkeeping and wav2vec2
# ---------------------------------------------------------------------------------------------------------------------
def test_frame_rules():
    assert feat.frames_for_samples(21920, 30) == 42
    assert feat.padded_frame_count(42, 16) == 48 and feat.padded_frame_count(48, 16) == 48
    assert feat.samples_per_padding_frame(30) == 533 and feat.samples_per_padding_frame(25) == 640
    padded, total, frames = feat.pad_to_whole_clips(torch.ones(21920), 30, 16)
    assert (total, frames, padded.shape[0]) == (48, 42, 21920 + 6 * 533)
    assert torch.all(padded[21920:] == 0)
    h = torch.arange(4.0)[:, None]
    win = feat.context_windows(h)
    assert win.shape == (4, 5, 1)
    assert win[0, :, 0].tolist() == [0, 0, 0, 1, 2] and win[3, :, 0].tolist() == [1, 2, 3, 3, 3]
    x = feat.normalize_utterance(torch.randn(1000) * 3 + 2)
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=False).item() - 1) < 1e-4
    assert torch.all(feat.normalize_utterance(torch.zeros(10)) == 0)


def test_wav2vec_loader_accepts_new_weight_norm_names(w2v_folder, encoder, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(w2v_folder / "model.safetensors"))
    sd["wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = \
        sd.pop("wav2vec2.encoder.pos_conv_embed.conv.weight_g")
    sd["wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = \
        sd.pop("wav2vec2.encoder.pos_conv_embed.conv.weight_v")
    folder = tmp_path / "renamed"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_text((w2v_folder / name).read_text())
    model = w2v.load_wav2vec2(folder)
    x = torch.randn(1, 4000)
    torch.testing.assert_close(model(x), encoder(x))


def test_wav2vec_loader_is_strict(w2v_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(w2v_folder / "model.safetensors"))
    sd.pop("wav2vec2.encoder.layers.1.attention.q_proj.weight")
    sd["wav2vec2.encoder.layers.9.extra.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "broken.safetensors"))
    config = json.loads((w2v_folder / "config.json").read_text())
    with pytest.raises(CheckpointKeyError) as e:
        w2v.load_wav2vec2(tmp_path / "broken.safetensors", config=config)
    assert "encoder.layers.1.attention.q_proj.weight" in str(e.value)
    assert "encoder.layers.9.extra.weight" in str(e.value)
    # A single file without a config falls back to the embedded base config: a clear mismatch, not a crash.
    save_file(load_file(str(w2v_folder / "model.safetensors")), str(tmp_path / "tiny.safetensors"))
    with pytest.raises(CheckpointKeyError, match="shape mismatches"):
        w2v.load_wav2vec2(tmp_path / "tiny.safetensors")


def test_wav2vec_matches_transformers(w2v_folder, encoder):
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(**json.loads((w2v_folder / "config.json").read_text()))
    ref = transformers.Wav2Vec2Model(config).eval()
    ours = encoder.state_dict()
    theirs = {}
    for k, v in ref.state_dict().items():
        src = k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        theirs[k] = ours[src] if k != "masked_spec_embed" else v  # training-only, not part of our encoder
    assert set(ours) == {k.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v") for k in theirs} - {"masked_spec_embed"}
    ref.load_state_dict(theirs)
    x = torch.randn(1, 9000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = ref(x, output_hidden_states=True)
        expected = torch.stack(out.hidden_states[1:], dim=2)
        torch.testing.assert_close(encoder(x), expected, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# emotion schedule
# ---------------------------------------------------------------------------------------------------------------------
def test_emotion_windows_short_and_long():
    assert emo.emotion_windows(8000) == [(0, 8000), (0, 8000)]
    assert emo.window_slots(8000) == [(0, 8000), (0, 8000)]
    assert emo.emotion_windows(40000) == [(0, 32000), (0, 40000), (8000, 40000)]
    labels = emo.sample_labels([1, 2, 3], 40000)
    assert labels[:16000].eq(1).all() and labels[16000:24000].eq(2).all() and labels[24000:].eq(3).all()
    assert emo.emotion_windows(0) == []


def test_clip_mode_ties_resolve_to_smallest():
    frames = torch.tensor([5, 5, 3, 3, 7, 7, 7, 1], dtype=torch.int32)
    assert emo.clip_labels_from_frames(frames, 4).tolist() == [3, 7]
    assert emo.mode_smallest(torch.tensor([8, 2, 8, 2])) == 2


def test_emotion_names_and_override():
    assert emo.EMOTION_NAMES[emo.NEUTRAL] == "neutral" and emo.NULL_EMOTION == 9
    assert emo.emotion_index("Happy") == 3 and emo.emotion_index(6) == 6
    with pytest.raises(ValueError):
        emo.emotion_index("furious")
    clips = emo.resolve_clip_emotions(3, "sad", auto_labels=[0, 1, 2])
    assert clips.labels == [6, 6, 6] and clips.sources == ["override"] * 3
    clips = emo.resolve_clip_emotions(2, "auto")
    assert clips.labels == [emo.NEUTRAL] * 2 and clips.sources == ["fallback"] * 2 and clips.notes


# ---------------------------------------------------------------------------------------------------------------------
# emotion2vec+
# ---------------------------------------------------------------------------------------------------------------------
def test_emotion2vec_matches_funasr_reference(e2v_folder):
    """Values recorded from funasr's Emotion2vec (model code of funasr 1.0.x) with the same weights and input."""
    model = e2v.load_emotion2vec(e2v_folder)
    t = torch.arange(20800, dtype=torch.float64) / 16000
    x = (torch.sin(2 * math.pi * (200 + 300 * t) * t) * 0.5).float()[None]
    x = emo.standardize_segment(x[0])[None]
    with torch.no_grad():
        y = model.extract_features(x)
    assert y.shape == (1, 64, 32)
    expected_mean = torch.tensor([-0.88925, -0.8907, -0.56822, -0.00714, 1.6746, 1.13124, 1.51025, -0.76331])
    expected_row = torch.tensor([-0.90551, -0.8827, -0.56638, -0.00217, 1.64894, 1.09433])
    torch.testing.assert_close(y.mean(1)[0, :8], expected_mean, atol=2e-4, rtol=0)
    torch.testing.assert_close(y[0, 7, :6], expected_row, atol=2e-4, rtol=0)
    assert abs(y.abs().sum().item() - 1605.2792) < 0.05
    torch.testing.assert_close(model.utterance_features(x), y.mean(1))


def test_emotion2vec_loader_is_strict(e2v_folder, tmp_path):
    sd = _e2v_state_dict()
    sd.pop("blocks.1.attn.qkv.weight")
    torch.save(sd, tmp_path / "model.pt")
    (tmp_path / "config.yaml").write_text((e2v_folder / "config.yaml").read_text())
    with pytest.raises(CheckpointKeyError, match="blocks.1.attn.qkv.weight"):
        e2v.load_emotion2vec(tmp_path)


def test_emotion2vec_conv_spec_parser_is_safe():
    assert e2v.parse_conv_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(ValueError):
        e2v.parse_conv_spec("__import__('os').getcwd()")
    assert e2v.alibi_slopes(8)[0] == 0.5 and len(e2v.alibi_slopes(12)) == 12


# ---------------------------------------------------------------------------------------------------------------------
# vocal separation (MDX-Net pre/post-processing with an identity "model")
# ---------------------------------------------------------------------------------------------------------------------
def test_mdx_processing_round_trip():
    params = sep.MDXParams.from_model_data(sep.KNOWN_MODELS["kim_vocal_2.onnx"])
    assert (params.n_fft, params.dim_f, params.dim_t, params.compensate) == (7680, 3072, 256, 1.009)
    shapes = []

    def identity(spec):
        shapes.append(spec.shape)
        return spec

    sr = 16000
    t = torch.arange(int(6.5 * sr)) / sr
    x = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.sin(2 * math.pi * 1234 * t)
    vocals = sep.VocalSeparator(params, identity)(torch.stack([x, x]), sr)
    assert shapes and all(s == (1, 4, 3072, 256) for s in shapes)
    assert vocals.shape == x.shape
    reference = x / x.abs().max() * sep.MIN_PEAK      # quiet input: amplified to the 0.6 peak twice
    assert (vocals - reference)[1000:-1000].abs().max() < 0.02


def test_mdx_params_from_model_data_by_hash(tmp_path):
    model = tmp_path / "Some_Model.onnx"
    model.write_bytes(b"not really onnx" * 100)
    digest = hashlib.md5(model.read_bytes()).hexdigest()
    assert sep.model_file_hash(model) == digest
    entry = {"compensate": 1.5, "mdx_dim_f_set": 2048, "mdx_dim_t_set": 7, "mdx_n_fft_scale_set": 5120,
             "primary_stem": "Vocals"}
    (tmp_path / "mdx_model_data.json").write_text(json.dumps({digest: entry}))
    p = sep.mdx_params_for(model)
    assert (p.n_fft, p.dim_f, p.dim_t, p.compensate) == (5120, 2048, 128, 1.5)
    (tmp_path / "mdx_model_data.json").write_text("{}")
    with pytest.raises(sep.VocalSeparationUnavailable, match="Some_Model.onnx"):
        sep.mdx_params_for(model)
    with pytest.raises(sep.VocalSeparationUnavailable, match="not found"):
        sep.VocalSeparator.from_files(tmp_path / "missing.onnx")


# ---------------------------------------------------------------------------------------------------------------------
# the conditioner
# ---------------------------------------------------------------------------------------------------------------------
def test_condition_speech_auto_emotion(speech, encoder, e2v_folder):
    emotion_model = e2v.load_emotion2vec(e2v_folder)
    classifier = _TinyClassifier(emotion_model.embed_dim)
    c = cond.condition_audio(speech, fps=30, clip_length=16, wav2vec=encoder, emotion2vec=emotion_model,
                             emotion_classifier=classifier)
    n16 = 15 * 16000
    assert c.frames_with_audio == 450
    assert c.num_frames == _expected_frames(n16, 30, 16) == 464 and c.num_clips == 29
    assert c.audio_emb.shape == (464, 5, encoder.num_layers, encoder.hidden_size)
    assert c.audio_emb.device.type == "cpu" and torch.isfinite(c.audio_emb).all()
    assert c.clip_audio_emb(28).shape == (16, 5, encoder.num_layers, encoder.hidden_size)
    assert len(c.clip_emotions) == c.num_clips and c.emotion_sources == ["auto"] * c.num_clips
    assert all(0 <= e < emo.NUM_EMOTIONS for e in c.clip_emotions)
    assert c.frame_emotions.shape == (464,)
    assert c.window_probs.shape == (len(emo.emotion_windows(n16)), emo.NUM_EMOTIONS)
    for k in range(c.num_clips):   # clip label = mode of its frames
        assert c.clip_emotions[k] == emo.mode_smallest(c.frame_emotions[c.clip_frames(k)])
    assert c.audio["sample_rate"] == 16000 and c.audio["waveform"].shape == (1, 1, samples_for_frames(464, 30, 16000))
    # The conditioning is what the feature path computes on the 16 kHz mono mix.
    direct = w2v.wav2vec_frame_features(encoder, feat.audio_to_16k_mono(speech), 30, 16)
    torch.testing.assert_close(c.audio_emb, direct.audio_emb)
    assert "emotions" in c.summary()


def test_condition_manual_override_sets_every_clip(speech, encoder, e2v_folder):
    emotion_model = e2v.load_emotion2vec(e2v_folder)
    c = cond.condition_audio(speech, fps=25, clip_length=8, wav2vec=encoder, emotion2vec=emotion_model,
                             emotion_classifier=_TinyClassifier(32), emotion="surprised")
    assert c.num_frames == _expected_frames(15 * 16000, 25, 8) and c.num_frames % 8 == 0
    assert c.clip_emotions == [emo.emotion_index("surprised")] * c.num_clips
    assert c.emotion_sources == ["override"] * c.num_clips and c.overridden and c.frame_emotions is None


def test_condition_without_emotion_model_falls_back_to_neutral(encoder):
    audio = make_audio(0.1 * torch.randn(1, 16000 * 2), 16000)
    c = cond.condition_audio(audio, wav2vec=encoder)
    assert c.clip_emotions == [emo.NEUTRAL] * c.num_clips and c.used_fallback
    assert any("neutral" in n for n in c.notes)
    with pytest.raises(ValueError):
        cond.condition_audio(audio, wav2vec=encoder, emotion="furious")


def test_condition_silence(encoder, e2v_folder):
    audio = make_audio(torch.zeros(1, 1, 22050), 22050)
    c = cond.condition_audio(audio, wav2vec=encoder, emotion2vec=e2v.load_emotion2vec(e2v_folder),
                             emotion_classifier=_TinyClassifier(32))
    assert c.num_frames == 32 and c.num_clips == 2 and torch.isfinite(c.audio_emb).all()
    assert len(c.clip_emotions) == 2 and any("silent" in n for n in c.notes)


@pytest.mark.parametrize("samples, sample_rate", [(100, 44100), (1, 16000), (0, 48000)])
def test_condition_shorter_than_a_frame_gives_one_clip(encoder, e2v_folder, samples, sample_rate):
    audio = make_audio(0.2 * torch.randn(1, 2, samples), sample_rate)
    c = cond.condition_audio(audio, fps=30, clip_length=16, wav2vec=encoder,
                             emotion2vec=e2v.load_emotion2vec(e2v_folder), emotion_classifier=_TinyClassifier(32))
    assert c.num_frames == 16 and c.num_clips == 1 and len(c.clip_emotions) == 1
    assert c.audio_emb.shape[0] == 16 and torch.isfinite(c.audio_emb).all()
    assert c.notes


@pytest.mark.parametrize("sample_rate", [8000, 22050, 44100, 48000])
def test_condition_stereo_odd_rates(encoder, sample_rate):
    seconds = 1.7
    n = int(seconds * sample_rate)
    t = torch.arange(n) / sample_rate
    left = 0.3 * torch.sin(2 * math.pi * 220 * t)
    audio = make_audio(torch.stack([left, 0.5 * left]), sample_rate)
    c = cond.condition_audio(audio, fps=30, clip_length=16, wav2vec=encoder, emotion="happy")
    n16 = math.ceil(n * 16000 / sample_rate)
    assert c.num_frames == _expected_frames(n16, 30, 16) == 64
    assert c.audio_emb.shape == (64, 5, encoder.num_layers, encoder.hidden_size)
    assert c.clip_emotions == [3] * c.num_clips
    assert c.audio["waveform"].shape[-1] == samples_for_frames(64, 30, 16000)


def test_condition_with_vocal_separation(encoder):
    params = sep.MDXParams.from_model_data(sep.KNOWN_MODELS["kim_vocal_2.onnx"])
    separator = sep.VocalSeparator(params, lambda spec: spec)
    audio = make_audio(0.2 * torch.randn(1, 2, 16000), 16000)
    c = cond.condition_audio(audio, wav2vec=encoder, separator=separator, separate_vocals=True, emotion="neutral")
    assert c.vocals_separated and c.num_frames == 32
    with pytest.raises(sep.VocalSeparationUnavailable):
        cond.condition_audio(audio, wav2vec=encoder, separate_vocals=True)


def test_audio_fingerprint_changes_with_content_and_settings():
    a = make_audio(torch.zeros(1, 1, 100), 16000)
    b = make_audio(torch.ones(1, 1, 100), 16000)
    assert cond.audio_fingerprint(a, 30) == cond.audio_fingerprint(a, 30)
    assert cond.audio_fingerprint(a, 30) != cond.audio_fingerprint(b, 30)
    assert cond.audio_fingerprint(a, 30) != cond.audio_fingerprint(a, 25)


def test_condition_with_memo_emotion_classifier(encoder, e2v_folder):
    """The pack's MEMO classifier (probabilities out) plugs into the automatic emotion path."""
    from portrait_animation.memo.emotion_classifier import EmotionClassifier, EmotionClassifierConfig

    classifier = EmotionClassifier(EmotionClassifierConfig(in_features=32, hidden=16)).eval()
    audio = make_audio(0.2 * torch.randn(1, 1, 16000 * 3), 16000)
    c = cond.condition_audio(audio, wav2vec=encoder, emotion2vec=e2v.load_emotion2vec(e2v_folder),
                             emotion_classifier=classifier)
    assert c.num_clips == 6 and c.emotion_sources == ["auto"] * 6
    assert c.window_probs.shape == (3, 9) and torch.allclose(c.window_probs.sum(-1), torch.ones(3))
