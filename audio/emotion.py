"""MEMO's emotion labels: the 9 classes, the official window schedule, per-clip labels and manual overrides.

Classes (emotion2vec+ order, index 9 = the null/unconditional class used by classifier-free guidance)::

    0 angry  1 disgusted  2 fearful  3 happy  4 neutral  5 other  6 sad  7 surprised  8 unknown   (9 = null)

The names and their order are those of emotion2vec+'s ``tokens.txt`` / model card; that MEMO's classifier was trained
with the same order is stated by the spec (and consistent with MEMO issue #32, "disgusted = 1"), not by MEMO's code.

Schedule (``extract_audio_emotion_labels`` of the original, 16 kHz, sample rate ``sr``, ``n`` samples):

* windows, in visiting order: ``[0, 2 sr)``; then for ``i = sr, 2 sr, ...`` while ``i < n - sr`` the 3-second window
  ``[i - sr, i + 2 sr)``; finally the last two seconds ``[n - 2 sr, n)`` (all cut to the signal);
* per-sample labels: ``[0, sr)`` <- first window; ``[i, i + sr)`` <- the window of slot ``i``; the last second
  ``[n - sr, n)`` <- the last window, written last (it overwrites the end of the last slot);
* per-frame labels: nearest-neighbour resampling of the per-sample labels to the (padded) frame count ``T`` with
  ``torch.nn.functional.interpolate(mode="nearest")`` (frame ``f`` <- sample ``floor(f * n / T)``);
* per-clip label: the most frequent frame label of the clip, ties resolved to the smallest label.

Each window is standardised over its samples (a LayerNorm over the whole segment), encoded by emotion2vec+ (frame
features, mean-pooled over time) and classified by MEMO's 9-way MLP; the window label is the argmax.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

EMOTION_NAMES = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")
NUM_EMOTIONS = len(EMOTION_NAMES)
NULL_EMOTION = NUM_EMOTIONS          # 9: the unconditional class of the diffusion net's emotion embedding
NEUTRAL = EMOTION_NAMES.index("neutral")
AUTO = "auto"
EMOTION_CHOICES = (AUTO,) + EMOTION_NAMES
SAMPLE_RATE = 16000


def emotion_index(emotion: Union[str, int]) -> int:
    """Class index of an emotion given by name (case-insensitive) or index 0..8."""
    if isinstance(emotion, bool):
        raise TypeError("emotion must be a name or an index")
    if isinstance(emotion, int):
        if 0 <= emotion < NUM_EMOTIONS:
            return emotion
        raise ValueError(f"emotion index must be 0..{NUM_EMOTIONS - 1}, got {emotion}")
    key = str(emotion).strip().lower()
    if key not in EMOTION_NAMES:
        raise ValueError(f"unknown emotion {emotion!r}: use 'auto' or one of {', '.join(EMOTION_NAMES)}")
    return EMOTION_NAMES.index(key)


def emotion_name(index: int) -> str:
    """Name of class ``index`` (``"null"`` for the unconditional class 9)."""
    return "null" if int(index) == NULL_EMOTION else EMOTION_NAMES[int(index)]


# ---------------------------------------------------------------------------------------------------------------------
# the window schedule
# ---------------------------------------------------------------------------------------------------------------------
def emotion_windows(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """``[start, end)`` sample ranges of the classified windows, in the original's visiting order."""
    n, sr = int(num_samples), int(sample_rate)
    if n <= 0:
        return []
    windows = [(0, min(2 * sr, n))]
    for i in range(sr, n - sr, sr):
        windows.append((i - sr, min(i + 2 * sr, n)))
    windows.append((max(0, n - 2 * sr), n))
    return windows


