"""Audio/video IO of the ``media`` package: PyAV decoding, sinc resampling, frame-exact audio fitting, video reading,
h264-safe frames and mp4 writing. Plain torch + PyAV; no ComfyUI, no GPU."""
from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from portrait_animation import media
from portrait_animation.media import audio as maudio
from portrait_animation.media import MediaError


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def tone(freq, sr, seconds=1.0, amp=0.5, channels=1, batch=1):
    t = torch.arange(int(round(sr * seconds)), dtype=torch.float64) / sr
    x = (amp * torch.sin(2 * math.pi * freq * t)).float()
    return x.expand(batch, channels, -1).clone()


def dominant_freq(x: torch.Tensor, sr: int) -> float:
    x = x.double().flatten()
    spec = torch.fft.rfft(x * torch.hann_window(len(x), periodic=False, dtype=torch.float64)).abs()
    return float(spec.argmax()) * sr / len(x)


def amplitude(x: torch.Tensor, margin: int) -> float:
    """Sine amplitude from the RMS of the middle part (edges see the zero padding of the filter)."""
    mid = x.double().flatten()[margin:-margin]
    return float(mid.pow(2).mean().sqrt() * math.sqrt(2))


def reference_resample(x: np.ndarray, orig: int, new: int, width_zc: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """Slow, literal windowed-sinc interpolation: y[j] = sum_i x[i] * h(i/orig - j/new), one output at a time."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    n_out = -(-len(x) * new // orig)
    i = np.arange(len(x), dtype=np.float64)
    y = np.zeros(n_out)
    for j in range(n_out):
        t = np.clip((i / orig - j / new) * base, -width_zc, width_zc)
        h = np.sinc(t) * np.cos(t * np.pi / (2 * width_zc)) ** 2 * base / orig
        y[j] = (x * h).sum()
    return y


def write_wav(path, data: np.ndarray, sr: int):
    """Write float [C, T] as 16-bit PCM wav with PyAV (packed/interleaved samples)."""
    layout = "mono" if data.shape[0] == 1 else "stereo"
    pcm = np.clip(np.round(data * 32767), -32768, 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T.reshape(1, -1)), format="s16", layout=layout)
        frame.sample_rate = sr
        frame.pts = 0
        for p in stream.encode(frame):
            out.mux(p)
        for p in stream.encode(None):
            out.mux(p)


@pytest.fixture(scope="module")
def speech(data_dir):
    return media.load_audio(data_dir / "speech.wav")


@pytest.fixture(scope="module")
def jue(data_dir):
    return media.read_video(data_dir / "jue.mp4")


# ---------------------------------------------------------------------------------------------------------------------
# audio loading
# ---------------------------------------------------------------------------------------------------------------------
def test_load_speech_wav(speech):
    w = speech["waveform"]
    assert speech["sample_rate"] == 44100
    assert w.dtype == torch.float32
    assert tuple(w.shape) == (1, 2, 15 * 44100)
    assert float(w.abs().max()) <= 1.0
    assert float(w.abs().max()) > 0.05          # real speech, not zeros
    assert not media.is_silent(speech)
    assert media.audio_duration(speech) == pytest.approx(15.0)


def test_load_keeps_channel_order_of_interleaved_pcm(tmp_path):
    left, right = tone(440, 22050)[0, 0], tone(1000, 22050, amp=0.25)[0, 0]
    write_wav(tmp_path / "lr.wav", torch.stack([left, right]).numpy(), 22050)
    audio = media.load_audio(tmp_path / "lr.wav")
    w = audio["waveform"]
    assert audio["sample_rate"] == 22050 and tuple(w.shape) == (1, 2, 22050)
    assert dominant_freq(w[0, 0], 22050) == pytest.approx(440, abs=2)
    assert dominant_freq(w[0, 1], 22050) == pytest.approx(1000, abs=2)
    assert torch.allclose(w[0, 0], left, atol=1e-4) and torch.allclose(w[0, 1], right, atol=1e-4)


def test_load_audio_track_of_a_video(data_dir):
    audio = media.load_audio(data_dir / "jue.mp4")  # AAC, planar float
    assert audio["sample_rate"] == 44100 and audio["waveform"].shape[1] == 2
    assert media.audio_duration(audio) == pytest.approx(5.6, abs=0.1)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken_clip.wav"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r"broken_clip\.wav.*corrupt or not an audio file"):
        media.load_audio(bad)
    with pytest.raises(FileNotFoundError, match="no_such_file.wav"):
        media.load_audio(tmp_path / "no_such_file.wav")
    video_only = media.write_video(tmp_path / "mute.mp4", torch.rand(3, 16, 16, 3), 10)
    with pytest.raises(MediaError, match=r"mute\.mp4.*no audio stream"):
        media.load_audio(video_only)


# ---------------------------------------------------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------------------------------------------------
def test_resample_speech_to_16k_exact_length(speech):
    out = media.resample(speech["waveform"], 44100, 16000)
    assert tuple(out.shape) == (1, 2, 240000)
    assert out.dtype == torch.float32
    # same content: the 16 kHz loudness envelope follows the original
    assert amplitude(out, 1000) == pytest.approx(amplitude(speech["waveform"], 2750), rel=0.05)


def test_resample_keeps_frequency_and_amplitude_of_a_tone():
    x = tone(440, 44100, seconds=1.0, amp=0.5)
    y = media.resample(x, 44100, 16000)
    assert y.shape[-1] == 16000
    assert dominant_freq(y, 16000) == pytest.approx(440, abs=1.5)
    assert amplitude(y, 500) == pytest.approx(0.5, rel=0.01)
    up = media.resample(y, 16000, 48000)
    assert up.shape[-1] == 48000
    assert dominant_freq(up, 48000) == pytest.approx(440, abs=1.5)
    assert amplitude(up, 1500) == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("freq", [10000, 15000, 20000])
def test_downsampling_removes_tones_above_the_new_nyquist(freq):
    x = tone(freq, 44100, amp=0.5)
    y = media.resample(x, 44100, 16000)
    # without the low-pass these would alias to 6 kHz, 1 kHz and 4 kHz at full amplitude
    assert amplitude(y, 500) < 0.01 * 0.5  # below -40 dB (a filter with 6 zero crossings reaches ~-45 dB)
    naive = x[..., ::3]  # plain decimation (14.7 kHz) aliases at full amplitude: the measure can fail
    assert amplitude(naive, 500) > 0.3


@pytest.mark.parametrize("orig,new", [(44100, 16000), (11025, 16000), (48000, 16000), (8000, 22050)])
def test_resample_matches_literal_windowed_sinc(orig, new):
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(600)).float()
    fast = media.resample(x, orig, new).double().numpy()
    ref = reference_resample(x.double().numpy(), orig, new)
    assert fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, atol=2e-5)


def test_gather_path_equals_polyphase_path():
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 5000))).float()
    n_out = -(-5000 * 160 // 441)
    poly = maudio._resample_polyphase(x, 441, 160, 6, 0.99, n_out)
    gather = maudio._resample_gather(x, 441, 160, 6, 0.99, n_out, chunk_elems=4096)
    torch.testing.assert_close(poly, gather, atol=1e-5, rtol=0)
    # co-prime rates with a huge polyphase kernel go through the gather path and still work
    y = media.resample(tone(440, 44101, seconds=0.5), 44101, 16000)
    assert y.shape[-1] == math.ceil(22050 * 16000 / 44101)
    assert dominant_freq(y, 16000) == pytest.approx(440, abs=3)


@pytest.mark.parametrize("sr", [44100, 22050, 8000, 11025, 48000, 16000])
def test_prepare_audio_from_odd_rates(sr):
    x = tone(440, sr, seconds=0.5, channels=2)
    out = media.prepare_audio(media.make_audio(x, sr), sample_rate=16000, mono=True)
    assert out["sample_rate"] == 16000
    assert tuple(out["waveform"].shape) == (1, 1, math.ceil(x.shape[-1] * 16000 / sr))
    assert dominant_freq(out["waveform"], 16000) == pytest.approx(440, abs=3)
    assert amplitude(out["waveform"], 300) == pytest.approx(0.5, rel=0.02)


# ---------------------------------------------------------------------------------------------------------------------
# channels, length fitting, frame counts
# ---------------------------------------------------------------------------------------------------------------------
def test_mono_downmix_averages_channels():
    w = torch.stack([torch.full((100,), 0.2), torch.full((100,), -0.6)])[None]
    mono = media.to_mono(media.make_audio(w, 16000))
    assert tuple(mono["waveform"].shape) == (1, 1, 100)
    assert torch.allclose(mono["waveform"], torch.full((1, 1, 100), -0.2))
    kept = media.prepare_audio(media.make_audio(w, 16000), sample_rate=16000, mono=False)
    assert kept["waveform"].shape[1] == 2


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("frames", [1, 2, 100, 121, 451, 500])
def test_trim_or_pad_to_frame_count_is_exact(speech, fps, frames):
    out = media.prepare_audio(speech, sample_rate=16000, mono=True, frames=frames, fps=fps)
    expected = round(frames / fps * 16000)
    assert tuple(out["waveform"].shape) == (1, 1, expected)
    assert media.audio_frame_count(out, fps) == frames


def test_trim_keeps_the_start_and_pad_adds_silence(speech):
    full = media.prepare_audio(speech, sample_rate=16000)["waveform"]            # 240000 samples (15 s)
    short = media.prepare_audio(speech, sample_rate=16000, frames=50, fps=25)["waveform"]
    assert torch.equal(short, full[..., :32000])
    long = media.prepare_audio(speech, sample_rate=16000, frames=450, fps=25)["waveform"]
    assert long.shape[-1] == 288000
    assert torch.equal(long[..., :240000], full)
    assert float(long[..., 240000:].abs().max()) == 0.0
    only_trim = media.prepare_audio(speech, sample_rate=16000, frames=450, fps=25, mode="trim")["waveform"]
    only_pad = media.prepare_audio(speech, sample_rate=16000, frames=50, fps=25, mode="pad")["waveform"]
    untouched = media.prepare_audio(speech, sample_rate=16000, frames=50, fps=25, mode="none")["waveform"]
    assert only_trim.shape[-1] == only_pad.shape[-1] == untouched.shape[-1] == 240000


def test_audio_frame_count(speech):
    assert media.audio_frame_count(speech, 25) == 375
    assert media.audio_frame_count(speech, 30) == 450
    assert media.audio_frame_count(speech, 29.97) == 450        # 449.55 frames -> ceil
    assert media.audio_frame_count(speech, Fraction(30000, 1001)) == 450
    assert media.audio_frame_count(media.silent_audio(0), 25) == 0
    assert media.samples_for_frames(3, 29.97, 48000) == round(Fraction(3) / Fraction("29.97") * 48000)


def test_silence_and_a_10ms_clip():
    silence = media.silent_audio(44100, 44100, channels=2)
    assert media.is_silent(silence)
    out = media.prepare_audio(silence, 16000, frames=25, fps=25)
    assert tuple(out["waveform"].shape) == (1, 1, 16000) and float(out["waveform"].abs().max()) == 0.0
    quiet = media.make_audio(tone(440, 16000, amp=10 ** (-70 / 20)), 16000)
    loud = media.make_audio(tone(440, 16000, amp=10 ** (-50 / 20)), 16000)
    assert media.is_silent(quiet) and not media.is_silent(loud)

    clip = media.make_audio(tone(440, 44100, seconds=0.01, channels=2), 44100)     # 441 samples, < 1 frame
    assert media.audio_frame_count(clip, 25) == 1
    res = media.prepare_audio(clip, 16000)
    assert tuple(res["waveform"].shape) == (1, 1, 160)
    fitted = media.prepare_audio(clip, 16000, frames=1, fps=25)
    assert fitted["waveform"].shape[-1] == 640
    assert float(fitted["waveform"][..., :100].abs().max()) > 0.1                 # the clip is still there
    assert float(fitted["waveform"][..., 200:].abs().max()) == 0.0                # then zero padding


def test_batched_audio_is_processed_per_item():
    items = [tone(f, 22050, seconds=0.3, channels=2) for f in (300, 500, 900)]
    batch = media.make_audio(torch.cat(items), 22050)
    out = media.prepare_audio(batch, 16000, mono=True, frames=7, fps=30)
    assert tuple(out["waveform"].shape) == (3, 1, round(7 / 30 * 16000))
    for i, item in enumerate(items):
        single = media.prepare_audio(media.make_audio(item, 22050), 16000, mono=True, frames=7, fps=30)
        torch.testing.assert_close(out["waveform"][i:i + 1], single["waveform"])


def test_prepare_audio_rejects_bad_arguments(speech):
    with pytest.raises(ValueError, match="fps"):
        media.prepare_audio(speech, 16000, frames=10)
    with pytest.raises(ValueError, match="mode"):
        media.prepare_audio(speech, 16000, frames=10, fps=25, mode="stretch")
    with pytest.raises(ValueError, match="fps"):
        media.prepare_audio(speech, 16000, frames=10, fps=0)


# ---------------------------------------------------------------------------------------------------------------------
# video reading
# ---------------------------------------------------------------------------------------------------------------------
def test_read_jue(jue):
    frames, fps, audio = jue
    assert tuple(frames.shape) == (84, 512, 512, 3)
    assert frames.dtype == torch.float32
    assert fps == 15 and isinstance(fps, Fraction)
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
    assert float(frames.max()) > 0.8 and float(frames.min()) < 0.2            # real content, 0..1 scale
    assert float((frames[1:] - frames[:-1]).abs().mean()) > 1e-3              # frames differ (it moves)
    assert audio["sample_rate"] == 44100
    assert audio["waveform"].shape[-1] == round(84 / 15 * 44100)             # exactly the frames' duration


def test_read_driving_video(data_dir):
    frames, fps, audio = media.read_video(data_dir / "driving_video.mp4", with_audio=False)
    assert tuple(frames.shape) == (120, 512, 512, 3)
    assert fps == 30
    assert audio is None
    info = media.video_info(data_dir / "driving_video.mp4")
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (120, 30, 512, 512)
    assert info["has_audio"] and info["duration"] == pytest.approx(4.0, abs=0.1)


def test_video_info_jue(data_dir):
    info = media.video_info(data_dir / "jue.mp4")
    assert info["frames"] == 84 and info["fps"] == 15
    assert (info["width"], info["height"]) == (512, 512)
    assert info["has_audio"] and info["audio_sample_rate"] == 44100
    assert info["duration"] == pytest.approx(5.6, abs=0.05)


def test_read_video_selection_matches_full_decode(data_dir, jue):
    frames, fps, audio = media.read_video(data_dir / "jue.mp4", start=10, step=2, max_frames=20)
    assert frames.shape[0] == 20
    assert fps == Fraction(15, 2)
    assert torch.equal(frames, jue[0][10:50:2])
    assert audio["waveform"].shape[-1] == round(20 / Fraction(15, 2) * 44100)
    # the audio span starts at frame 10 (10/15 s into the track)
    start = round(10 / 15 * 44100)
    torch.testing.assert_close(audio["waveform"][..., :1000], jue[2]["waveform"][..., start:start + 1000])
    tail, _, _ = media.read_video(data_dir / "jue.mp4", start=80)
    assert tail.shape[0] == 4
    with pytest.raises(MediaError, match="no frames selected"):
        media.read_video(data_dir / "jue.mp4", start=84)


def test_iter_video_frames_streams_uint8(data_dir):
    it = media.iter_video_frames(data_dir / "driving_video.mp4", max_frames=5, size=(128, 96))
    frames = list(it)
    assert len(frames) == 5
    assert all(f.dtype == np.uint8 and f.shape == (96, 128, 3) for f in frames)


def test_corrupt_and_missing_video(tmp_path):
    bad = tmp_path / "corrupt_video.mp4"
    bad.write_bytes(np.random.default_rng(3).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r"corrupt_video\.mp4"):
        media.read_video(bad)
    with pytest.raises(MediaError, match=r"corrupt_video\.mp4"):
        media.video_info(bad)
    with pytest.raises(FileNotFoundError, match="missing_video.mp4"):
        media.read_video(tmp_path / "missing_video.mp4")
    wav = tmp_path / "sound_only.wav"
    write_wav(wav, tone(440, 8000, seconds=0.1)[0].numpy(), 8000)
    with pytest.raises(MediaError, match=r"sound_only\.wav.*no video stream"):
        media.read_video(wav)


# ---------------------------------------------------------------------------------------------------------------------
# h264-safe frames, components and writing
# ---------------------------------------------------------------------------------------------------------------------
def test_even_size_pad_and_crop():
    x = torch.rand(2, 5, 7, 3)
    padded = media.even_size(x, "pad")
    assert tuple(padded.shape) == (2, 6, 8, 3)
    assert torch.equal(padded[:, :5, :7], x)
    assert torch.equal(padded[:, 5, :7], x[:, 4])      # repeated last row
    assert torch.equal(padded[:, :5, 7], x[:, :, 6])   # repeated last column
    cropped = media.even_size(x, "crop")
    assert tuple(cropped.shape) == (2, 4, 6, 3) and torch.equal(cropped, x[:, :4, :6])
    assert media.even_size(x, "none") is x
    even = torch.rand(1, 4, 6, 3)
    assert media.even_size(even, "pad") is even


def test_frames_to_components_fits_audio_and_sizes():
    frames = torch.rand(10, 45, 63, 3) * 1.2 - 0.1            # out-of-range values get clamped
    audio = media.make_audio(torch.rand(2, 4, 44101) - 0.5, 44101)   # batch 2, 4 channels, odd rate, 1 s
    parts = media.frames_to_components(frames, 25, audio)
    assert tuple(parts["images"].shape) == (10, 46, 64, 3)
    assert float(parts["images"].min()) >= 0 and float(parts["images"].max()) <= 1
    assert parts["frame_rate"] == 25 and isinstance(parts["frame_rate"], Fraction)
    a = parts["audio"]
    assert a["sample_rate"] in media.AAC_SAMPLE_RATES and a["sample_rate"] == 48000
    assert tuple(a["waveform"].shape) == (1, 2, round(10 / 25 * 48000))
    assert media.frames_to_components(frames, 25, None)["audio"] is None
    assert media.frames_to_components(frames, 25, media.silent_audio(0))["audio"] is None
    short = media.frames_to_components(frames, 25, media.make_audio(torch.ones(1, 1, 100), 16000))["audio"]
    assert short["waveform"].shape[-1] == 6400 and float(short["waveform"][..., 100:].abs().max()) == 0
    with pytest.raises(ValueError, match="0 frames"):
        media.frames_to_components(torch.zeros(0, 8, 8, 3), 25)


def test_write_video_round_trip_with_odd_size_and_audio(tmp_path):
    t, h, w = 12, 45, 63
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    frames = torch.stack([torch.stack([xx, yy, torch.full_like(xx, i / t)], -1) for i in range(t)])
    audio = media.make_audio(tone(440, 16000, seconds=1.0), 16000)   # longer than the video: gets trimmed
    path = media.write_video(tmp_path / "round trip.mp4", frames, 24, audio)

    info = media.video_info(path)
    assert (info["width"], info["height"]) == (64, 46)
    assert info["frames"] == t and info["fps"] == 24
    assert info["has_audio"] and info["audio_sample_rate"] == 16000

    back, fps, back_audio = media.read_video(path)
    assert tuple(back.shape) == (t, 46, 64, 3) and fps == 24
    assert float((back[:, :h, :w] - frames).abs().mean()) < 0.02      # h264 at crf 18 is close to lossless
    assert back_audio["waveform"].shape[-1] == round(t / 24 * 16000)
    track = media.load_audio(path)["waveform"]
    assert track.shape[-1] == pytest.approx(t / 24 * 16000, abs=1100)  # trimmed to the video (+ AAC frame)
    assert dominant_freq(back_audio["waveform"][..., :8000], 16000) == pytest.approx(440, abs=5)

    cropped = media.write_video(tmp_path / "crop.mp4", (f for f in frames), 24, even="crop")
    info = media.video_info(cropped)
    assert (info["width"], info["height"], info["frames"], info["has_audio"]) == (62, 44, t, False)
    with pytest.raises(ValueError, match="even"):
        media.write_video(tmp_path / "odd.mp4", frames, 24, even="none")
    assert not (tmp_path / "odd.mp4").exists()
