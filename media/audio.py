"""Audio in ComfyUI's AUDIO layout: ``{"waveform": Tensor[B, C, T] float32, "sample_rate": int}``.

Decoding uses PyAV (imported lazily), so any container/codec FFmpeg reads works (wav, flac, mp3, ogg, m4a, the audio
track of an mp4 ...). Resampling is a band-limited windowed-sinc resampler written in torch (the same design as
``torchaudio.functional.resample``'s default: Hann window, 6 zero crossings, roll-off 0.99), because torchaudio is not
always installed next to ComfyUI.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional, Union

import numpy as np
import torch

from .errors import MediaError, check_exists

Audio = dict  # {"waveform": Tensor[B, C, T], "sample_rate": int}

FIT_MODES = ("trim_or_pad", "trim", "pad", "none")

# Above this many kernel taps the polyphase kernel is replaced by the equivalent gather form (rare, co-prime rates).
_MAX_POLYPHASE_TAPS = 1 << 20


# ---------------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------------
def as_fraction(fps: Union[int, float, Fraction, str]) -> Fraction:
    """An exact frame rate: 25 -> 25, 29.97 -> 2997/100, Fraction(30000, 1001) unchanged."""
    if isinstance(fps, Fraction):
        value = fps
    elif isinstance(fps, int):
        value = Fraction(fps)
    elif isinstance(fps, float):
        if not math.isfinite(fps):
            raise ValueError(f"fps must be a finite number, got {fps}")
        value = Fraction(repr(fps))  # the shortest decimal, not the binary expansion
    else:
        value = Fraction(fps)  # numbers.Rational (av's Fraction), str "30000/1001"
    if value <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return value


def make_audio(waveform: torch.Tensor, sample_rate: int) -> Audio:
    """Build an AUDIO dict, promoting [T] / [C, T] to [1, C, T]."""
    if waveform.ndim == 1:
        waveform = waveform[None, None]
    elif waveform.ndim == 2:
        waveform = waveform[None]
    if waveform.ndim != 3:
        raise ValueError(f"audio waveform must be [B, C, T], got shape {tuple(waveform.shape)}")
    return {"waveform": waveform, "sample_rate": int(sample_rate)}


def silent_audio(num_samples: int, sample_rate: int = 16000, channels: int = 1, batch: int = 1) -> Audio:
    """All-zero audio of ``num_samples`` samples."""
    return make_audio(torch.zeros(batch, channels, max(0, int(num_samples)), dtype=torch.float32), sample_rate)


def _check_audio(audio: Audio) -> tuple[torch.Tensor, int]:
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise TypeError("expected an AUDIO dict with 'waveform' [B, C, T] and 'sample_rate'")
    waveform = audio["waveform"]
    if not isinstance(waveform, torch.Tensor):
        waveform = torch.as_tensor(np.asarray(waveform))
    if waveform.ndim != 3:
        raise ValueError(f"AUDIO waveform must be [B, C, T], got shape {tuple(waveform.shape)}")
    sample_rate = int(audio["sample_rate"])
    if sample_rate <= 0:
        raise ValueError(f"AUDIO sample_rate must be positive, got {sample_rate}")
    return waveform, sample_rate


def audio_duration(audio: Audio) -> float:
    """Duration in seconds."""
    waveform, sr = _check_audio(audio)
    return waveform.shape[-1] / sr


def samples_for_frames(frames: int, fps, sample_rate: int) -> int:
    """``round(frames / fps * sample_rate)``, computed exactly (no float drift at 29.97 fps)."""
    return int(round(Fraction(int(frames)) / as_fraction(fps) * int(sample_rate)))


def audio_frame_count(audio: Audio, fps) -> int:
    """How many video frames at ``fps`` the audio covers: ``ceil(T / sample_rate * fps)`` (0 for empty audio).

    The ceiling forgives the half sample that :func:`samples_for_frames` may round away, so audio prepared for ``n``
    frames (``prepare_audio(..., frames=n)``) always counts as exactly ``n`` frames.
    """
    waveform, sr = _check_audio(audio)
    total = waveform.shape[-1]
    rate = as_fraction(fps)
    n = int(math.ceil(Fraction(total) * rate / sr))
    while n > 0 and samples_for_frames(n - 1, rate, sr) >= total:
        n -= 1
    return n


def peak_db(audio: Audio) -> float:
    """Peak level in dBFS (``-inf`` for digital silence or empty audio)."""
    waveform, _ = _check_audio(audio)
    if waveform.numel() == 0:
        return float("-inf")
    peak = float(waveform.detach().abs().max())
    return 20.0 * math.log10(peak) if peak > 0 else float("-inf")


def is_silent(audio: Audio, threshold_db: float = -60.0) -> bool:
    """True when the audio is empty or its peak stays below ``threshold_db`` dBFS."""
    return peak_db(audio) < threshold_db


# ---------------------------------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------------------------------
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int64): 9223372036854775808.0}


def _frame_to_float(frame) -> np.ndarray:
    """An av.AudioFrame as float32 [C, n] in -1..1, whatever its sample format (planar or packed)."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T  # packed: (1, n*C) interleaved -> (C, n)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    if arr.dtype in _INT_SCALE:
        return (arr.astype(np.float64) / _INT_SCALE[arr.dtype]).astype(np.float32)
    return arr.astype(np.float32, copy=False)


