"""MEMO's audio conditioning in one call: AUDIO -> per-frame wav2vec2 windows + one emotion label per clip.

:func:`condition_audio` is meant to run in its own ComfyUI node (so changing sampler settings does not re-encode the
audio); its result :class:`AudioConditions` holds only CPU tensors and plain values.

Pipeline (as the original ``inference.py``, with the input given as an AUDIO dict instead of a file):

* the first item of the AUDIO batch is resampled to 16 kHz (channels kept);
* optional vocal separation (MDX-Net, off by default) of that 16 kHz audio;
* wav2vec2 path on the mono mix (channel mean) of the (separated) audio: see :mod:`.wav2vec` / :mod:`.features`;
* emotion path on the first channel of the 16 kHz full mix (never the separated vocals): windows classified by
  emotion2vec+ features and MEMO's classifier, per-clip mode (see :mod:`.emotion`); or a manual emotion for every
  clip; or, when ``emotion="auto"`` but no emotion model was given, the reported default ``neutral``;
* the 16 kHz mono mix, zero-padded to exactly the padded frame count, is returned for the output video.

Robustness: silent audio is reported and still encoded (it yields silence features); audio shorter than one frame
gives one clip; an empty waveform is treated as one sample of silence; any sample rate and channel count is accepted.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Optional, Union

import torch

from ..media.audio import Audio, fit_length, is_silent, make_audio, prepare_audio, samples_for_frames
from ..runtime.base import ModelHandle, Runtime
from . import emotion as emo
from . import features as feat
from .wav2vec import Wav2Vec2Encoder, wav2vec_frame_features

DEFAULT_FPS = 30
DEFAULT_CLIP_LENGTH = 16


@dataclass
class AudioConditions:
    """Everything the MEMO sampler needs from the audio, on the CPU.

    ``audio_emb (T, 5, L, H)`` float32: wav2vec2 layer outputs of frames ``i-2..i+2`` for every frame (``T`` is padded
    to whole clips; MEMO's released audio_proj expects ``L = 12``, ``H = 768``). ``clip_emotions[k]`` is the emotion
    class of clip ``k`` and ``emotion_sources[k]`` says where it came from (``"auto"``, ``"override"``,
    ``"fallback"``). ``audio`` is the 16 kHz mono mix with exactly ``T / fps`` seconds of samples (zero-padded), i.e.
    aligned to the generated frames; ``frames_with_audio`` is the unpadded frame count, to trim the video to the
    speech if wanted.
    """

    audio_emb: torch.Tensor
    num_frames: int
    frames_with_audio: int
    clip_length: int
    fps: float
    clip_emotions: list[int]
    emotion_sources: list[str]
    audio: Audio
    frame_emotions: Optional[torch.Tensor] = None     # (T,) int32, automatic labels only
    window_probs: Optional[torch.Tensor] = None       # (n_windows, 9) classifier outputs, automatic labels only
    vocals_separated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def num_clips(self) -> int:
        return self.num_frames // self.clip_length

    @property
    def emotion_names(self) -> list[str]:
        return [emo.emotion_name(i) for i in self.clip_emotions]

    @property
    def overridden(self) -> bool:
        return any(s == "override" for s in self.emotion_sources)

    @property
    def used_fallback(self) -> bool:
        return any(s == "fallback" for s in self.emotion_sources)

    def clip_frames(self, k: int) -> slice:
        return slice(k * self.clip_length, (k + 1) * self.clip_length)

    def clip_audio_emb(self, k: int) -> torch.Tensor:
        """``(clip_length, 5, L, H)`` windows of clip ``k``."""
        return self.audio_emb[self.clip_frames(k)]

    def clip_emotion(self, k: int) -> int:
        return self.clip_emotions[k]

    def summary(self) -> str:
        """One-paragraph human-readable report (frames, clips, emotions and notes)."""
        runs: list[str] = []
        for name, source in zip(self.emotion_names, self.emotion_sources):
            item = f"{name}" + ("" if source == "auto" else f" ({source})")
            if runs and runs[-1].split(" x")[0] == item:
                head, _, count = runs[-1].rpartition(" x")
                runs[-1] = f"{head} x{int(count) + 1}"
            else:
                runs.append(f"{item} x1")
        text = (f"{self.num_frames} frames at {self.fps:g} fps ({self.frames_with_audio} with audio), "
                f"{self.num_clips} clips of {self.clip_length}; emotions: {', '.join(runs)}"
                + ("; vocals separated" if self.vocals_separated else ""))
        return text + "".join(f"\n- {n}" for n in self.notes)


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def _fps_value(fps) -> Union[int, float]:
    if isinstance(fps, bool) or fps is None:
        raise TypeError("fps must be a positive number")
    value = float(Fraction(fps)) if isinstance(fps, (Fraction, str)) else fps
    if not value > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return int(value) if float(value).is_integer() else float(value)


def _resolve(model: Any, runtime: Optional[Runtime]) -> tuple[Any, Optional[torch.device]]:
    """The callable module of ``model`` (a module, a :class:`ModelHandle` or any callable) and the device to feed."""
    if isinstance(model, ModelHandle):
        if runtime is not None:
            runtime.load([model])
        model = model.module
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return model, p.device
        return model, torch.device("cpu")
    return model, None


def audio_fingerprint(audio: Audio, *settings) -> str:
    """A stable hash of an AUDIO dict's samples and rate plus any settings (for caching the conditioning)."""
    wave = audio["waveform"].detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256()
    h.update(str((tuple(wave.shape), int(audio["sample_rate"])) + tuple(settings)).encode())
    h.update(wave.numpy().tobytes())
    return h.hexdigest()


def _emotion_labels(wave: torch.Tensor, num_frames: int, clip_length: int, emotion2vec: Any, classifier: Any,
                    runtime: Optional[Runtime]) -> tuple[emo.EmotionSchedule, torch.Tensor]:
    # used together: one load for both (a second load could evict the first under a tight memory budget)
    together = [m for m in (emotion2vec, classifier) if isinstance(m, ModelHandle)]
    if runtime is not None and together:
        runtime.load(together)
    e2v, e2v_device = _resolve(emotion2vec, None)
    clf, clf_device = _resolve(classifier, None)
    extract = getattr(e2v, "utterance_features", None) or (lambda x: e2v(x).mean(dim=1))
    min_samples = int(getattr(e2v, "receptive_field", 0))
    e2v_dtype = next(e2v.parameters()).dtype if isinstance(e2v, torch.nn.Module) else torch.float32
    clf_dtype = next(clf.parameters()).dtype if isinstance(clf, torch.nn.Module) else torch.float32

    def features(x: torch.Tensor) -> torch.Tensor:
        return extract(x.to(e2v_device or "cpu", e2v_dtype))

    def classify(f: torch.Tensor) -> torch.Tensor:
        return clf(f.to(clf_device or f.device, clf_dtype))

    check = runtime.check_interrupted if runtime is not None else None
    probs = emo.classify_windows(wave, features, classify, min_samples=min_samples, check=check)
    sched = emo.schedule_from_probs(probs, wave.shape[-1], num_frames, clip_length)
    return sched, probs


# ---------------------------------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def condition_audio(audio: Audio, fps=DEFAULT_FPS, clip_length: int = DEFAULT_CLIP_LENGTH,
                    wav2vec: Union[Wav2Vec2Encoder, ModelHandle, None] = None,
                    emotion2vec: Any = None, emotion_classifier: Any = None,
                    separator: Optional[Callable[..., torch.Tensor]] = None,
                    emotion: Union[str, int] = emo.AUTO, separate_vocals: bool = False,
                    runtime: Optional[Runtime] = None) -> AudioConditions:
    """Turn an AUDIO dict into MEMO's audio conditions.

    ``wav2vec``: the loaded encoder (:func:`.wav2vec.load_wav2vec2`), required. ``emotion2vec`` (e.g.
    :func:`.emotion2vec.load_emotion2vec`) and ``emotion_classifier`` (features ``(1, 1024)`` -> ``(1, 9)``) are needed
    for ``emotion="auto"``; without them every clip gets ``neutral`` and a note says so. ``emotion`` may also be one
    of :data:`.emotion.EMOTION_NAMES` (or its index), which sets every clip. ``separator`` (a
    :class:`.separation.VocalSeparator`) is used only when ``separate_vocals`` is true. Models may be modules or
    runtime :class:`ModelHandle` s (made resident through ``runtime``).
    """
    if wav2vec is None:
        raise ValueError("condition_audio needs the wav2vec2 encoder (load it with audio.wav2vec.load_wav2vec2)")
    if int(clip_length) < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")
    clip_length = int(clip_length)
    fps = _fps_value(fps)
    notes: list[str] = []
    want_auto = isinstance(emotion, str) and emotion.strip().lower() == emo.AUTO
    if not want_auto:
        emo.emotion_index(emotion)  # validate before any heavy work

    waveform = audio["waveform"] if isinstance(audio, dict) else None
    if waveform is None or waveform.ndim != 3:
        raise TypeError("expected an AUDIO dict with 'waveform' [B, C, T] and 'sample_rate'")
    if waveform.shape[0] > 1:
        notes.append(f"the AUDIO batch holds {waveform.shape[0]} items: only the first is used")
    item = {"waveform": waveform[:1], "sample_rate": int(audio["sample_rate"])}
    if item["waveform"].shape[1] == 0:
        raise ValueError("the AUDIO waveform has no channels")
    if item["waveform"].shape[-1] == 0:
        notes.append("the audio is empty: treated as one sample of silence")
        item = make_audio(torch.zeros(1, 1, 1), item["sample_rate"])
    silent = is_silent(item)
    if silent:
        notes.append("the audio is silent (peak below -60 dBFS): the generated face will barely move")

    multi = prepare_audio(item, sample_rate=feat.SAMPLE_RATE, mono=False)["waveform"][0]   # (C, S) at 16 kHz
    mix = multi.mean(dim=0)                                                                 # (S,) mono mix
    first_channel = multi[0]

    # ---- vocal separation (optional) -----------------------------------------------------------------------------
    speech = mix
    separated = False
    if separate_vocals:
        if separator is None:
            from .separation import VocalSeparationUnavailable

            raise VocalSeparationUnavailable("separate_vocals is on but no vocal separator was given (load "
                                             "misc/vocal_separator/Kim_Vocal_2.onnx, group 'vocal_separation')")
        if silent:
            notes.append("vocal separation skipped: the audio is silent")
        else:
            kwargs = {}
            if runtime is not None and "check" in inspect.signature(separator).parameters:
                kwargs["check"] = runtime.check_interrupted
            speech = separator(multi, feat.SAMPLE_RATE, **kwargs)
            speech = speech.reshape(-1)[:mix.shape[-1]]
            separated = True

    # ---- wav2vec2 features ---------------------------------------------------------------------------------------
    encoder, device = _resolve(wav2vec, runtime)
    r = wav2vec_frame_features(encoder, speech, fps, clip_length, device=device)
    notes.extend(r.notes)
    if mix.shape[-1] < feat.SAMPLE_RATE / fps:
        notes.append(f"the audio is shorter than one frame ({1000 * mix.shape[-1] / feat.SAMPLE_RATE:.1f} ms): "
                     f"it is padded with silence to one clip of {clip_length} frames")
    num_frames = r.num_frames
    num_clips = num_frames // clip_length
    if runtime is not None:
        runtime.check_interrupted()

    # ---- emotion labels ------------------------------------------------------------------------------------------
    frame_emotions = window_probs = None
    auto_labels = None
    if want_auto and emotion2vec is not None and emotion_classifier is not None:
        sched, window_probs = _emotion_labels(first_channel, num_frames, clip_length, emotion2vec,
                                              emotion_classifier, runtime)
        frame_emotions = sched.frame_labels
        auto_labels = sched.clip_labels.tolist()
    elif want_auto and (emotion2vec is not None or emotion_classifier is not None):
        missing = "emotion classifier" if emotion2vec is not None else "emotion2vec+ model"
        notes.append(f"emotion 'auto' needs both emotion2vec+ and the emotion classifier; the {missing} is missing")
    clips = emo.resolve_clip_emotions(num_clips, emotion, auto_labels)
    notes.extend(clips.notes)

    # ---- the waveform aligned to the frames ----------------------------------------------------------------------
    aligned = fit_length(mix[None, None], samples_for_frames(num_frames, fps, feat.SAMPLE_RATE))
    return AudioConditions(
        audio_emb=r.audio_emb.contiguous(),
        num_frames=num_frames,
        frames_with_audio=max(1, r.frames_before_padding),
        clip_length=clip_length,
        fps=float(fps),
        clip_emotions=clips.labels,
        emotion_sources=clips.sources,
        audio=make_audio(aligned.contiguous(), feat.SAMPLE_RATE),
        frame_emotions=frame_emotions,
        window_probs=window_probs,
        vocals_separated=separated,
        notes=notes,
    )


__all__ = ["AudioConditions", "DEFAULT_CLIP_LENGTH", "DEFAULT_FPS", "audio_fingerprint", "condition_audio"]
