"""Frame-level bookkeeping of MEMO's audio path: 16 kHz mono input, utterance normalisation, the frame count, padding
to whole clips, resampling of encoder features to the video frame rate and the +-2 frame context windows.

Everything here is model-free (plain tensor arithmetic); :mod:`.wav2vec` runs the encoder in between.

The rules reproduce the original preprocessing (``preprocess_audio`` of MEMO):

* ``T = ceil(samples / 16000 * fps)`` video frames cover the utterance;
* when ``T`` is not a multiple of the clip length, ``(clip - T % clip) * (16000 // fps)`` zero samples are appended
  to the *normalised* waveform (533 per missing frame at 30 fps, slightly less than a frame) and ``T`` is rounded up;
* the encoder's ~50 Hz convolutional features are linearly resampled (``align_corners=True``) to exactly ``T``
  frames before its transformer;
* frame ``i`` is described by the layer outputs of frames ``i-2 .. i+2`` with indices clamped to ``[0, T-1]``.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F

from ..media.audio import Audio, prepare_audio

SAMPLE_RATE = 16000
CONTEXT_RADIUS = 2          # frames on each side of the context window (window = 5 frames)
NORM_EPS = 1e-7             # wav2vec2 feature extractor: (x - mean) / sqrt(var + 1e-7)

Number = Union[int, float]


def audio_to_16k_mono(audio: Audio, batch_index: int = 0) -> torch.Tensor:
    """One item of an AUDIO dict as a 16 kHz mono float32 waveform ``(samples,)`` (channels averaged)."""
    item = {"waveform": audio["waveform"][batch_index:batch_index + 1], "sample_rate": audio["sample_rate"]}
    return prepare_audio(item, sample_rate=SAMPLE_RATE, mono=True)["waveform"][0, 0]


def normalize_utterance(waveform: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Zero mean / unit variance over the whole utterance: ``(x - mean) / sqrt(var + eps)``.

    ``waveform``: ``(samples,)``. Statistics are taken in float64 (population variance) and the result is float32,
    which matches the float32 NumPy computation of the wav2vec2 feature extractor to float32 rounding.
    """
    x = waveform.detach().to(torch.float64)
    if x.numel() == 0:
        return waveform.to(torch.float32)
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return ((x - mean) / torch.sqrt(var + eps)).to(torch.float32)


def frames_for_samples(num_samples: int, fps: Number, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames covering ``num_samples``: ``ceil(num_samples / sample_rate * fps)`` (the original's float rule)."""
    return int(math.ceil(num_samples / sample_rate * fps))


def samples_per_padding_frame(fps: Number, sample_rate: int = SAMPLE_RATE) -> int:
    """Zero samples appended per missing frame: ``sample_rate // fps`` (533 at 30 fps)."""
    return int(sample_rate // fps)


def padded_frame_count(num_frames: int, clip_length: int) -> int:
    """``num_frames`` rounded up to a whole number of clips (unchanged when ``clip_length <= 0``)."""
    if clip_length <= 0 or num_frames % clip_length == 0:
        return num_frames
    return num_frames + clip_length - num_frames % clip_length


def pad_to_whole_clips(values: torch.Tensor, fps: Number, clip_length: int,
                       sample_rate: int = SAMPLE_RATE) -> tuple[torch.Tensor, int, int]:
    """Pad a normalised waveform ``(samples,)`` for whole clips.

    Returns ``(padded (samples + pad,), T, T_unpadded)`` where ``T`` is the padded frame count and ``pad =
    (clip - T_unpadded % clip) * (sample_rate // fps)`` (zero when ``T_unpadded`` is already a multiple).
    """
    frames = frames_for_samples(values.shape[-1], fps, sample_rate)
    total = padded_frame_count(frames, clip_length)
    pad = (total - frames) * samples_per_padding_frame(fps, sample_rate)
    if pad > 0:
        values = F.pad(values, (0, pad))
    return values, total, frames


def resample_frames(features: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linear resampling along time with ``align_corners=True``: ``(B, N, C) -> (B, num_frames, C)``."""
    out = F.interpolate(features.transpose(1, 2), size=int(num_frames), mode="linear", align_corners=True)
    return out.transpose(1, 2)


def context_windows(hidden: torch.Tensor, radius: int = CONTEXT_RADIUS) -> torch.Tensor:
    """Stack each frame with its neighbours: ``(T, ...) -> (T, 2*radius + 1, ...)``.

    Window slot ``j`` of frame ``i`` is ``hidden[clamp(i + j - radius, 0, T - 1)]``.
    """
    t = hidden.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=hidden.device)
    index = (torch.arange(t, device=hidden.device)[:, None] + offsets[None, :]).clamp(0, max(t - 1, 0))
    return hidden[index]


def clip_slices(num_frames: int, clip_length: int) -> list[slice]:
    """Frame ranges ``[k*clip, (k+1)*clip)`` of the clips (the last one cut at ``num_frames``)."""
    return [slice(s, min(s + clip_length, num_frames)) for s in range(0, num_frames, clip_length)]


__all__ = [
    "CONTEXT_RADIUS", "NORM_EPS", "SAMPLE_RATE", "audio_to_16k_mono", "clip_slices",
    "context_windows", "frames_for_samples", "normalize_utterance", "pad_to_whole_clips", "padded_frame_count",
    "resample_frames", "samples_per_padding_frame",
]
