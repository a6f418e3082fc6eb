"""Lip-sync metric (SyncNet): the numpy MFCC against python_speech_features, the offset search and the confidence on
constructed embeddings (shifted -> that offset and a high confidence; shuffled -> a low one), and the loader on a
stand-in in the released ``syncnet_v2.model`` layout (random weights: no real SyncNet weights here, so these numbers
say the pipeline runs end to end, not how well a real SyncNet scores this clip)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from portrait_animation.metrics import syncnet
from portrait_animation.metrics.syncnet import SyncNet, load_syncnet, mfcc, required_keys, sync_search


# ---- MFCC ----------------------------------------------------------------------------------------------------------
def test_mfcc_matches_python_speech_features(data_dir):
    psf = pytest.importorskip("python_speech_features")  # a test-only requirement (tests/requirements.txt)
    from portrait_animation.media.audio import load_audio, prepare_audio

    wav = prepare_audio(load_audio(data_dir / "speech.wav"), 16000)["waveform"][0, 0].numpy()
    pcm = np.round(wav[:16000 * 3] * 32767).astype(np.int16)   # what the reference reads from a wav file
    ours, ref = mfcc(pcm, 16000), psf.mfcc(pcm, 16000)
    assert ours.shape == ref.shape == (299, 13)  # 1 + ceil((48000 - 400) / 160)
    assert np.abs(ours - ref).max() < 1e-6 * max(1.0, np.abs(ref).max()), np.abs(ours - ref).max()
    assert ref.std(0).min() > 0.1  # speech: every coefficient moves
    # short input: one zero-padded frame; silence: log(eps) energies, still finite
    assert mfcc(np.ones(100), 16000).shape == (1, 13)
    assert np.allclose(mfcc(np.zeros(1600), 16000), psf.mfcc(np.zeros(1600), 16000))


def test_mfcc_hand_computed_frame():
    """One frame of a pure tone by the textbook steps (no pre-emphasis, no lifter): energy in c0, and the log mel
    spectrum's DCT."""
    sr, n = 16000, 400
    t = np.arange(n) / sr
    x = np.sin(2 * np.pi * 1000 * t)
    got = mfcc(x, sr, preemph=0.0, lifter=0)[0]
    power = np.abs(np.fft.rfft(x, 512)) ** 2 / 512
    assert got[0] == pytest.approx(np.log(power.sum()))
    logmel = np.log(power @ syncnet.mel_filterbank(26, 512, sr).T)
    dct = [np.sqrt((1 if k == 0 else 2) / 26) * sum(logmel[i] * np.cos(np.pi * k * (2 * i + 1) / 52)
                                                    for i in range(26)) for k in range(13)]
    assert np.allclose(got[1:], dct[1:])
    # the triangles: each peaks at 1 and the 1 kHz tone falls into the filters around 1 kHz only
    bank = syncnet.mel_filterbank(26, 512, sr)
    assert bank.shape == (26, 257) and np.allclose(bank.max(1), 1.0)
    assert np.argmax(power @ bank.T) in range(6, 10)


# ---- offset search -------------------------------------------------------------------------------------------------
def _signal(n: int = 80, d: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n + 40, d, generator=g)
    return torch.nn.functional.avg_pool1d(base.T[None], 3, 1, 1)[0].T  # a little temporal smoothness


@pytest.mark.parametrize("k", [0, 3, -5, 12])
def test_offset_search_finds_the_shift(k):
    sig = _signal()
    audio = sig[20:100]
    video = sig[20 - k:100 - k]          # video window i shows audio window i - k
    res = sync_search(video, audio, vshift=15)
    assert res.offset == k
    # exact match except the |k| windows whose audio lies past the clip's ends (zero embeddings there)
    exposed = (video[:k] if k > 0 else video[len(video) + k:]).norm(dim=1).sum() / len(video) if k else 0.0
    assert res.min_distance == pytest.approx(float(exposed), abs=1e-3)
    assert res.confidence > 5.0 and res.min_distance < 0.15 * np.median(res.mean_distance)  # <= 12 of 80 exposed
    assert res.mean_distance.shape == (31,) and np.argmin(res.mean_distance) == 15 - k
    assert np.mean(res.window_confidence) == pytest.approx(res.confidence, rel=1e-5)