def window_slots(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """``[start, end)`` sample ranges each window labels (same order as :func:`emotion_windows`, applied in order)."""
    n, sr = int(num_samples), int(sample_rate)
    if n <= 0:
        return []
    slots = [(0, min(sr, n))]
    for i in range(sr, n - sr, sr):
        slots.append((i, min(i + sr, n)))
    slots.append((max(0, n - sr), n))
    return slots


def sample_labels(window_labels: Sequence[int], num_samples: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Per-sample labels ``(num_samples,)`` int32 from the window labels (later windows overwrite earlier ones)."""
    slots = window_slots(num_samples, sample_rate)
    if len(window_labels) != len(slots):
        raise ValueError(f"{len(window_labels)} window labels for {len(slots)} windows")
    labels = torch.full((int(num_samples),), -1, dtype=torch.int32)
    for (start, end), label in zip(slots, window_labels):
        labels[start:end] = int(label)
    return labels


def frame_labels_from_samples(labels: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Nearest-neighbour resampling ``(num_samples,) -> (num_frames,)`` int32, exactly as torch's ``interpolate``."""
    x = labels.to(torch.float32)[None, None]
    return F.interpolate(x, size=int(num_frames), mode="nearest")[0, 0].to(torch.int32)


def mode_smallest(values: torch.Tensor) -> int:
    """Most frequent value of a non-negative integer tensor, ties resolved to the smallest value."""
    counts = torch.bincount(values.reshape(-1).to(torch.int64))
    return int(torch.argmax(counts))  # argmax returns the first (smallest) of equal maxima


def clip_labels_from_frames(frame_labels: torch.Tensor, clip_length: int) -> torch.Tensor:
    """One label per clip of ``clip_length`` frames: ``(T,) -> (ceil(T / clip),)`` int64."""
    t = frame_labels.shape[0]
    return torch.tensor([mode_smallest(frame_labels[s:s + clip_length]) for s in range(0, t, clip_length)],
                        dtype=torch.int64)


@dataclass
class EmotionSchedule:
    """The labelling of one utterance. ``window_bounds (n, 2)`` int64, ``window_labels (n,)`` int64,
    ``frame_labels (T,)`` int32, ``clip_labels (num_clips,)`` int64."""

    window_bounds: torch.Tensor
    window_labels: torch.Tensor
    frame_labels: torch.Tensor
    clip_labels: torch.Tensor


def schedule_from_window_labels(window_labels: Sequence[int], num_samples: int, num_frames: int, clip_length: int,
                                sample_rate: int = SAMPLE_RATE) -> EmotionSchedule:
    """Window labels (visiting order) -> per-frame and per-clip labels."""
    bounds = torch.tensor(emotion_windows(num_samples, sample_rate), dtype=torch.int64).reshape(-1, 2)
    per_sample = sample_labels(window_labels, num_samples, sample_rate)
    frames = frame_labels_from_samples(per_sample, num_frames)
    return EmotionSchedule(bounds, torch.as_tensor(list(window_labels), dtype=torch.int64), frames,
                           clip_labels_from_frames(frames, clip_length))


def schedule_from_probs(window_probs: torch.Tensor, num_samples: int, num_frames: int, clip_length: int,
                        sample_rate: int = SAMPLE_RATE) -> EmotionSchedule:
    """Classifier outputs ``(n_windows, 9)`` (probabilities or logits; only the argmax matters) -> schedule."""
    return schedule_from_window_labels(window_probs.argmax(dim=-1).tolist(), num_samples, num_frames, clip_length,
                                       sample_rate)


# ---------------------------------------------------------------------------------------------------------------------
# classifying the windows
# ---------------------------------------------------------------------------------------------------------------------
def standardize_segment(segment: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the whole segment (no affine, eps 1e-5): ``(S,) -> (S,)``."""
    return F.layer_norm(segment, segment.shape)


@torch.no_grad()
def classify_windows(waveform: torch.Tensor, utterance_features: Callable[[torch.Tensor], torch.Tensor],
                     classifier: Callable[[torch.Tensor], torch.Tensor], sample_rate: int = SAMPLE_RATE,
                     min_samples: int = 0, check: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Classifier outputs of every scheduled window: ``(num_samples,) -> (n_windows, 9)``.

    ``utterance_features(x (1, S)) -> (1, 1024)`` is the mean-pooled emotion2vec+ feature of a standardised segment;
    ``classifier((1, 1024)) -> (1, 9)``. Segments shorter than ``min_samples`` (the feature extractor's receptive
    field; only for audio shorter than that) are zero-padded after standardisation. ``check`` is called between windows
    (cancellation point).
    """
    outs = []
    for start, end in emotion_windows(waveform.shape[-1], sample_rate):
        x = standardize_segment(waveform[start:end].to(torch.float32))
        if x.shape[-1] < min_samples:
            x = F.pad(x, (0, min_samples - x.shape[-1]))
        probs = classifier(utterance_features(x[None]))
        outs.append(probs.reshape(1, -1).float().cpu())
        if check is not None:
            check()
    return torch.cat(outs, dim=0) if outs else torch.zeros(0, NUM_EMOTIONS)


# ---------------------------------------------------------------------------------------------------------------------
# overrides and fallbacks
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ClipEmotions:
    """Final per-clip labels and where each came from (``"auto"``, ``"override"`` or ``"fallback"``)."""

    labels: list[int]
    sources: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [emotion_name(i) for i in self.labels]


def resolve_clip_emotions(num_clips: int, emotion: Union[str, int] = AUTO,
                          auto_labels: Optional[Sequence[int]] = None,
                          fallback: Union[str, int] = "neutral") -> ClipEmotions:
    """Per-clip labels: a manual emotion sets every clip; ``"auto"`` uses ``auto_labels`` when given, otherwise every
    clip gets ``fallback`` (reported in ``notes``)."""
    if isinstance(emotion, str) and emotion.strip().lower() == AUTO:
        if auto_labels is not None:
            labels = [int(v) for v in auto_labels]
            if len(labels) != num_clips:
                raise ValueError(f"{len(labels)} automatic labels for {num_clips} clips")
            return ClipEmotions(labels, ["auto"] * num_clips)
        idx = emotion_index(fallback)
        return ClipEmotions([idx] * num_clips, ["fallback"] * num_clips,
                            [f"emotion 'auto' without an emotion model: every clip uses the default "
                             f"'{EMOTION_NAMES[idx]}' (load emotion2vec+ and the emotion classifier, or pick an "
                             f"emotion manually)"])
    idx = emotion_index(emotion)
    return ClipEmotions([idx] * num_clips, ["override"] * num_clips)


__all__ = [
    "AUTO", "ClipEmotions", "EMOTION_CHOICES", "EMOTION_NAMES", "EmotionSchedule", "NEUTRAL", "NULL_EMOTION",
    "NUM_EMOTIONS", "classify_windows", "clip_labels_from_frames", "emotion_index", "emotion_name", "emotion_windows",
    "frame_labels_from_samples", "mode_smallest", "resolve_clip_emotions", "sample_labels", "schedule_from_probs",
    "schedule_from_window_labels", "standardize_segment", "window_slots",
]