def decode_audio_stream(container, stream, path: str) -> tuple[np.ndarray, int, float]:
    """Decode one audio stream of an open container: (float32 [C, T], sample_rate, start time in seconds)."""
    import av

    chunks: list[np.ndarray] = []
    sample_rate = channels = None
    start = None
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                data = _frame_to_float(frame)
                if sample_rate is None:
                    sample_rate, channels = int(frame.sample_rate), data.shape[0]
                    if frame.pts is not None and frame.time_base is not None:
                        start = float(frame.pts * frame.time_base)
                elif int(frame.sample_rate) != sample_rate or data.shape[0] != channels:
                    raise MediaError(f"audio in '{path}' changes sample rate or channel count mid-stream "
                                     f"({sample_rate} Hz x{channels} -> {frame.sample_rate} Hz x{data.shape[0]}); "
                                     "convert it to a plain wav first")
                chunks.append(data)
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot decode audio from '{path}': corrupt or not an audio file ({e})") from e
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise MediaError(f"'{path}' has an audio stream but no decodable audio samples")
    if start is None:
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    return np.concatenate(chunks, axis=1), sample_rate, start


def _open(path: str, what: str):
    import av

    try:
        return av.open(path, mode="r")
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot open '{path}': corrupt or not {what} file ({e})") from e


def load_audio(path) -> Audio:
    """Decode the first audio stream of any file PyAV/FFmpeg reads into AUDIO ``[1, C, T]`` float32 (channels kept).

    Raises ``FileNotFoundError`` for a missing file and :class:`MediaError` (naming the file) for a file that is
    corrupt, is not a media file, or holds no audio stream.
    """
    path = check_exists(path, "audio")
    container = _open(path, "an audio")
    try:
        if not container.streams.audio:
            raise MediaError(f"'{path}' contains no audio stream (corrupt or not an audio file)")
        data, sr, _ = decode_audio_stream(container, container.streams.audio[0], path)
    finally:
        container.close()
    return make_audio(torch.from_numpy(np.ascontiguousarray(data)), sr)


# ---------------------------------------------------------------------------------------------------------------------
# channel mixing
# ---------------------------------------------------------------------------------------------------------------------
def to_mono(audio: Union[Audio, torch.Tensor]) -> Union[Audio, torch.Tensor]:
    """Average the channels: AUDIO -> AUDIO with C=1, or a [..., C, T] tensor -> [..., 1, T]."""
    if isinstance(audio, dict):
        waveform, sr = _check_audio(audio)
        return make_audio(to_mono(waveform), sr)
    if audio.ndim < 2:
        return audio
    if audio.shape[-2] == 1:
        return audio
    return audio.mean(dim=-2, keepdim=True)