def test_shuffled_video_has_low_confidence():
    sig = _signal()
    audio = sig[20:100]
    synced = sync_search(audio + 0.3 * torch.randn_like(audio), audio)
    perm = torch.randperm(len(audio), generator=torch.Generator().manual_seed(1))
    shuffled = sync_search(audio[perm], audio)
    assert synced.offset == 0
    assert shuffled.confidence < 0.25 * synced.confidence
    assert shuffled.min_distance > 2 * synced.min_distance  # noise 0.3 per dim: ~2.4 vs ~6 apart


# ---- the network and the loader ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    from tests.helpers.tiny_models import write_syncnet_standin

    return write_syncnet_standin(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model")


def test_released_layout_keys_and_shapes():
    model = SyncNet()
    keys = required_keys(model)
    sd = model.state_dict()
    assert len(keys) == 2 * (6 * 6 + 8) and len(sd) == len(keys) + 14  # 6 conv+BN per tower, 2 heads; 14 BNs
    assert [k for k in keys if k.startswith("netcnnaud.") and k.endswith(".weight")] == \
        [f"netcnnaud.{i}.weight" for i in (0, 1, 4, 5, 8, 9, 11, 12, 14, 15, 18, 19)]
    assert [k for k in keys if k.startswith("netfclip.")] == \
        [f"netfclip.{k}" for k in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                   "3.weight", "3.bias")]
    assert tuple(sd["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(sd["netcnnlip.18.weight"].shape) == (512, 256, 1, 6, 6)
    assert tuple(sd["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)
    assert tuple(sd["netfcaud.3.weight"].shape) == (1024, 512)
    with torch.no_grad():
        assert model.eval().embed_audio(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
        assert model.embed_video(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)


def test_loader_errors_name_the_file_and_keys(tmp_path, standin):
    state = torch.load(standin, weights_only=True)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    del state["netcnnlip.4.weight"], state["netfcaud.3.bias"]
    bad = tmp_path / "cut.model"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"cut\.model.*2 key\(s\) missing.*netcnnlip\.4\.weight"):
        load_syncnet(bad)
    from portrait_animation.loaders.store import MissingModelFiles, ModelStore

    with pytest.raises(MissingModelFiles) as err:
        syncnet.find_weights(ModelStore.at(tmp_path / "models"))
    text = str(err.value) + err.value.hint
    assert "portrait_animation/metrics/syncnet_v2.model" in text and syncnet.WEIGHTS_URL in text
    placed = tmp_path / "models" / "portrait_animation" / "metrics" / "syncnet_v2.model"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(standin.read_bytes())
    assert syncnet.find_weights(ModelStore.at(tmp_path / "models")) == placed


def test_end_to_end_on_real_media(data_dir, standin):
    from portrait_animation.face.detect import FaceDetector
    from portrait_animation.media.audio import load_audio
    from portrait_animation.media.video import read_video

    frames, fps, _ = read_video(data_dir / "jue.mp4", max_frames=36, with_audio=False)
    audio = load_audio(data_dir / "speech.wav")
    model = load_syncnet(standin)
    steps = []
    det = FaceDetector(backend="bundled")
    try:
        series = syncnet.lip_sync(frames, float(fps), audio, model, det, progress=steps.append)
    finally:
        det.close()
    n25 = len(syncnet.resample_indices(len(frames), float(fps), 25))
    assert len(series.values) == n25 - 5 and all(v is not None and math.isfinite(v) for v in series.values)
    assert np.std(series.values) > 0
    d = json.loads(series.to_json())
    assert d["metric"] == "lip_sync" and d["better"] == "higher" and d["windows"] == n25 - 5
    assert -15 <= d["av_offset"] <= 15 and d["min_distance"] > 0 and d["confidence"] >= 0
    assert d["mean"] == pytest.approx(d["confidence"], abs=1e-4)
    dist = np.array(list(d["distance_per_offset"].values()))
    assert dist.shape == (31,) and np.isfinite(dist).all() and dist.std() > 0
    assert sum(steps) == syncnet.progress_steps(len(frames), float(fps))


def test_face_crops_follow_the_mouth(data_dir):
    """The crop holds the face with the mouth below its centre (the reference crop reaches 1.8 half-sizes below the
    face's centre and 1 above), horizontally centred: MediaPipe finds the face again in every crop."""
    from portrait_animation.face.detect import FaceDetector
    from portrait_animation.media.video import read_video
    from portrait_animation.metrics.faces import track_faces

    frames, _, _ = read_video(data_dir / "jue.mp4", max_frames=3, with_audio=False)
    det = FaceDetector(backend="bundled")
    try:
        points = track_faces(frames, det)
        crops = syncnet.face_crops(frames, points)
        again = track_faces(torch.from_numpy(crops[:, :, :, ::-1].copy() / 255.0).float(), det)
    finally:
        det.close()
    assert crops.shape == (3, 224, 224, 3) and crops.dtype == np.float32 and 0 <= crops.min() and crops.max() <= 255
    assert all(p is not None for p in again)
    mouth = again[0][[13, 14], :2].mean(0)  # inner lip midpoints
    assert 0.5 * 224 < mouth[1] < 0.8 * 224 and abs(mouth[0] - 112) < 25, mouth


def test_resample_indices_by_time():
    assert syncnet.resample_indices(50, 25, 25) == list(range(50))
    assert syncnet.resample_indices(30, 30, 25) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 18, 19, 20,
                                                    21, 22, 24, 25, 26, 27, 28]
    assert syncnet.resample_indices(10, 12.5, 25) == [i // 2 for i in range(20)]


# ---- the node on the stand-in comfy_api ----------------------------------------------------------------------------
def test_node_outputs_and_missing_weights(monkeypatch, tmp_path, data_dir, standin):
    import importlib
    import types

    from helpers.comfy_stub import forget_stub_nodes, install_stub_comfy_api
    from portrait_animation.loaders.store import MissingModelFiles
    from portrait_animation.media.audio import load_audio
    from portrait_animation.media.video import read_video

    latest = install_stub_comfy_api(monkeypatch)
    latest.io.NodeOutput = lambda *values, ui=None: (values, ui)
    latest.ui = types.SimpleNamespace(PreviewImage=lambda image, cls=None: types.SimpleNamespace(
        as_dict=lambda: {"images": [{"shape": tuple(image.shape)}]}))
    monkeypatch.setenv("PORTRAIT_ANIMATION_MODELS", str(tmp_path / "models"))
    try:
        nodes = importlib.import_module("portrait_animation.nodes.metrics")
        schema = nodes.LipSyncMetric.define_schema()
        assert schema["node_id"] == "PortraitAnim_LipSyncMetric" and schema["display_name"] == "Lip Sync (SyncNet)"
        assert [i["id"] for i in schema["inputs"]] == ["images", "fps", "audio", "detector"]
        frames, fps, _ = read_video(data_dir / "jue.mp4", max_frames=14, with_audio=False)
        audio = load_audio(data_dir / "speech.wav")
        with pytest.raises(MissingModelFiles) as err:
            nodes.LipSyncMetric.execute(frames, float(fps), audio)
        assert "syncnet_v2.model" in str(err.value) and syncnet.WEIGHTS_URL in str(err.value)
        assert str(tmp_path / "models" / "portrait_animation" / "metrics") in str(err.value)
        placed = tmp_path / "models" / "portrait_animation" / syncnet.WEIGHTS_DEST
        placed.parent.mkdir(parents=True)
        placed.write_bytes(standin.read_bytes())
        with pytest.raises(ValueError, match="'fps'"):
            nodes.LipSyncMetric.execute(frames, 0.0, audio)
        (mean, per_window, plot, summary), ui = nodes.LipSyncMetric.execute(frames, float(fps), audio)
    finally:
        forget_stub_nodes()
    n = len(syncnet.resample_indices(len(frames), float(fps), 25)) - 5
    data = json.loads(summary)
    assert len(per_window) == n == data["windows"] and all(math.isfinite(v) for v in per_window)
    assert mean == pytest.approx(data["confidence"], abs=1e-4) and math.isfinite(data["min_distance"])
    assert isinstance(data["av_offset"], int) and plot.shape[0] == 1 and plot.shape[-1] == 3
    assert ui["pa_metrics"] == [data] and ui["images"][0]["shape"] == tuple(plot.shape)
