"""MEMO parity handlers for the audio path: wav2vec2 features (``audio_features_*``) and the emotion schedule."""
from __future__ import annotations

from pathlib import Path

import torch

from parity.runner import Case, handler
from portrait_animation.audio import emotion as emo
from portrait_animation.audio import wav2vec as w2v


@handler("memo.audio_features_synthetic", "memo.audio_features_speech")
def audio_features(case: Case, ckpt_dir: Path) -> dict:
    model = w2v.load_wav2vec2(ckpt_dir / case.spec["checkpoint"]["folder"])
    s = case.settings
    r = w2v.wav2vec_frame_features(model, case.inputs()["waveform"], s["fps"], s["clip_length"])
    return {
        "input_values": r.input_values,
        "cnn_features": r.cnn_features,
        "cnn_features_resampled": r.cnn_features_resampled,
        "hidden_states": r.hidden_states,
        "audio_emb": r.audio_emb,
        "audio_length": torch.tensor(r.num_frames, dtype=torch.int64),
    }


@handler("memo.emotion_schedule")
def emotion_schedule(case: Case, ckpt_dir: Path) -> dict:
    inputs = case.inputs()
    s = case.settings
    sched = emo.schedule_from_probs(inputs["window_probs"], int(inputs["num_samples"]), int(inputs["audio_length"]),
                                    s["clip_length"], s.get("sample_rate", emo.SAMPLE_RATE))
    return {
        "window_bounds": sched.window_bounds,
        "window_labels": sched.window_labels,
        "frame_labels": sched.frame_labels,
        "clip_labels": sched.clip_labels,
    }
