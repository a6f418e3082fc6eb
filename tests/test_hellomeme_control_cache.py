"""HelloMeme video: control features computed once per driving frame (bounded host store), batched decoding.

Tiny random models (tests/test_hellomeme_pipeline.py's stand-ins) on the CPU.
"""
from __future__ import annotations

import torch

from portrait_animation.sk_attention.pipeline_image import (DEFAULT_CONTROL_CACHE_BYTES, ComputedControls,
                                                            _BoundedStore)
from portrait_animation.sk_attention.pipeline_video import DEFAULT_DECODE_BATCH, VideoGeneration
from test_hellomeme_pipeline import reference_image, runtime, text, tiny_models


def _controls(models, num_frames, cache_bytes=None):
    def condition(frames):  # pose images of these frames only, deterministic per frame
        return torch.stack([torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(f)) * 2 - 1
                            for f in frames], dim=2)

    emo = torch.randn(1, num_frames, 548, generator=torch.Generator().manual_seed(5))
    options = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    return ComputedControls(models.control_encoder, models.control_projector, condition, emo_embedding=emo,
                            num_frames=num_frames, **options)


def test_control_features_are_computed_once_per_frame_and_equal_a_recompute():
    models, _ = tiny_models("v5")
    cached, fresh = _controls(models, 8), _controls(models, 8, cache_bytes=0)
    assert cached.cache.max_bytes == DEFAULT_CONTROL_CACHE_BYTES
    calls = models.control_encoder.calls
    with torch.no_grad():
        first = cached.features([0, 1, 2, 3], "cpu", torch.float32)
        assert sum(calls) == 4
        again = cached.features([3, 4, 5], "cpu", torch.float32)  # overlapping window: only 4, 5 are new
        assert sum(calls) == 6
        for _ in range(3):  # later steps: nothing recomputed
            cached.features([0, 1, 2, 3], "cpu", torch.float32)
        assert sum(calls) == 6
        ref_a, ref_b = fresh.features([0, 1, 2, 3], "cpu", torch.float32), fresh.features([3, 4, 5], "cpu",
                                                                                         torch.float32)
    for k in first:
        torch.testing.assert_close(first[k], ref_a[k], rtol=0, atol=0)
        torch.testing.assert_close(again[k], ref_b[k], rtol=0, atol=0)
    # the store holds an own copy per frame (a slice must not keep its whole window alive)
    for frame_feats in cached.cache.items.values():
        for v in frame_feats.values():
            assert v.shape[2] == 1 and v.untyped_storage().nbytes() == v.numel() * v.element_size()
    assert cached.cache.bytes == sum(_BoundedStore.size(d) for d in cached.cache.items.values())


def test_control_store_is_bounded_and_recomputes_beyond_it():
    models, _ = tiny_models("v5")
    probe = _controls(models, 6)
    with torch.no_grad():
        one = _BoundedStore.size(probe.features([0], "cpu", torch.float32))
    controls = _controls(models, 6, cache_bytes=3 * one + one // 2)  # room for 3 frames
    calls = models.control_encoder.calls
    calls.clear()
    with torch.no_grad():
        for _ in range(3):
            controls.features(range(6), "cpu", torch.float32)
    assert sorted(controls.cache.items) == [0, 1, 2]  # fill until full: the first frames stay
    assert controls.cache.peak_bytes <= controls.cache.max_bytes
    assert calls == [1] * 12  # one frame per call; frames 3..5 are recomputed every time


def test_video_computes_each_control_frame_once_and_matches_recomputing():
    models, _ = tiny_models("v5")
    calls = models.control_encoder.calls

    def run(cache_bytes):
        calls.clear()
        job = VideoGeneration(models, runtime(), reference_image((128, 128)), text(1),
                              _controls(models, 14, cache_bytes), negative_prompt_embeds=text(2), steps=2,
                              guidance_scale=1.5, noise=3, decode=False)
        with torch.no_grad():
            return job.run(), job, list(calls)

    cached, job, cached_calls = run(None)
    recomputed, _, recomputed_calls = run(0)
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=0)
    assert len(job.plan) == 2 and job.stats.unet_calls == 2 * (1 + 2)
    # 14 frames once, plus the CFG negative once; without the store every window of every step recomputes
    assert sum(cached_calls) == 14 + 1
    assert sum(recomputed_calls) > 2 * sum(cached_calls)
    assert job.stats.control_cache_peak_bytes > 0


def test_video_decodes_in_batches_like_one_frame_at_a_time():
    models, _ = tiny_models("v5")
    sizes = []
    dec = models.decode_vae
    original = dec.decode
    dec.decode = lambda z, *a, **kw: (sizes.append(z.shape[0]), original(z, *a, **kw))[1]

    def run(**options):
        sizes.clear()
        job = VideoGeneration(models, runtime(), reference_image((128, 128)), text(1), _controls(models, 10),
                              negative_prompt_embeds=text(2), steps=1, guidance_scale=1.5, noise=3, **options)
        with torch.no_grad():
            return list(job), list(sizes)

    batched, batched_sizes = run()
    single, single_sizes = run(decode_batch=1)
    dec.decode = original
    assert batched_sizes == [DEFAULT_DECODE_BATCH, 10 - DEFAULT_DECODE_BATCH] and single_sizes == [1] * 10
    assert [i for i, _ in batched] == list(range(10))
    for (_, a), (_, b) in zip(batched, single):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
