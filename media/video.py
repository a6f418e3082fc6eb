"""Video reading and writing with PyAV (imported lazily).

Frames use ComfyUI's IMAGE layout: float32 ``[T, H, W, 3]`` in 0..1 on the CPU. Reading streams frames one at a time
(:func:`iter_video_frames`), so long videos can be processed in bounded memory; :func:`read_video` collects them and
also returns the matching audio span. :func:`write_video` encodes h264 (yuv420p) + AAC mp4 files; yuv420p needs even
frame sizes, which :func:`even_size` provides by padding or cropping one pixel.
"""
from __future__ import annotations

import logging
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np
import torch

from .audio import (Audio, _check_audio, _open, as_fraction, decode_audio_stream, fit_length, make_audio, resample,
                    samples_for_frames, to_channels)
from .errors import MediaError, check_exists

log = logging.getLogger("portrait_animation")

EVEN_MODES = ("pad", "crop", "none")
# Sample rates FFmpeg's native AAC encoder accepts.
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)

Size = Union[None, int, tuple]


# ---------------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------------
def _stream_fps(stream, container=None) -> Fraction:
    for rate in (getattr(stream, "average_rate", None), getattr(stream, "guessed_rate", None),
                 getattr(stream, "base_rate", None)):
        if rate:
            fps = Fraction(rate.numerator, rate.denominator)
            if 0 < fps <= 1000:
                return fps
    if stream.frames and container is not None and container.duration:
        return Fraction(stream.frames * 1_000_000, int(container.duration)).limit_denominator(100000)
    return Fraction(25)


