"""Optional vocal separation before wav2vec2 with the UVR MDX-Net ONNX model MEMO ships (``Kim_Vocal_2.onnx``).

The original runs ``audio_separator`` 0.24.1 (``Separator(output_single_stem="vocals")``, default MDX settings) on the
16 kHz file. This module re-implements that MDX path with onnxruntime and torch, without the package:

1. load at 44.1 kHz (the separator's ``sample_rate``), mono -> two identical channels;
2. peak-normalise the mix (``normalize``: scale down to a 0.9 peak, or up to a 0.6 peak when quieter);
3. ``demix``: trim = n_fft // 2 zeros in front, zeros behind to whole generation blocks; chunks of
   ``hop * (segment_size - 1)`` samples every ``(1 - overlap) * chunk`` samples; each chunk -> STFT (Hann, periodic,
   centred, ``n_fft``, ``hop``), channels ``[L.re, L.im, R.re, R.im]``, first ``dim_f`` bins, the 3 lowest bins
   zeroed -> the ONNX model -> zero-padded back to ``n_fft // 2 + 1`` bins -> inverse STFT; chunks are cross-faded
   with a symmetric Hann window (``np.hanning``) and divided by the window sum; trim; times ``compensate``;
4. peak-normalise the vocals again; the caller resamples them back (16 kHz) and mixes to mono.

Model parameters (``n_fft``, ``dim_f``, ``dim_t = 2 ** mdx_dim_t_set``, ``compensate``) come from the parameter table
``mdx_model_data.json`` shipped next to the model, looked up by the MD5 of the model file's last 10,000 KiB, exactly as
audio-separator does. Without that file a built-in entry for ``Kim_Vocal_2.onnx`` is used (n_fft 7680, dim_f 3072,
dim_t 256, compensate 1.009; values published in several UVR tables, see ``KNOWN_MODELS``).

Not reproduced bit-for-bit: the resamplers (librosa/soxr to 44.1 kHz and ffmpeg back to 16 kHz in the original, the
pack's windowed-sinc resampler here) and the 16-bit WAV round trip of the original's intermediate files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..media.audio import resample
from ..media.errors import PlainName

SEPARATOR_SAMPLE_RATE = 44100
HASH_TAIL_BYTES = 10000 * 1024
MAX_PEAK = 0.9      # audio-separator normalization_threshold
MIN_PEAK = 0.6      # audio-separator amplification_threshold


class VocalSeparationUnavailable(PlainName, RuntimeError):
    """Vocal separation was requested but cannot run (missing model file, parameters or onnxruntime)."""


@dataclass(frozen=True)
class MDXParams:
    """One MDX-Net model's STFT layout plus audio-separator's default MDX run settings."""

    n_fft: int
    dim_f: int
    dim_t: int                 # STFT frames per chunk = 2 ** mdx_dim_t_set
    compensate: float
    primary_stem: str = "Vocals"
    hop_length: int = 1024
    segment_size: int = 256
    overlap: float = 0.25
    sample_rate: int = SEPARATOR_SAMPLE_RATE

    @classmethod
    def from_model_data(cls, entry: dict, **settings) -> "MDXParams":
        """From an ``mdx_model_data.json`` entry (``mdx_n_fft_scale_set``, ``mdx_dim_f_set``, ``mdx_dim_t_set``,
        ``compensate``, ``primary_stem``)."""
        try:
            return cls(n_fft=int(entry["mdx_n_fft_scale_set"]), dim_f=int(entry["mdx_dim_f_set"]),
                       dim_t=2 ** int(entry["mdx_dim_t_set"]), compensate=float(entry["compensate"]),
                       primary_stem=str(entry.get("primary_stem", "Vocals")), **settings)
        except KeyError as e:
            raise VocalSeparationUnavailable(f"MDX parameter entry lacks {e.args[0]!r}: {entry}") from None

    @property
    def chunk_size(self) -> int:
        return self.hop_length * (self.segment_size - 1)

    @property
    def trim(self) -> int:
        return self.n_fft // 2

    @property
    def gen_size(self) -> int:
        return self.chunk_size - 2 * self.trim


# Used only when no mdx_model_data.json is available. Kim_Vocal_2's entry as published in UVR's model table
# (hash 970b3f9492014d18fefeedfe4773cb42 there) and in third-party MDX ports: n_fft 7680, dim_f 3072, dim_t 2^8,
# compensate 1.009, primary stem Vocals.
KNOWN_MODELS = {
    "kim_vocal_2.onnx": {"compensate": 1.009, "mdx_dim_f_set": 3072, "mdx_dim_t_set": 8,
                         "mdx_n_fft_scale_set": 7680, "primary_stem": "Vocals"},
}


def model_file_hash(path: str | Path) -> str:
    """MD5 of the last 10,000 KiB of a model file (of the whole file when smaller), audio-separator's model id."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - HASH_TAIL_BYTES))
        return hashlib.md5(f.read()).hexdigest()


