"""The streaming output path of the sampler nodes, without ComfyUI: the mp4 writer that takes frames as they come
(frames in == frames decoded, fps, audio length, nothing left behind on an error, bounded memory), paste-back one
frame at a time, the preallocated IMAGE batch, and HunyuanPortrait decoded chunk by chunk (same frames)."""
from __future__ import annotations

import math
import os
import tracemalloc

import numpy as np
import pytest
import torch

from portrait_animation.face.crop import CropInfo
from portrait_animation.face.paste import FramePaster, paste_back
from portrait_animation.media.audio import make_audio
from portrait_animation.media.video import (VideoWriter, fill_frames, frames_to_components, read_video,
                                            stream_to_video, video_info)

HUNYUAN_FRAMES = 7  # the driving frames of the shared hunyuan_case fixture (tests/conftest.py)


def _moving(t: int, h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth frames that change over time (h264 keeps them close)."""
    y = torch.linspace(0, 1, h)[:, None, None]
    x = torch.linspace(0, 1, w)[None, :, None]
    c = torch.tensor([0.2, 0.5, 0.8])[None, None]
    return torch.stack([(0.5 + 0.4 * torch.sin(6 * x + 4 * y + c * 3 + k * 0.3)) for k in range(t)]).float()


def _tone(seconds: float, sr: int, channels: int = 2) -> dict:
    t = torch.arange(int(seconds * sr)) / sr
    return make_audio(0.3 * torch.sin(2 * math.pi * 440 * t).repeat(1, channels, 1), sr)


def test_writer_frames_in_equal_frames_out_with_audio_and_fps(tmp_path):
    frames = _moving(23)
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 12.5, audio=_tone(5.0, 44100)) as w:  # audio longer than the video: trimmed
        w.write(frames[:8])                                   # a float chunk
        for f in frames[8:15]:
            w.write((f.numpy() * 255).round().astype(np.uint8))  # single uint8 frames
        w.write(frames[15:].mean(-1, keepdim=True).expand(-1, -1, -1, 1).contiguous())  # grey chunk, 1 channel
        assert not path.exists() and w.frames_written == 23   # nothing under the final name until closed
    info = video_info(path)
    assert info["frames"] == 23 and (info["width"], info["height"]) == (64, 48)
    assert info["fps"] == 12.5 and info["has_audio"] and info["audio_sample_rate"] == 44100
    decoded, fps, audio = read_video(path)
    assert decoded.shape == (23, 48, 64, 3)
    assert (decoded[:15] - frames[:15]).abs().mean() < 0.02
    grey = frames[15:].mean(-1, keepdim=True)
    assert (decoded[15:] - grey).abs().mean() < 0.02 and decoded[15:].std(dim=-1).mean() < 0.01
    assert abs(audio["waveform"].shape[-1] / audio["sample_rate"] - 23 / 12.5) < 0.03  # fitted to 1.84 s
    assert not list(tmp_path.glob("*incomplete*"))


def test_writer_pads_odd_sizes_and_short_audio(tmp_path):
    frames = _moving(10, h=33, w=47)
    path = stream_to_video(iter([frames[:4], frames[4:]]), tmp_path / "odd.mp4", 25, audio=_tone(0.1, 16000, 1))[0]
    info = video_info(path)
    assert info["frames"] == 10 and (info["width"], info["height"]) == (48, 34) and info["audio_channels"] == 1
    _, _, audio = read_video(path)
    assert abs(audio["waveform"].shape[-1] / audio["sample_rate"] - 0.4) < 0.03      # padded to the video


@pytest.mark.parametrize("where", ["frames", "close"])
def test_an_error_or_cancel_leaves_no_file(tmp_path, where):
    path = tmp_path / "cancelled.mp4"

    class Cancelled(Exception):
        pass

    def clips():
        yield _moving(4)
        if where == "frames":
            raise Cancelled()  # e.g. ComfyUI's interrupt raised inside the sampler
        yield _moving(4, h=50)  # a different size: close() is never reached, write() fails

    with pytest.raises((Cancelled, ValueError)):
        stream_to_video(clips(), path, 25, audio=_tone(1.0, 16000))
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="0 frames"):
        VideoWriter(tmp_path / "empty.mp4", 25).close()
    assert os.listdir(tmp_path) == []


def test_writer_memory_is_bounded_by_one_chunk(tmp_path):
    """numpy reports its buffers to tracemalloc: writing 160 frames chunk by chunk peaks at about one chunk (the
    frames made by the generator plus their uint8 copy), not at the video's size."""
    chunk, h, w = 8, 96, 128
    chunk_bytes = chunk * h * w * 3 * 4

    def clips():
        for k in range(20):
            yield np.full((chunk, h, w, 3), (k % 10) / 10, np.float32)

    tracemalloc.start()
    try:
        path, count, _ = stream_to_video(clips(), tmp_path / "long.mp4", 30, preset="ultrafast")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 160 and video_info(path)["frames"] == 160
    assert peak < 3 * chunk_bytes                                    # 20 chunks went through


def test_stream_with_paste_back_matches_the_batch_paste_back(tmp_path):
    original = _moving(1, 90, 120) * 0.5                      # smooth pictures: h264 keeps them close
    info = CropInfo(height=90, width=120, boxes=[[30, 10, 60]], size=32)
    crops = 1 - _moving(6, 32, 32)
    batch, _ = paste_back(crops, info, original)
    paster = FramePaster(info, original)
    buffer = np.empty((90, 120, 3), np.float32)
    streamed = [torch.from_numpy(paster.frame(i, crops[i].numpy(), out=buffer).copy()) for i in range(6)]
    assert torch.equal(torch.stack(streamed), batch)
    path, count, first = stream_to_video(iter([crops[:4], crops[4:]]), tmp_path / "pasted.mp4", 10,
                                         frame_fn=lambda i, c: paster.frame(i, c, out=buffer))
    assert count == 6 and torch.equal(first, batch[:1])
    decoded, _, _ = read_video(path)
    assert decoded.shape == (6, 90, 120, 3) and (decoded - batch).abs().mean() < 0.03
    assert decoded[:, 40:60, 50:70].std(0).mean() > 0.01                           # the face moves


def test_fill_frames_preallocates_exactly():
    clips = [torch.rand(4, 8, 8, 3), torch.rand(4, 8, 8, 3), torch.rand(2, 8, 8, 3)]
    assert torch.equal(fill_frames(iter(clips), 10), torch.cat(clips))
    with pytest.raises(ValueError, match="expected 11 frames, got 10"):
        fill_frames(iter(clips), 11)
    with pytest.raises(ValueError, match="do not fit"):
        fill_frames(iter(clips), 9)


def test_components_inplace_shares_the_frames():
    frames = torch.rand(3, 8, 10, 3) * 1.2
    copied = frames_to_components(frames, 10)["images"]
    shared = frames_to_components(frames, 10, inplace=True)["images"]
    assert shared.data_ptr() == frames.data_ptr() and torch.equal(shared, copied)
    odd = torch.rand(3, 7, 10, 3)
    assert frames_to_components(odd, 10, inplace=True)["images"].shape == (3, 8, 10, 3)      # padded: a new batch


def test_hunyuan_chunked_decode_gives_the_same_frames(hunyuan_case):
    from portrait_animation.hunyuan_portrait import animate as A

    bundle, cond, _ = hunyuan_case
    s = A.settings_for(cond, num_inference_steps=2, n_sample_frames=4, overlap=1, pad_frames=2, decode_chunk_size=3)
    whole = A.animate(bundle, cond, s, seed=5)
    chunks = list(A.iter_animate(bundle, cond, s, seed=5))
    assert [c.shape[0] for c in chunks] == [1, 3, 3]          # padded 11 frames in chunks of 3, 2 pads trimmed each end
    assert torch.equal(torch.cat(chunks), whole)
    full = A.pasted_frames(cond, whole)
    streamed = np.stack([f for c in chunks for f in A.iter_pasted(cond, c)])
    assert streamed.dtype == np.uint8 and np.array_equal(streamed.astype(np.float32) / 255, full.numpy())
