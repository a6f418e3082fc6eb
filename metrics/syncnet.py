"""Lip-sync confidence with SyncNet (Chung & Zisserman 2016): the "LSE-C / LSE-D" numbers of talking-head papers.

SyncNet embeds 0.2 s of mouth video and the matching 0.2 s of speech into one space where in-sync pairs lie close.
The evaluation (as in joonson/syncnet_python, whose released ``syncnet_v2.model`` this module loads):

* video: face crops at 25 fps, 224 x 224, BGR, 0..255; one window = 5 consecutive frames ``[3, 5, 224, 224]``;
* audio: 16 kHz mono, 13 MFCCs every 10 ms (python_speech_features' defaults, on 16-bit sample values); one window =
  20 MFCC frames ``[1, 13, 20]`` starting at 4x the video frame index (4 MFCC frames per video frame);
* for every video window ``i`` the distance to the audio windows ``i - 15 .. i + 15`` (zero embeddings past the
  ends), averaged over the clip per shift; the best shift gives the AV offset, its mean distance is LSE-D (lower is
  better) and ``median - min`` over the shifts is the confidence LSE-C (higher is better).

The MFCCs are computed here in numpy; the faces are the pack's MediaPipe landmarks (:mod:`.faces`), cropped the way
the reference pipeline crops its S3FD detections (a square of 2.8 half-sizes, shifted down to hold the mouth).
Without the released weights nothing here could check that the network's outputs move the expected way; the offset
search and the confidence are checked on constructed embeddings.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .faces import require_face, track_faces
from .series import MetricSeries

WEIGHTS_NAME = "syncnet_v2.model"
WEIGHTS_DEST = f"metrics/{WEIGHTS_NAME}"          # under models/portrait_animation/
WEIGHTS_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"  # joonson/syncnet_python
DESCRIPTION = ("SyncNet lip-sync confidence (LSE-C): median minus minimum of the mean audio-video embedding distance "
               "over offsets of +-15 frames; per window: the median minus that window's distance at the best offset")


@dataclass(frozen=True)
class SyncNetConfig:
    fps: int = 25                 # video frames per second the network was trained on
    sample_rate: int = 16000      # audio samples per second
    window: int = 5               # video frames per window (0.2 s)
    mfcc_step: int = 4            # MFCC frames (10 ms) per video frame (40 ms)
    mfcc_window: int = 20         # MFCC frames per window (0.2 s)
    vshift: int = 15              # offsets searched: -vshift .. +vshift video frames
    crop: int = 224               # face crop side
    crop_scale: float = 0.40      # crop margin (the reference pipeline's crop_scale)
    smooth: int = 13              # median filter over the face boxes (frames)
    embed: int = 1024             # embedding size


# ---- MFCC (numpy) --------------------------------------------------------------------------------------------------
def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_filters: int, n_fft: int, sample_rate: int, low_hz: float = 0.0,
                   high_hz: Optional[float] = None) -> np.ndarray:
    """``[n_filters, n_fft // 2 + 1]`` triangular filters with edges equally spaced in mel and snapped to FFT bins."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    mels = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), n_filters + 2)
    edges = np.floor((n_fft + 1) * _mel_to_hz(mels) / sample_rate).astype(int)
    bank = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        rise = np.arange(lo, mid)
        bank[j, rise] = (rise - lo) / (mid - lo)
        fall = np.arange(mid, hi)
        bank[j, fall] = (hi - fall) / (hi - mid)
    return bank


def _dct2_ortho(n: int) -> np.ndarray:
    """``[n, n]`` orthonormal DCT-II matrix (row k: frequency k)."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    m = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def mfcc(signal: np.ndarray, sample_rate: int = 16000, win_s: float = 0.025, step_s: float = 0.01, n_ceps: int = 13,
         n_filters: int = 26, n_fft: int = 512, preemph: float = 0.97, lifter: int = 22) -> np.ndarray:
    """``[T, n_ceps]`` MFCCs of a 1-D signal: pre-emphasis, rectangular frames (the last one zero-padded, at least
    one), power spectrum / n_fft, log mel energies, orthonormal DCT-II, sinusoidal lifter (``lifter`` > 0), and coefficient 0 replaced
    by the log frame energy. ``T = 1 + ceil((len - win) / step)``."""
    x = np.asarray(signal, np.float64).reshape(-1)
    x = np.concatenate([x[:1], x[1:] - preemph * x[:-1]])
    win, step = int(math.floor(win_s * sample_rate + 0.5)), int(math.floor(step_s * sample_rate + 0.5))
    n = 1 if len(x) <= win else 1 + int(math.ceil((len(x) - win) / step))
    x = np.concatenate([x, np.zeros((n - 1) * step + win - len(x))])
    idx = np.arange(win)[None] + step * np.arange(n)[:, None]
    power = np.abs(np.fft.rfft(x[idx], n_fft)) ** 2 / n_fft                    # [T, n_fft // 2 + 1]
    eps = np.finfo(np.float64).eps
    energy = power.sum(1)
    energy[energy == 0] = eps
    mel = power @ mel_filterbank(n_filters, n_fft, sample_rate).T             # [T, n_filters]
    mel[mel == 0] = eps
    ceps = np.log(mel) @ _dct2_ortho(n_filters)[:n_ceps].T                     # [T, n_ceps]
    if lifter > 0:
        ceps *= 1.0 + (lifter / 2.0) * np.sin(np.pi * np.arange(n_ceps) / lifter)
    ceps[:, 0] = np.log(energy)
    return ceps


# ---- the network ---------------------------------------------------------------------------------------------------
# Each tower is a Sequential whose indices match the released state_dict: a "conv" entry adds conv, batch norm and
# ReLU (3 indices), a "pool" entry one max-pool. (kernel, stride, padding) per entry.
_AUDIO_TOWER = [("conv", 1, 64, (3, 3), 1, 1), ("pool", (1, 1), (1, 1), 0),
                ("conv", 64, 192, (3, 3), 1, 1), ("pool", (3, 3), (1, 2), 0),
                ("conv", 192, 384, (3, 3), 1, 1), ("conv", 384, 256, (3, 3), 1, 1), ("conv", 256, 256, (3, 3), 1, 1),
                ("pool", (3, 3), (2, 2), 0),
                ("conv", 256, 512, (5, 4), 1, 0)]
_LIP_TOWER = [("conv", 3, 96, (5, 7, 7), (1, 2, 2), 0), ("pool", (1, 3, 3), (1, 2, 2), 0),
              ("conv", 96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
              ("conv", 256, 256, (1, 3, 3), 1, (0, 1, 1)), ("conv", 256, 256, (1, 3, 3), 1, (0, 1, 1)),
              ("conv", 256, 256, (1, 3, 3), 1, (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), 0),
              ("conv", 256, 512, (1, 6, 6), 1, 0)]


def _tower(spec, dims: int) -> nn.Sequential:
    conv, norm, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if dims == 2 else \
        (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)
    layers: list[nn.Module] = []
    for kind, *args in spec:
        if kind == "conv":
            cin, cout, k, s, p = args
            layers += [conv(cin, cout, k, stride=s, padding=p), norm(cout), nn.ReLU()]
        else:
            k, s, p = args
            layers.append(pool(k, stride=s, padding=p))
    return nn.Sequential(*layers)


def _head(embed: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed))


class SyncNet(nn.Module):
    """The two towers; the attribute names are the released checkpoint's (``netcnnaud.0.weight`` ...)."""

    def __init__(self, cfg: SyncNetConfig = SyncNetConfig()):
        super().__init__()
        self.netcnnaud = _tower(_AUDIO_TOWER, 2)   # [N, 1, 13, 20] -> [N, 512, 1, 1]
        self.netfcaud = _head(cfg.embed)
        self.netcnnlip = _tower(_LIP_TOWER, 3)     # [N, 3, 5, 224, 224] -> [N, 512, 1, 1, 1]
        self.netfclip = _head(cfg.embed)

    def embed_audio(self, mfcc_windows: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 13, 20]`` MFCC windows -> ``[N, embed]``."""
        return self.netfcaud(self.netcnnaud(mfcc_windows).flatten(1))

    def embed_video(self, clips: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 5, 224, 224]`` BGR 0..255 crops -> ``[N, embed]``."""
        return self.netfclip(self.netcnnlip(clips).flatten(1))


def required_keys(model: nn.Module) -> list[str]:
    """The state_dict keys a checkpoint must hold (BatchNorm's step counters are not saved by old torch)."""
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def load_syncnet(path, cfg: SyncNetConfig = SyncNetConfig(), device="cpu") -> SyncNet:
    """SyncNet in eval mode from a state_dict file (``torch.load(weights_only=True)``, or ``.safetensors``).
    Missing keys or wrong shapes raise a ValueError naming the file and the keys."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a SyncNet state_dict (a dict of tensors), got {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = SyncNet(cfg)
    own = model.state_dict()
    missing = [k for k in required_keys(model) if k not in state]
    if missing:
        raise ValueError(f"{path} is not a SyncNet checkpoint in the syncnet_v2.model layout: {len(missing)} key(s) "
                         f"missing, e.g. {', '.join(missing[:6])}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{path}: tensors of the wrong shape: {'; '.join(wrong[:4])}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model.to(device).eval()


def find_weights(store=None) -> Path:
    """``syncnet_v2.model`` from the pack's model store (``models/portrait_animation/metrics/``); the store's
    missing-file error otherwise, naming the file, where it goes and where to get it (it is not downloaded: the
    official link is plain http and no checksum is published)."""
    from ..loaders.manifest import ModelFile
    from ..loaders.store import MissingModelFiles, ModelStore

    store = store or ModelStore.default()
    file = ModelFile(id="syncnet_v2", folder="portrait_animation", dest=WEIGHTS_DEST, url=WEIGHTS_URL,
                     family="metrics", description="SyncNet (joonson/syncnet_python) for lip-sync confidence")
    found = store.locate(file)
    if found is not None:
        return Path(found)
    err = MissingModelFiles([(file, store.destination(file))], reason="SyncNet weights for the lip-sync metric",
                            hint=f"Download {WEIGHTS_NAME} from {WEIGHTS_URL} (joonson/syncnet_python, "
                                 f"download_model.sh) and place it at models/portrait_animation/{WEIGHTS_DEST}.")
    logging.getLogger("portrait_animation").warning(err.report)
    raise err


# ---- inputs: 25 fps face crops, MFCC windows -----------------------------------------------------------------------
def resample_indices(n_frames: int, fps: float, target_fps: float) -> list[int]:
    """Source frame shown at each ``1 / target_fps`` step of a clip of ``n_frames`` at ``fps``."""
    n_out = int(math.floor(n_frames * target_fps / fps + 1e-6))
    return [min(n_frames - 1, int(math.floor(k * fps / target_fps + 1e-6))) for k in range(n_out)]


def _medfilt(x: np.ndarray, k: int) -> np.ndarray:
    """Median filter of odd width ``k`` with zero padding (as scipy.signal.medfilt)."""
    pad = np.concatenate([np.zeros(k // 2), np.asarray(x, np.float64), np.zeros(k // 2)])
    return np.median(np.lib.stride_tricks.sliding_window_view(pad, k), axis=1)


def _fill_nearest(points: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    have = [i for i, p in enumerate(points) if p is not None]
    return [points[i] if points[i] is not None else points[min(have, key=lambda j: abs(j - i))]
            for i in range(len(points))]


def crop_boxes(points: Sequence[Optional[np.ndarray]], cfg: SyncNetConfig = SyncNetConfig()) -> np.ndarray:
    """``[N, 3]`` (half-size ``s``, centre x, centre y) per frame: the landmark box (``s`` = half its longer side),
    median-filtered over time; frames without a face take the nearest face."""
    pts = _fill_nearest(points)
    lo = np.stack([p[:, :2].min(0) for p in pts])
    hi = np.stack([p[:, :2].max(0) for p in pts])
    s = (hi - lo).max(1) / 2
    cx, cy = (lo[:, 0] + hi[:, 0]) / 2, (lo[:, 1] + hi[:, 1]) / 2
    if len(pts) >= cfg.smooth:  # shorter clips: the zero padding would outweigh the boxes
        s, cx, cy = (_medfilt(v, cfg.smooth) for v in (s, cx, cy))
    return np.stack([s, cx, cy], 1)


def crop_face(frame_rgb: np.ndarray, box: np.ndarray, cfg: SyncNetConfig = SyncNetConfig()) -> np.ndarray:
    """``[224, 224, 3]`` float32 BGR 0..255 crop of one frame, cut from ``c_y - s`` to ``c_y + s (1 + 2 m)`` and
    ``c_x +- s (1 + m)`` with margin ``m = crop_scale`` (grey 110 outside the frame): the mouth below the centre."""
    import cv2

    s, cx, cy = (float(v) for v in box)
    m = cfg.crop_scale
    pad = int(s * (1 + 2 * m))
    padded = cv2.copyMakeBorder(np.ascontiguousarray(frame_rgb[:, :, ::-1]), pad, pad, pad, pad,
                                cv2.BORDER_CONSTANT, value=(110, 110, 110))
    y, x = cy + pad, cx + pad
    face = padded[int(y - s):int(y + s * (1 + 2 * m)), int(x - s * (1 + m)):int(x + s * (1 + m))]
    if not face.size:
        return np.full((cfg.crop, cfg.crop, 3), 110.0, np.float32)
    return cv2.resize(face, (cfg.crop, cfg.crop)).astype(np.float32)


def face_crops(images, points: Sequence[Optional[np.ndarray]], cfg: SyncNetConfig = SyncNetConfig()) -> np.ndarray:
    """``[N, 224, 224, 3]`` float32 BGR 0..255 mouth-centred face crops of every frame (:func:`crop_boxes`,
    :func:`crop_face`), framed like the reference pipeline's crops of its face detections."""
    from ..face.frames import frame_uint8

    boxes = crop_boxes(points, cfg)
    return np.stack([crop_face(frame_uint8(images, i), boxes[i], cfg) for i in range(len(boxes))])


def mfcc_windows(mfccs: np.ndarray, n: int, cfg: SyncNetConfig = SyncNetConfig()) -> torch.Tensor:
    """``[n, 1, 13, 20]``: window ``i`` is MFCC frames ``4 i .. 4 i + 19``."""
    w = [mfccs[cfg.mfcc_step * i:cfg.mfcc_step * i + cfg.mfcc_window].T for i in range(n)]
    return torch.from_numpy(np.stack(w)[:, None].astype(np.float32))


# ---- offset search -------------------------------------------------------------------------------------------------
@dataclass
class SyncResult:
    offset: int                  # video frames the video lags the audio by (video window i ~ audio window i - offset)
    confidence: float            # LSE-C: median - min of the mean distance per shift
    min_distance: float          # LSE-D: the mean distance at the best shift
    mean_distance: np.ndarray    # [2 vshift + 1] mean distance per shift (index j: audio window i + j - vshift)
    window_confidence: np.ndarray  # [N] median - that window's distance at the best shift (their mean = confidence)


def sync_search(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = 15) -> SyncResult:
    """Distances of every video embedding ``[N, D]`` to the audio embeddings ``[N, D]`` shifted by
    ``-vshift .. vshift`` (zero vectors past the ends, which count in the mean as in the reference evaluation).
    The per-window values are not median-filtered (the reference prints them smoothed over 9 windows), so their
    mean is the clip's confidence."""
    v, a = video_emb.float().cpu(), audio_emb.float().cpu()
    n = len(v)
    a_pad = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    shifts = 2 * vshift + 1
    idx = torch.arange(n)[:, None] + torch.arange(shifts)[None]                # [N, shifts]
    dists = torch.nn.functional.pairwise_distance(v[:, None].expand(-1, shifts, -1), a_pad[idx])  # [N, shifts]
    mean = dists.mean(0)
    best = int(torch.argmin(mean))
    med = float(torch.median(mean))
    return SyncResult(offset=vshift - best, confidence=med - float(mean[best]), min_distance=float(mean[best]),
                      mean_distance=mean.numpy().astype(np.float64),
                      window_confidence=med - dists[:, best].numpy().astype(np.float64))


# ---- the metric ----------------------------------------------------------------------------------------------------
def progress_steps(n_frames: int, fps: float, batch: int = 20, cfg: SyncNetConfig = SyncNetConfig()) -> int:
    """Progress steps :func:`lip_sync` reports for a clip of ``n_frames`` at ``fps``."""
    n25 = len(resample_indices(n_frames, fps, cfg.fps)) if fps > 0 else n_frames
    return n25 + math.ceil(max(1, n25) / batch)


def _audio_16k(audio, cfg: SyncNetConfig) -> np.ndarray:
    from ..media.audio import prepare_audio

    wav = prepare_audio(audio, cfg.sample_rate, mono=True)["waveform"][0, 0]
    return wav.numpy().astype(np.float64) * 32768.0  # the reference reads 16-bit samples


@torch.inference_mode()
def lip_sync(frames, fps: float, audio, model: SyncNet, detector=None, batch: int = 20,
             cfg: SyncNetConfig = SyncNetConfig(), progress: Optional[Callable[[int], None]] = None) -> MetricSeries:
    """SyncNet confidence of ``frames`` (IMAGE ``[N, H, W, 3]`` at ``fps``) against ``audio`` (AUDIO): frames are
    resampled to 25 fps by time, audio to 16 kHz mono. Values: the per-window confidence (x = the window's first
    25 fps frame); extra: confidence (LSE-C), min_distance (LSE-D), av_offset (frames) and the distance per offset.
    ``progress`` gets :func:`progress_steps` steps in all (face tracking per 25 fps frame, then the window batches)."""
    if fps <= 0:
        raise ValueError("fps must be the frame rate of 'images' (e.g. 25), got 0")
    keep = resample_indices(len(frames), fps, cfg.fps)
    frames25 = frames[keep]
    points = track_faces(frames25, detector, input_name="images", progress=progress)
    require_face(points, "images")
    wav = _audio_16k(audio, cfg)
    feats = mfcc(wav, cfg.sample_rate)
    length = min(len(frames25), int(math.floor(len(wav) / (cfg.sample_rate / cfg.fps))))
    n = length - cfg.window  # windows, as the reference evaluation counts them
    if n < 1:
        raise ValueError(f"lip sync needs at least {cfg.window + 1} frames at 25 fps with audio under them "
                         f"({(cfg.window + 1) / cfg.fps:.2f} s); got {len(frames25)} frames and "
                         f"{len(wav) / cfg.sample_rate:.2f} s of audio")
    from ..face.frames import frame_uint8

    boxes = crop_boxes(points[:length], cfg)
    crops: dict[int, torch.Tensor] = {}  # the frames of the current batch of windows: [3, 224, 224] each

    def crop(i: int) -> torch.Tensor:
        if i not in crops:
            crops[i] = torch.from_numpy(crop_face(frame_uint8(frames25, i), boxes[i], cfg)).permute(2, 0, 1)
        return crops[i]
    windows = mfcc_windows(feats, n, cfg)
    device = next(model.parameters()).device
    v_emb, a_emb = [], []
    for s in range(0, n, batch):
        e = min(n, s + batch)
        clips = torch.stack([torch.stack([crop(i + t) for t in range(cfg.window)], 1)
                             for i in range(s, e)])                            # [b, 3, 5, 224, 224]
        for i in [i for i in crops if i < e]:
            del crops[i]
        v_emb.append(model.embed_video(clips.to(device)).cpu())
        a_emb.append(model.embed_audio(windows[s:e].to(device)).cpu())
        if progress is not None:
            progress(1)
    if progress is not None:  # windows fewer than frames: finish the bar
        progress(max(0, progress_steps(len(frames), fps, batch, cfg) - len(keep) - math.ceil(n / batch)))
    res = sync_search(torch.cat(v_emb), torch.cat(a_emb), cfg.vshift)
    missing = sum(p is None for p in points[:length])
    notes = [f"{missing} of {length} frames had no face (the nearest face was used)"] if missing else []
    if len(keep) != len(frames):
        notes.append(f"{len(frames)} frames at {fps:g} fps resampled to {len(keep)} at {cfg.fps} fps")
    extra = {"confidence": round(res.confidence, 5), "min_distance": round(res.min_distance, 5),
             "av_offset": res.offset, "windows": n, "fps": cfg.fps,
             "distance_per_offset": {str(cfg.vshift - j): round(float(d), 5) for j, d in
                                     enumerate(res.mean_distance)}}
    return MetricSeries("lip_sync", DESCRIPTION, "conf", "higher", [float(c) for c in res.window_confidence],
                        x_label="window", extra=extra, notes=notes)


__all__ = ["SyncNet", "SyncNetConfig", "SyncResult", "find_weights", "lip_sync", "load_syncnet", "mfcc",
           "sync_search", "WEIGHTS_DEST", "WEIGHTS_URL"]