def mdx_params_for(model_path: str | Path, model_data: Optional[str | Path | dict] = None, **settings) -> MDXParams:
    """The MDX parameters of ``model_path``: from ``model_data`` (``mdx_model_data.json``, default: next to the model)
    by file hash, else from :data:`KNOWN_MODELS` by file name; raises :class:`VocalSeparationUnavailable` otherwise."""
    model_path = Path(model_path)
    table = model_data
    if table is None:
        candidate = model_path.parent / "mdx_model_data.json"
        table = candidate if candidate.is_file() else None
    if table is not None and not isinstance(table, dict):
        table = json.loads(Path(table).read_text(encoding="utf-8"))
    if isinstance(table, dict) and "mdx_model_data" in table:   # audio-separator's combined model-data.json
        table = table["mdx_model_data"]
    if table:
        entry = table.get(model_file_hash(model_path))
        if entry is not None:
            return MDXParams.from_model_data(entry, **settings)
    entry = KNOWN_MODELS.get(model_path.name.lower())
    if entry is not None:
        return MDXParams.from_model_data(entry, **settings)
    raise VocalSeparationUnavailable(
        f"no MDX parameters for {model_path.name}: its hash is not in mdx_model_data.json"
        f"{'' if table else ' (file not found next to the model)'} and it is not a known model "
        f"({', '.join(sorted(KNOWN_MODELS))})")


# ---------------------------------------------------------------------------------------------------------------------
# spectrogram conversion (audio-separator's STFT class, re-derived)
# ---------------------------------------------------------------------------------------------------------------------
def mdx_spectrogram(wave: torch.Tensor, params: MDXParams) -> torch.Tensor:
    """``(B, 2, S) -> (B, 4, dim_f, frames)``: channels ``[L.re, L.im, R.re, R.im]``, lowest ``dim_f`` bins."""
    b, c, s = wave.shape
    window = torch.hann_window(params.n_fft, periodic=True, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave.reshape(b * c, s), n_fft=params.n_fft, hop_length=params.hop_length, window=window,
                      center=True, return_complex=True)
    spec = torch.view_as_real(spec).permute(0, 3, 1, 2)                 # (B*C, 2, F, T)
    spec = spec.reshape(b, c * 2, spec.shape[-2], spec.shape[-1])
    return spec[:, :, :params.dim_f]


