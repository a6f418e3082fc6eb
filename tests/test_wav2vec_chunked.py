"""wav2vec2's convolutional feature encoder evaluated in overlapping chunks gives the whole-signal frames: lengths on,
off, around and below chunk boundaries, the first-layer GroupNorm over the whole time axis (streamed statistics), the
"layer" norm variant, a batch, and MEMO's feature path with chunking on and off."""
from __future__ import annotations

import pytest
import torch

from portrait_animation.audio import wav2vec as w2v

# the released layout's convolutions (kernel 10/3/3/3/3/2/2, strides 5/2/2/2/2/2/2) with narrow channels
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(24,) * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def encoder(norm="group", seed=0):
    torch.manual_seed(seed)
    model = w2v.Wav2Vec2Encoder(w2v.Wav2Vec2Config(feat_extract_norm=norm, **SMALL)).eval()
    with torch.no_grad():  # non-trivial norm affine so that a wrong statistic shows; O(1) activations
        for m in model.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        for layer in model.feature_extractor.conv_layers[1:]:
            w = layer.conv.weight
            w.normal_(0.0, (2.0 / (w.shape[1] * w.shape[2])) ** 0.5)
    return model


def signal(samples, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    # a DC offset and a loud second half: the per-channel statistics differ from chunk to chunk
    x = 0.3 + torch.sin(2 * torch.pi * 220 * t) * 0.2 + 0.1 * torch.randn(batch, samples, generator=g)
    x[:, samples // 2:] *= 3
    return x


def test_geometry_of_the_released_layout():
    fe = encoder().feature_extractor
    assert (fe.hop, fe.receptive_field) == (320, 400)
    for s in (399, 400, 719, 720, 16000, 16000 * 7 + 123):
        assert fe.num_frames(s) == fe(torch.zeros(1, s)).shape[-1] if s >= 400 else fe.num_frames(s) == 0


CHUNK = 7
# frames N = (S - 400) // 320 + 1: exactly 1, 2, 3 chunks; one frame more or less; shorter than one chunk; 1 frame
LENGTHS = [400, 400 + 320 * (CHUNK - 1), 400 + 320 * (CHUNK - 1) + 319, 400 + 320 * CHUNK,
           400 + 320 * (2 * CHUNK - 1), 400 + 320 * (2 * CHUNK - 1) + 1, 400 + 320 * (3 * CHUNK - 1) + 200,
           400 + 320 * (3 * CHUNK) - 1, 16000 + 17]


@pytest.mark.parametrize("samples", LENGTHS)
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_chunked_equals_whole(samples, norm):
    model = encoder(norm)
    x = signal(samples)
    with torch.no_grad():
        whole = model.feature_extractor(x)
        chunked = model.feature_extractor.chunked(x, CHUNK)
    assert chunked.shape == whole.shape == (1, 24, (samples - 400) // 320 + 1)
    assert whole.abs().mean() > 0.05  # activations of order one: atol 1e-5 is a tight check
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_group_norm_statistics_come_from_the_whole_signal():
    """Chunks normalised on their own would differ: the streamed statistics are those of the whole axis."""
    model = encoder("group")
    fe = model.feature_extractor
    x = signal(400 + 320 * 40)
    with torch.no_grad():
        mean, rstd = fe.first_layer_stats(x, 6)
        conv64 = torch.nn.Conv1d(1, 24, 10, stride=5, bias=False).double()
        conv64.weight.copy_(fe.conv_layers[0].conv.weight)
        y = conv64(x[:, None].double())  # the whole axis, in float64
        torch.testing.assert_close(mean, y.mean(-1), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(rstd, torch.rsqrt(y.var(-1, unbiased=False) + 1e-5), atol=1e-9, rtol=1e-9)
        whole = fe(x)
        naive = torch.cat([fe(x[:, a * 320:(min(41, a + 10) - 1) * 320 + 400]) for a in range(0, 41, 10)], -1)
    assert (naive - whole).abs().max() > 1e-2 * whole.abs().max()  # per-chunk normalisation is wrong: the test can see it


def test_batched_chunks_and_bad_chunk_size():
    model = encoder()
    x = signal(400 + 320 * 30, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(model.feature_extractor.chunked(x, 4), model.feature_extractor(x),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="chunk_frames"):
        model.feature_extractor.chunked(x, 0)


@pytest.mark.parametrize("seconds", [0.01, 1.0, 2.37])
def test_memo_feature_path_chunked_equals_whole(seconds):
    model = encoder()
    wave = signal(int(16000 * seconds))[0]
    whole = w2v.wav2vec_frame_features(model, wave, 25, 4, chunk_frames=None)
    chunked = w2v.wav2vec_frame_features(model, wave, 25, 4, chunk_frames=9)
    assert chunked.num_frames == whole.num_frames and chunked.notes == whole.notes
    for name in ("cnn_features", "cnn_features_resampled", "hidden_states", "audio_emb"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=1e-5, rtol=1e-5, msg=name)


def test_default_path_is_chunked():
    import inspect

    assert inspect.signature(w2v.wav2vec_frame_features).parameters["chunk_frames"].default == w2v.CNN_CHUNK_FRAMES