def to_channels(waveform: torch.Tensor, channels: int) -> torch.Tensor:
    """[..., C, T] -> [..., channels, T]: mono is repeated, extra channels are averaged down."""
    c = waveform.shape[-2]
    if c == channels:
        return waveform
    if channels == 1:
        return waveform.mean(dim=-2, keepdim=True)
    if c == 1:
        return waveform.expand(*waveform.shape[:-2], channels, waveform.shape[-1]).contiguous()
    mono = waveform.mean(dim=-2, keepdim=True)
    return mono.expand(*waveform.shape[:-2], channels, waveform.shape[-1]).contiguous()


# ---------------------------------------------------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------------------------------------------------
def _reduce(orig_sr: int, new_sr: int) -> tuple[int, int]:
    g = math.gcd(int(orig_sr), int(new_sr))
    return int(orig_sr) // g, int(new_sr) // g


def _sinc_taps(t: torch.Tensor, lowpass_filter_width: int, scale: float) -> torch.Tensor:
    """Hann-windowed sinc of ``t`` (in zero crossings, i.e. already multiplied by the cutoff), times ``scale``."""
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * (math.pi / (2 * lowpass_filter_width))) ** 2
    x = t * math.pi
    safe = torch.where(x == 0, torch.ones_like(x), x)
    sinc = torch.where(x == 0, torch.ones_like(x), torch.sin(safe) / safe)
    return sinc * window * scale


def sinc_resample_kernel(orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99,
                         dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, int]:
    """Polyphase kernel for reduced rates ``orig -> new``: a [new, 1, 2*width + orig] tensor and ``width``.

    Row ``i`` produces output phase ``i`` (output sample ``k*new + i``) from input samples
    ``k*orig - width .. k*orig + width + orig - 1``. The cutoff is ``rolloff`` times the lower Nyquist frequency.
    """
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    offsets = torch.arange(-width, width + orig, dtype=torch.float64) / orig           # input sample times
    phases = torch.arange(new, dtype=torch.float64)[:, None] / new                    # output sample times
    t = (offsets[None, :] - phases) * base
    kernel = _sinc_taps(t, lowpass_filter_width, base / orig)
    return kernel[:, None, :].to(dtype), width


def _resample_polyphase(x: torch.Tensor, orig: int, new: int, lowpass_filter_width: int, rolloff: float,
                        out_len: int) -> torch.Tensor:
    kernel, width = sinc_resample_kernel(orig, new, lowpass_filter_width, rolloff, dtype=x.dtype)
    kernel = kernel.to(x.device)
    padded = torch.nn.functional.pad(x[:, None, :], (width, width + orig))
    y = torch.nn.functional.conv1d(padded, kernel, stride=orig)       # [N, new, blocks]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)                      # interleave the phases
    return y[:, :out_len]