def _normalize_size(size: Size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive (width, height), got {size}")
    return w, h


def _check_selection(start: int, step: int, max_frames: Optional[int]) -> None:
    if int(start) < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if int(step) < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if max_frames is not None and int(max_frames) < 0:
        raise ValueError(f"max_frames must be >= 0 (or None for all), got {max_frames}")


def _frame_to_rgb(frame, size: Optional[tuple[int, int]], autorotate: bool) -> np.ndarray:
    """An av.VideoFrame as uint8 [H, W, 3] RGB in display orientation, optionally resized to size=(w, h)."""
    turns = 0
    if autorotate:
        rotation = getattr(frame, "rotation", 0) or 0          # counter-clockwise degrees of the display matrix
        turns = int(round(rotation / 90.0)) % 4
    if size is None:
        img = frame.to_ndarray(format="rgb24")
    else:
        w, h = size
        if turns % 2:                                           # resize before rotating: swap the target sides
            w, h = h, w
        img = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BICUBIC")
    if turns:
        img = np.ascontiguousarray(np.rot90(img, k=turns))
    return img


def iter_video_frames(path, max_frames: Optional[int] = None, start: int = 0, step: int = 1, size: Size = None,
                      autorotate: bool = True) -> Iterator[np.ndarray]:
    """Yield frames ``start, start+step, ...`` (at most ``max_frames``; None or 0 = all) as uint8 ``[H, W, 3]`` RGB.

    Decoding is sequential and stops as soon as enough frames were produced, so memory stays at one frame.
    ``size=(width, height)`` resizes while converting (bicubic). Rotation metadata (phone videos) is applied.
    """
    import av

    path = check_exists(path, "video")
    _check_selection(start, step, max_frames)
    size = _normalize_size(size)
    limit = int(max_frames) if max_frames else None
    container = _open(path, "a video")
    try:
        stream, _ = _video_stream(container, path)
        # no frame threading ("AUTO"/"FRAME"): closing a frame-threaded decoder that stopped mid-stream (a frame cap,
        # a start offset) can deadlock inside avcodec_free_context (seen with PyAV 18 / FFmpeg 8 under load, the
        # server's worker thread hung for good). Slice threading has no such state and is what PyAV uses by default.
        stream.thread_type = "SLICE"
        index = taken = 0
        if limit == 0:
            return
        try:
            for frame in container.decode(stream):
                if index >= start and (index - start) % step == 0:
                    yield _frame_to_rgb(frame, size, autorotate)
                    taken += 1
                    if limit is not None and taken >= limit:
                        break
                index += 1
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot decode video '{path}' (corrupt file?) after {index} frames: {e}") from e
    finally:
        container.close()


def _audio_span(path: str, container, video_start: float, t0: float, num_samples_fn) -> Optional[Audio]:
    """Audio of the first audio stream from ``t0`` seconds after the video's first frame; length from the callback."""
    if not container.streams.audio:
        return None
    data, sr, audio_start = decode_audio_stream(container, container.streams.audio[0], path)
    offset = audio_start - video_start                    # where audio sample 0 lies on the video's clock
    first = int(round((t0 - offset) * sr))
    length = int(num_samples_fn(sr))
    out = np.zeros((data.shape[0], length), dtype=np.float32)
    lo, hi = max(first, 0), min(first + length, data.shape[1])
    if hi > lo:
        out[:, lo - first:hi - first] = data[:, lo:hi]
    return make_audio(torch.from_numpy(out), sr)


def read_video(path, max_frames: Optional[int] = None, start: int = 0, step: int = 1, size: Size = None,
               with_audio: bool = True, autorotate: bool = True) -> tuple[torch.Tensor, Fraction, Optional[Audio]]:
    """Decode a video into ``(frames [T, H, W, 3] float32 0..1, fps, audio or None)``.

    ``fps`` is the rate of the *returned* sequence (source fps / ``step``). ``audio`` is the span of the first audio
    track that plays alongside the returned frames (from frame ``start`` for ``T * step`` source frames, zero-padded if
    the track is shorter), or None when the file has no audio track (or ``with_audio`` is False).
    """
    path = check_exists(path, "video")
    _check_selection(start, step, max_frames)
    container = _open(path, "a video")
    try:
        vstream, src_fps = _video_stream(container, path)
        video_start = float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0
        has_audio = bool(container.streams.audio)
    finally:
        container.close()

    raw = list(iter_video_frames(path, max_frames=max_frames, start=start, step=step, size=size,
                                 autorotate=autorotate))
    if not raw:
        info = video_info(path)
        raise MediaError(f"no frames selected from '{path}' ({info['frames']} frames; start={start}, step={step}, "
                         f"max_frames={max_frames})")
    h, w = raw[0].shape[:2]
    frames = torch.empty(len(raw), h, w, 3, dtype=torch.float32)
    for i in range(len(raw)):
        if raw[i].shape != (h, w, 3):
            raise MediaError(f"'{path}' changes frame size mid-stream ({w}x{h} -> {raw[i].shape[1]}x"
                             f"{raw[i].shape[0]} at frame {start + i * step}); pass size=(width, height)")
        frames[i] = torch.from_numpy(raw[i]).to(torch.float32).div_(255.0)
        raw[i] = None  # release the uint8 copy as we go
    fps = src_fps / int(step)

    audio = None
    if with_audio and has_audio:
        count = frames.shape[0]
        container = _open(path, "a video")
        try:
            audio = _audio_span(path, container, video_start, float(Fraction(int(start)) / src_fps),
                                lambda sr: samples_for_frames(count, fps, sr))
        except MediaError as e:  # a broken soundtrack should not cost the frames
            log.warning("Portrait Animation: ignoring the audio of '%s': %s", path, e)
            audio = None
        finally:
            container.close()
    return frames, fps, audio


def _video_stream(container, path):
    """The first video stream of an open container and its frame rate; a clear error when there is none."""
    if not container.streams.video:
        raise MediaError(f"'{path}' contains no video stream (corrupt or not a video file)")
    stream = container.streams.video[0]
    return stream, _stream_fps(stream, container)


def video_info(path) -> dict:
    """Cheap metadata: frames, fps (Fraction), width, height (display orientation), duration (s), has_audio, and
    audio_sample_rate / audio_channels (None without audio), codec."""
    import av

    path = check_exists(path, "video")
    container = _open(path, "a video")
    try:
        stream, fps = _video_stream(container, path)
        width, height = stream.codec_context.width, stream.codec_context.height
        frames = int(stream.frames or 0)
        if container.duration:
            duration = container.duration / av.time_base
        elif stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = None
        try:
            if frames <= 0:  # not in the header (webm, some mkv): count packets, no decoding
                frames = sum(1 for p in container.demux(stream) if p.size)
                container.seek(0)
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot decode video '{path}' (corrupt file?): {e}") from e
        if first is not None and int(round((getattr(first, "rotation", 0) or 0) / 90.0)) % 2:
            width, height = height, width
        if duration is None:
            duration = float(frames / fps)
        audio = container.streams.audio[0] if container.streams.audio else None
        return {
            "frames": frames,
            "fps": fps,
            "width": int(width),
            "height": int(height),
            "duration": float(duration),
            "has_audio": audio is not None,
            "audio_sample_rate": int(audio.sample_rate) if audio is not None else None,
            "audio_channels": len(audio.layout.channels) if audio is not None else None,
            "codec": stream.codec_context.name,
        }
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------------------------------
# frames and audio made safe for h264/AAC
# ---------------------------------------------------------------------------------------------------------------------
def as_image_batch(frames) -> torch.Tensor:
    """Any of IMAGE tensor / numpy ``[T, H, W, C]`` or ``[H, W, C]`` (float 0..1 or uint8) -> float32 [T, H, W, 3]."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"expected an IMAGE tensor [T, H, W, 3], got {type(frames).__name__}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4:
        raise ValueError(f"expected frames [T, H, W, C], got shape {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        frames = frames.to(torch.float32) / 255.0
    frames = frames.detach().to("cpu", torch.float32)
    c = frames.shape[-1]
    if c == 1:
        frames = frames.expand(-1, -1, -1, 3)
    elif c == 4:
        frames = frames[..., :3]
    elif c != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {c}")
    return frames


def even_size(frames: torch.Tensor, mode: str = "pad") -> torch.Tensor:
    """Make H and W even for yuv420p: "pad" repeats the last row/column, "crop" drops it, "none" leaves the frames.

    Works on [..., H, W, C] tensors or numpy arrays.
    """
    if mode not in EVEN_MODES:
        raise ValueError(f"unknown even-size mode {mode!r}: use one of {', '.join(EVEN_MODES)}")
    h, w = frames.shape[-3], frames.shape[-2]
    if mode == "none" or (h % 2 == 0 and w % 2 == 0):
        return frames
    is_np = isinstance(frames, np.ndarray)
    cat = np.concatenate if is_np else torch.cat
    if mode == "crop":
        if h < 2 or w < 2:
            raise ValueError(f"cannot crop a {w}x{h} frame to an even size; use mode='pad'")
        return frames[..., : h - h % 2, : w - w % 2, :]
    if h % 2:
        frames = cat([frames, frames[..., -1:, :, :]], -3) if is_np else cat([frames, frames[..., -1:, :, :]], dim=-3)
    if w % 2:
        frames = cat([frames, frames[..., :, -1:, :]], -2) if is_np else cat([frames, frames[..., :, -1:, :]], dim=-2)
    return frames


def aac_safe_rate(sample_rate: int) -> int:
    """``sample_rate`` if the AAC encoder takes it, else the nearest supported rate at or above it (48 kHz max)."""
    sample_rate = int(sample_rate)
    if sample_rate in AAC_SAMPLE_RATES:
        return sample_rate
    higher = [r for r in AAC_SAMPLE_RATES if sample_rate <= r <= 48000]
    return min(higher) if higher else 48000


def audio_for_video(audio: Optional[Audio], num_frames: int, fps, fit: bool = True) -> Optional[Audio]:
    """Make AUDIO safe for an mp4 next to ``num_frames`` frames: batch item 0 only, mono or stereo, float32 on the CPU,
    an AAC sample rate, and (``fit``) trimmed or zero-padded to exactly the video's duration.

    Returns None for None or empty audio (core VIDEO treats None as "no audio track").
    """
    if audio is None:
        return None
    waveform, sr = _check_audio(audio)
    if waveform.shape[0] == 0 or waveform.shape[-1] == 0 or waveform.shape[1] == 0:
        return None
    if waveform.shape[0] > 1:
        log.warning("Portrait Animation: audio batch of %d; the video uses the first item", waveform.shape[0])
    waveform = waveform[:1].detach().to("cpu", torch.float32)
    if waveform.shape[1] > 2:
        waveform = to_channels(waveform, 2)
    target = aac_safe_rate(sr)
    if target != sr:
        waveform = resample(waveform, sr, target)
        sr = target
    if fit:
        waveform = fit_length(waveform, samples_for_frames(num_frames, fps, sr), "trim_or_pad")
    return make_audio(waveform.contiguous(), sr)


def frames_to_components(frames, fps, audio: Optional[Audio] = None, even: str = "pad", fit_audio: bool = True,
                         inplace: bool = False) -> dict:
    """The keyword arguments of ComfyUI's ``Types.VideoComponents`` (``images``, ``frame_rate``, ``audio``) for
    frames that core SaveVideo can encode: float32 [T, H, W, 3] clamped to 0..1 with even sizes (``even``), an exact
    Fraction frame rate, and audio from :func:`audio_for_video`. ``inplace``: clamp ``frames`` themselves when they
    are already a contiguous float32 CPU batch of even size (no second copy of the video; for frames the caller
    owns, e.g. a sampler's own output)."""
    images = as_image_batch(frames)
    if images.shape[0] == 0:
        raise ValueError("cannot make a video from 0 frames")
    images = even_size(images, even)
    if inplace and images.is_contiguous() and images.data_ptr() == getattr(frames, "data_ptr", lambda: None)():
        images = images.clamp_(0.0, 1.0)
    else:
        images = images.clamp(0.0, 1.0).contiguous()
    rate = as_fraction(fps)
    return {"images": images, "frame_rate": rate, "audio": audio_for_video(audio, images.shape[0], rate, fit_audio)}


# ---------------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------------
def _to_uint8(frame) -> np.ndarray:
    """Frames in 0..1 (or uint8) -> uint8, with one float temporary (clamp(x, 0, 1) * 255, rounded)."""
    if isinstance(frame, torch.Tensor):
        if frame.dtype == torch.uint8:
            return frame.cpu().numpy()
        return frame.detach().cpu().float().mul(255.0).clamp_(0.0, 255.0).round_().to(torch.uint8).numpy()
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame
    scaled = np.multiply(frame, np.float32(255.0), dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


class VideoWriter:
    """An mp4 (h264 yuv420p + AAC) written as frames come: clip by clip, never the whole video in memory.

    ``write`` takes one frame ``[H, W, C]`` or a chunk ``[T, H, W, C]`` (float 0..1 or uint8; torch or numpy) and
    converts it to uint8 one chunk at a time, so memory holds one chunk plus the encoder's own look-ahead, whatever the
    length. The audio's format is fixed when the writer opens; its length is fitted to the frames written when the
    file is finished. The file is written under a temporary name beside ``path`` and renamed to ``path`` only by
    :meth:`close`; :meth:`abort` (and leaving a ``with`` block by an exception, e.g. a cancelled run) deletes it, so a
    half-written video never appears under the final name.
    """

    def __init__(self, path, fps, audio: Optional[Audio] = None, even: str = "pad", crf: int = 18,
                 preset: str = "medium"):
        import os

        import av

        if even not in EVEN_MODES:
            raise ValueError(f"unknown even-size mode {even!r}: use one of {', '.join(EVEN_MODES)}")
        self.path = os.fspath(path)
        root, ext = os.path.splitext(self.path)
        self.partial_path = f"{root}.incomplete{ext or '.mp4'}"
        self.rate = as_fraction(fps)
        self.even, self.crf, self.preset = even, int(crf), str(preset)
        self._track = audio_for_video(audio, 0, self.rate, fit=False)  # length fitted once the count is known
        self._container = av.open(self.partial_path, mode="w", format=None if ext else "mp4")  # muxer from ext
        self._vstream = self._astream = None
        self.frames_written = 0
        self.width = self.height = None
        self.closed = False

    # -- frames ------------------------------------------------------------------------------------------------------
    def _open_streams(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"h264 yuv420p needs even sizes, got {width}x{height}; use even='pad' or 'crop'")
        v = self._container.add_stream("h264", rate=self.rate)
        v.height, v.width = height, width
        v.pix_fmt = "yuv420p"
        v.options = {"crf": str(self.crf), "preset": self.preset}
        self._vstream, self.height, self.width = v, height, width
        if self._track is not None:  # every stream must exist before the first packet is muxed
            layout = "mono" if self._track["waveform"].shape[1] == 1 else "stereo"
            self._astream = self._container.add_stream("aac", rate=self._track["sample_rate"], layout=layout)

    def write(self, frames) -> None:
        """Encode one frame ``[H, W, C]`` or a chunk ``[T, H, W, C]`` (C = 1, 3 or 4)."""
        import av

        if self.closed:
            raise ValueError("the video writer is closed")
        if isinstance(frames, (list, tuple)):
            for f in frames:
                self.write(f)
            return
        chunk = _to_uint8(frames)                                         # one uint8 copy of this chunk only
        if chunk.ndim == 3:
            chunk = chunk[None]
        if chunk.ndim != 4 or chunk.shape[-1] not in (1, 3, 4):
            raise ValueError(f"frames must be [H, W, 3] or [T, H, W, 3], got {tuple(chunk.shape)}")
        if chunk.shape[-1] == 1:
            chunk = np.repeat(chunk, 3, axis=-1)
        elif chunk.shape[-1] == 4:
            chunk = chunk[..., :3]
        chunk = even_size(chunk, self.even)
        for img in chunk:
            if self._vstream is None:
                self._open_streams(*img.shape[:2])
            elif img.shape[:2] != (self.height, self.width):
                raise ValueError(f"frame {self.frames_written} is {img.shape[1]}x{img.shape[0]}, "
                                 f"expected {self.width}x{self.height}")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts = self.frames_written
            for packet in self._vstream.encode(vf):
                self._container.mux(packet)
            self.frames_written += 1

    # -- finishing ---------------------------------------------------------------------------------------------------
    def _encode_audio(self) -> None:
        import av

        sr = self._track["sample_rate"]
        data = fit_length(self._track["waveform"][0], samples_for_frames(self.frames_written, self.rate, sr)).numpy()
        layout = "mono" if data.shape[0] == 1 else "stereo"
        chunk = 1024 * 16
        for s in range(0, data.shape[1], chunk):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, s:s + chunk]), format="fltp", layout=layout)
            af.sample_rate = sr
            af.pts = s
            for packet in self._astream.encode(af):
                self._container.mux(packet)
        for packet in self._astream.encode(None):
            self._container.mux(packet)

    def close(self) -> str:
        """Flush the encoders, add the audio (fitted to the frames written) and move the file to ``path``."""
        import os

        if self.closed:
            return self.path
        try:
            if self._vstream is None:
                raise ValueError("cannot write a video with 0 frames")
            for packet in self._vstream.encode(None):
                self._container.mux(packet)
            if self._astream is not None:
                self._encode_audio()
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self.closed = True
        os.replace(self.partial_path, self.path)
        return self.path

    def abort(self) -> None:
        """Stop and delete the unfinished file (nothing is left under either name)."""
        import os

        if self.closed:
            return
        self.closed = True
        try:
            self._container.close()
        except Exception:  # a broken container must not hide the error that led here
            pass
        try:
            os.remove(self.partial_path)
        except OSError:
            pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path, frames: Union[torch.Tensor, np.ndarray, Iterable], fps, audio: Optional[Audio] = None,
                even: str = "pad", crf: int = 18, preset: str = "medium") -> str:
    """Encode an mp4: h264 yuv420p video (+ AAC audio trimmed/padded to the video's duration).

    ``frames`` is an IMAGE tensor/array ``[T, H, W, 3]`` (float 0..1 or uint8) or any iterable of ``[H, W, 3]`` frames
    (streamed: never held in memory together; converted to uint8 one frame at a time). Odd sizes are padded or cropped
    to even (``even``; "none" fails for odd sizes). Returns the path; on an error no file is left.
    """
    if isinstance(frames, (torch.Tensor, np.ndarray)) and frames.ndim == 3:
        frames = frames[None]  # a single [H, W, C] frame
    with VideoWriter(path, fps, audio=audio, even=even, crf=crf, preset=preset) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path