def mdx_inverse_spectrogram(spec: torch.Tensor, params: MDXParams) -> torch.Tensor:
    """``(B, 4, dim_f, frames) -> (B, 2, hop * (frames - 1))``: zero bins above ``dim_f``, inverse STFT."""
    b, c4, f, t = spec.shape
    bins = params.n_fft // 2 + 1
    spec = torch.cat([spec, spec.new_zeros(b, c4, bins - f, t)], dim=2)
    spec = spec.reshape(b * c4 // 2, 2, bins, t).permute(0, 2, 3, 1).contiguous()
    window = torch.hann_window(params.n_fft, periodic=True, device=spec.device, dtype=spec.dtype)
    wave = torch.istft(torch.view_as_complex(spec), n_fft=params.n_fft, hop_length=params.hop_length, window=window,
                       center=True)
    return wave.reshape(b, 2, -1)


def peak_normalize(wave: np.ndarray, max_peak: float = MAX_PEAK, min_peak: Optional[float] = MIN_PEAK) -> np.ndarray:
    """Scale down to ``max_peak`` when louder, up to ``min_peak`` when quieter (silence is left alone)."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > max_peak:
        return wave * (max_peak / peak)
    if min_peak is not None and 0.0 < peak < min_peak:
        return wave * (min_peak / peak)
    return wave


SpecModel = Callable[[np.ndarray], np.ndarray]   # (1, 4, dim_f, dim_t) float32 -> same shape


def demix(mix: np.ndarray, params: MDXParams, run_model: SpecModel,
          check: Optional[Callable[[], None]] = None) -> np.ndarray:
    """The primary stem of a stereo mix ``(2, n)`` float32 at ``params.sample_rate``: ``(2, n)`` (compensated)."""
    n = mix.shape[-1]
    chunk, trim = params.chunk_size, params.trim
    gen = chunk - 2 * trim
    if gen <= 0:
        raise ValueError("MDX parameters give a non-positive generation size (segment_size too small for n_fft)")
    pad = gen + trim - n % gen
    mixture = np.concatenate([np.zeros((2, trim), np.float32), mix.astype(np.float32), np.zeros((2, pad), np.float32)],
                             axis=1)
    total = mixture.shape[-1]
    step = int((1 - params.overlap) * chunk)
    result = np.zeros((2, total), np.float32)
    divider = np.zeros((2, total), np.float32)
    for start in range(0, total, step):
        end = min(start + chunk, total)
        part = mixture[:, start:end]
        if end - start < chunk:
            part = np.concatenate([part, np.zeros((2, chunk - (end - start)), np.float32)], axis=1)
        spec = mdx_spectrogram(torch.from_numpy(np.ascontiguousarray(part))[None], params)
        spec[:, :, :3, :] = 0
        pred = np.asarray(run_model(spec.numpy()), dtype=np.float32)
        wave = mdx_inverse_spectrogram(torch.from_numpy(pred), params)[0].numpy()
        window = np.hanning(end - start).astype(np.float32) if params.overlap != 0 else None
        if window is not None:
            result[:, start:end] += wave[:, :end - start] * window
            divider[:, start:end] += window
        else:
            result[:, start:end] += wave[:, :end - start]
            divider[:, start:end] += 1
        if check is not None:
            check()
    with np.errstate(divide="ignore", invalid="ignore"):
        out = result / divider
    out = np.nan_to_num(out[:, trim:-trim][:, :n], nan=0.0, posinf=0.0, neginf=0.0)
    return out * params.compensate


# ---------------------------------------------------------------------------------------------------------------------
# the separator
# ---------------------------------------------------------------------------------------------------------------------
def onnx_spec_model(model_path: str | Path, device: Optional[torch.device] = None) -> SpecModel:
    """An onnxruntime session for an MDX-Net ONNX file as a ``spec -> spec`` callable (CUDA when ``device`` is)."""
    try:
        import onnxruntime  # noqa: F401  (named in the error below when missing)
    except ImportError as e:
        raise VocalSeparationUnavailable("vocal separation needs onnxruntime (pip install onnxruntime or "
                                         "onnxruntime-gpu)") from e
    from ..runtime.onnx import onnx_providers, shared_session

    # CUDA when ``device`` is a CUDA device and onnxruntime-gpu offers it (a missing provider is said once); None: CPU
    providers = onnx_providers(device if device is not None else "cpu", model=model_path)
    # one session per model file and settings, shared by every separator (see shared_session)
    session = shared_session(model_path, providers, log_severity_level=3)
    name = session.get_inputs()[0].name

    def run(spec: np.ndarray) -> np.ndarray:
        return session.run(None, {name: spec.astype(np.float32, copy=False)})[0]

    return run


class VocalSeparator:
    """MDX-Net vocal isolation: ``separator(waveform (C, S), sample_rate) -> vocals (S,) at sample_rate`` (mono).

    ``run_model`` replaces the ONNX session (tests, other runtimes). ``segment_size`` must equal the model's ``dim_t``
    for the ONNX path (audio-separator converts to torch otherwise).
    """

    def __init__(self, params: MDXParams, run_model: SpecModel, name: str = "MDX-Net"):
        if params.segment_size != params.dim_t:
            raise VocalSeparationUnavailable(f"segment_size {params.segment_size} must equal the model's dim_t "
                                             f"{params.dim_t} to run the ONNX model")
        self.params, self.run_model, self.name = params, run_model, name

    @classmethod
    def from_files(cls, model_path: str | Path, model_data: Optional[str | Path | dict] = None,
                   device: Optional[torch.device] = None, **settings) -> "VocalSeparator":
        model_path = Path(model_path)
        if not model_path.is_file():
            raise VocalSeparationUnavailable(f"vocal separation model not found: {model_path} (download the "
                                             "'vocal_separation' group: misc/vocal_separator/Kim_Vocal_2.onnx)")
        params = mdx_params_for(model_path, model_data, **settings)
        if params.primary_stem.lower() != "vocals":
            raise VocalSeparationUnavailable(f"{model_path.name} separates '{params.primary_stem}', not vocals")
        return cls(params, onnx_spec_model(model_path, device), name=model_path.stem)

    def __call__(self, waveform: torch.Tensor, sample_rate: int,
                 check: Optional[Callable[[], None]] = None) -> torch.Tensor:
        """``(C, S)`` or ``(S,)`` at ``sample_rate`` -> mono vocals ``(S,)`` at ``sample_rate`` (channel mean)."""
        wave = waveform.detach().to("cpu", torch.float32)
        if wave.ndim == 1:
            wave = wave[None]
        length = wave.shape[-1]
        sr = self.params.sample_rate
        x = resample(wave, sample_rate, sr).numpy()
        x = np.repeat(x[:1], 2, axis=0) if x.shape[0] == 1 else x[:2]
        x = peak_normalize(x)
        vocals = peak_normalize(demix(x, self.params, self.run_model, check))
        out = resample(torch.from_numpy(np.ascontiguousarray(vocals, dtype=np.float32)), sr, sample_rate)
        out = out.mean(dim=0)
        if out.shape[-1] >= length:
            return out[:length]
        return torch.nn.functional.pad(out, (0, length - out.shape[-1]))

    def with_settings(self, **settings) -> "VocalSeparator":
        return VocalSeparator(replace(self.params, **settings), self.run_model, self.name)


__all__ = [
    "KNOWN_MODELS", "MDXParams", "VocalSeparationUnavailable", "VocalSeparator", "demix", "mdx_inverse_spectrogram",
    "mdx_params_for", "mdx_spectrogram", "model_file_hash", "onnx_spec_model", "peak_normalize",
]