def _resample_gather(x: torch.Tensor, orig: int, new: int, lowpass_filter_width: int, rolloff: float,
                     out_len: int, chunk_elems: int = 1 << 22) -> torch.Tensor:
    """The same filter evaluated per output sample (bounded memory for co-prime rates with huge kernels)."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (width, width + 2))
    d = torch.arange(-width, width + 2, dtype=torch.int64, device=x.device)          # tap offsets
    out = x.new_empty(n, out_len)
    step = max(1, chunk_elems // (len(d) * max(1, n)))
    for s in range(0, out_len, step):
        j = torch.arange(s, min(out_len, s + step), dtype=torch.int64, device=x.device)
        q = (j * orig) // new                         # input sample at or before output j
        r = (j * orig) % new                          # phase remainder
        t = (d[None, :].to(torch.float64) - (r.to(torch.float64) / new)[:, None]) / orig * base
        w = _sinc_taps(t, lowpass_filter_width, base / orig).to(x.dtype)          # [J, taps]
        idx = q[:, None] + d[None, :] + width                                      # into padded
        out[:, s:s + len(j)] = (padded[:, idx] * w[None]).sum(-1)
    return out


def resample(waveform: torch.Tensor, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling of ``waveform[..., T]`` from ``orig_sr`` to ``new_sr`` Hz.

    Output length is ``ceil(T * new_sr / orig_sr)``. Float inputs keep their dtype (others become float32).
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if lowpass_filter_width <= 0:
        raise ValueError("lowpass_filter_width must be positive")
    if not waveform.is_floating_point():
        waveform = waveform.float()
    if orig_sr == new_sr:
        return waveform
    orig, new = _reduce(orig_sr, new_sr)
    shape = waveform.shape
    length = shape[-1]
    out_len = -(-new * length // orig)  # ceil
    x = waveform.reshape(-1, length)
    if x.shape[0] == 0 or length == 0:
        return waveform.new_zeros(*shape[:-1], out_len)
    if new * (2 * math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff)) + orig) <= _MAX_POLYPHASE_TAPS:
        y = _resample_polyphase(x, orig, new, lowpass_filter_width, rolloff, out_len)
    else:
        y = _resample_gather(x, orig, new, lowpass_filter_width, rolloff, out_len)
    return y.reshape(*shape[:-1], out_len)


# ---------------------------------------------------------------------------------------------------------------------
# length fitting and the all-in-one preparation
# ---------------------------------------------------------------------------------------------------------------------
def fit_length(waveform: torch.Tensor, length: int, mode: str = "trim_or_pad") -> torch.Tensor:
    """Trim and/or zero-pad ``waveform[..., T]`` at the end to ``length`` samples.

    ``mode``: "trim_or_pad" (exactly ``length``), "trim" (only shorten), "pad" (only lengthen), "none".
    """
    if mode not in FIT_MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(FIT_MODES)}")
    length = max(0, int(length))
    cur = waveform.shape[-1]
    if mode in ("trim_or_pad", "trim") and cur > length:
        waveform = waveform[..., :length]
    elif mode in ("trim_or_pad", "pad") and cur < length:
        waveform = torch.nn.functional.pad(waveform, (0, length - cur))
    return waveform


def prepare_audio(audio: Audio, sample_rate: Optional[int] = 16000, mono: bool = True, frames: Optional[int] = None,
                  fps=None, mode: str = "trim_or_pad") -> Audio:
    """Resample (``sample_rate=None`` keeps the rate), optionally downmix, and fit the length to a frame count.

    With ``frames`` and ``fps`` the result has exactly ``round(frames / fps * sample_rate)`` samples in
    "trim_or_pad" mode (zero padding at the end). Works on any batch size; returns a new float32 AUDIO dict.
    """
    waveform, sr = _check_audio(audio)
    waveform = waveform.detach().to("cpu", torch.float32)
    if mono:
        waveform = to_mono(waveform)
    target_sr = sr if sample_rate in (None, 0) else int(sample_rate)
    waveform = resample(waveform, sr, target_sr)
    if frames is not None:
        if fps is None:
            raise ValueError("prepare_audio: fps is required together with frames")
        if int(frames) < 0:
            raise ValueError(f"frames must be >= 0, got {frames}")
        waveform = fit_length(waveform, samples_for_frames(frames, fps, target_sr), mode)
    elif mode not in FIT_MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(FIT_MODES)}")
    return make_audio(waveform.contiguous(), target_sr)


__all__ = [
    "Audio", "FIT_MODES", "as_fraction", "audio_duration", "audio_frame_count", "decode_audio_stream", "fit_length",
    "is_silent", "load_audio", "make_audio", "peak_db", "prepare_audio", "resample", "samples_for_frames",
    "silent_audio", "sinc_resample_kernel", "to_channels", "to_mono",
]