def fill_frames(batches: Iterable, total: int, progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """IMAGE batches ``[n, H, W, C]`` as they come, copied into one IMAGE ``[total, H, W, C]`` float32 allocated once
    from the first batch's size (no list + cat: the peak is the result plus one batch). Exactly ``total`` frames must
    arrive."""
    out = None
    filled = 0
    for batch in batches:
        n = int(batch.shape[0])
        if out is None:
            out = torch.empty((int(total), *batch.shape[1:]), dtype=torch.float32)
        if filled + n > out.shape[0] or tuple(batch.shape[1:]) != tuple(out.shape[1:]):
            raise ValueError(f"frames {filled}..{filled + n - 1} of shape {tuple(batch.shape[1:])} do not fit "
                             f"{total} frames of {tuple(out.shape[1:])}")
        out[filled:filled + n] = batch
        filled += n
        if progress is not None:
            progress(n)
    if filled != int(total):
        raise ValueError(f"expected {total} frames, got {filled}")
    return out


def stream_to_video(batches: Iterable, path, fps, audio: Optional[Audio] = None,
                    frame_fn: Optional[Callable[[int, np.ndarray], np.ndarray]] = None, even: str = "pad",
                    crf: int = 18, preset: str = "medium") -> tuple[str, int, torch.Tensor]:
    """Encode IMAGE batches ``[n, h, w, 3]`` into an mp4 as they come (a :class:`VideoWriter`): nothing but the batch
    at hand and one output frame is held, whatever the length. ``frame_fn(i, frame [h, w, 3] float32)`` turns
    generated frame ``i`` into the frame to encode (e.g. pasted back into the full-size original); without it the
    batch is encoded as it is. Returns ``(path, frames written, first encoded frame [1, H, W, 3] float32)``; on an
    error or a cancellation no file is left."""
    first = None
    index = 0
    with VideoWriter(path, fps, audio=audio, even=even, crf=crf, preset=preset) as writer:
        for batch in batches:
            if frame_fn is None:
                if first is None:
                    first = as_image_batch(batch[:1]).clone()
                writer.write(batch)
                index += int(batch.shape[0])
                continue
            for frame in batch:
                img = frame.detach().to("cpu", torch.float32).numpy() if isinstance(frame, torch.Tensor) else frame
                out = frame_fn(index, img)
                if first is None:
                    first = as_image_batch(np.array(out, dtype=np.float32, copy=True))
                writer.write(out)
                index += 1
    return writer.path, index, first


__all__ = [
    "AAC_SAMPLE_RATES", "EVEN_MODES", "aac_safe_rate", "as_image_batch", "audio_for_video", "even_size",
    "VideoWriter", "fill_frames", "frames_to_components", "iter_video_frames", "read_video", "stream_to_video",
    "video_info", "write_video",
]
