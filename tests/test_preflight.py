"""Preflight estimates against measured peaks: each family's estimate (a trace of the real sampler on fake tensors)
is compared with the live CPU bytes of a real run of the same sampler on small stand-in models, at several settings,
and must stay within 15%; estimates grow with what should grow; an auto size is the largest that fits a budget;
a run that cannot fit is refused with a message naming the model, the figures and the fixes. The models' weights
are untouched by a trace."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from helpers.tiny_models import write_hunyuan_models, write_memo_models
from portrait_animation.runtime import StandaloneRuntime
from portrait_animation.runtime import preflight as pf
from test_hellomeme_pipeline import LiveCPUBytes, computed_controls, reference_image, text, tiny_models

TOLERANCE = 0.15


def within(estimate: int, measured: int) -> bool:
    return abs(estimate - measured) <= TOLERANCE * measured


def snapshot(modules):
    return {id(t): (t.data_ptr(), t.dtype, t.device) for m in modules for t in list(m.parameters()) + list(m.buffers())}


# ---- core -----------------------------------------------------------------------------------------------------------
def test_a_trace_counts_what_a_real_run_holds_without_allocating():
    lin = torch.nn.Linear(256, 512)

    def work(x):
        kept = [lin(x) for _ in range(3)]          # 3 held outputs, each (64, 512) fp32
        tmp = torch.cat(kept, dim=1)               # + one (64, 1536) at the peak
        return tmp.sum()

    x = torch.randn(64, 256)
    with torch.no_grad(), LiveCPUBytes() as real:
        work(x)
    before = snapshot([lin])
    t = pf.trace(lambda rt, make: work(make(lambda: torch.randn(64, 256))), [lin], "cpu")
    assert t.device_peak("cpu") == real.peak >= 2 * 64 * 1536 * 4
    assert t.flops == 3 * 2 * 64 * 256 * 512
    assert snapshot([lin]) == before and not any(type(p).__name__ == "FakeTensor" for p in lin.parameters())


def test_largest_fitting_picks_the_largest_size_under_the_budget():
    def est(c):
        return pf.Estimate(model="M", device="cpu", weights=100, work=10 * c, host=0, flops=0.0, seconds=0.0)

    assert pf.largest_fitting([1, 2, 4, 8, 16], est, 100 + 10 * 9, "chunk")[0] == 8
    assert pf.largest_fitting([1, 2, 4, 8, 16], est, None, "chunk")[0] == 16
    with pytest.raises(pf.PreflightError, match="will not fit even with chunk 1"):
        pf.largest_fitting([1, 2, 4], est, 105, "chunk")


def test_budget_override_caps_free_memory(monkeypatch):
    rt = StandaloneRuntime("cpu", show_progress=False)
    monkeypatch.setenv(pf.BUDGET_ENV, "12.5")
    assert pf.free_bytes(rt) == int(12.5 * pf.MB)
    monkeypatch.setenv(pf.BUDGET_ENV, "lots")
    with pytest.raises(pf.PreflightError, match=pf.BUDGET_ENV):
        pf.free_bytes(rt)


# ---- HunyuanPortrait ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hp(tmp_path_factory, parity_root):
    from portrait_animation.hunyuan_portrait.bundle import load_bundle
    from portrait_animation.loaders.store import HubCaches, ModelStore

    models = tmp_path_factory.mktemp("hp_models")
    size = write_hunyuan_models(models, parity_root)["size"]
    rt = StandaloneRuntime(device="cpu", show_progress=False)
    return load_bundle(rt, ModelStore.at(models, caches=HubCaches(hf=None, modelscope=None)), dtype="fp32"), size


def hp_conditions(n, size):
    g = torch.Generator().manual_seed(n)
    return SimpleNamespace(num_frames=n, size=size, motion=torch.randn(n, 64, 1024, generator=g),
                           appearance=torch.randn(1, 64, 1024, generator=g),
                           source=SimpleNamespace(ref_img=torch.rand(3, size, size, generator=g) * 2 - 1))


@pytest.mark.parametrize("frames,window,chunk", [(3, 4, 2), (6, 4, 4)])
def test_hunyuan_estimate_matches_the_measured_peak(hp, frames, window, chunk):
    from portrait_animation.hunyuan_portrait import animate as A
    from portrait_animation.hunyuan_portrait import preflight as P

    bundle, size = hp
    cond = hp_conditions(frames, size)
    s = A.settings_for(cond, num_inference_steps=1, n_sample_frames=window, overlap=1, pad_frames=1,
                       decode_chunk_size=chunk)
    resident = [h.module for h in bundle.sampling_models]
    before = snapshot(resident)
    est = P.estimate(bundle, s, frames, cond)
    assert snapshot(resident) == before
    with torch.no_grad(), LiveCPUBytes() as meter:
        video = A.animate(bundle, cond, s, seed=0)
    assert video.shape == (frames, size, size, 3) and torch.isfinite(video).all()
    measured = pf.module_bytes(resident) + meter.peak
    assert within(est.peak, measured), (est.peak, measured, est.stages)
    assert est.seconds > 0 and est.flops > 0 and "HunyuanPortrait" in est.summary()
    assert json.loads(est.json())["settings"]["decode_chunk"] == chunk


def test_hunyuan_estimate_grows_and_auto_chunk_fits_the_budget(hp):
    from dataclasses import replace

    from portrait_animation.hunyuan_portrait import animate as A
    from portrait_animation.hunyuan_portrait import preflight as P

    bundle, size = hp
    n = 40
    base = A.settings_for(hp_conditions(1, size), num_inference_steps=1, n_sample_frames=4, overlap=1, pad_frames=1,
                          decode_chunk_size=1)
    by_chunk = {c: P.estimate(bundle, replace(base, decode_chunk_size=c), n).stages["decode"] for c in (1, 8, 32)}
    assert by_chunk[1] < by_chunk[8] < by_chunk[32]
    longer = P.estimate(bundle, base, 4 * n)
    assert longer.peak > P.estimate(bundle, base, n).peak                  # the host sequence state grows
    # keyed by the conditions' shapes: real conditions of the stand-ins' shapes reuse the trace; other shapes do not
    assert P.estimate(bundle, base, n, conditions=hp_conditions(n, size)) is P.estimate(bundle, base, n)
    half = hp_conditions(n, size)
    half.motion = half.motion.half()
    assert P._conditions_key(half, n, size) != P._conditions_key(None, n, size)
    peaks = {c: P.estimate(bundle, replace(base, decode_chunk_size=c), n).peak for c in P.DECODE_CHUNKS if c <= n + 2}
    budget = (peaks[8] + peaks[12]) // 2
    chosen, est = P.auto_decode_chunk(bundle, n, base, free=budget)
    assert chosen.decode_chunk_size == max(c for c, p in peaks.items() if p <= budget) and est.peak <= budget
    with pytest.raises(pf.PreflightError) as e:
        P.ensure(bundle, hp_conditions(n, size), base, free=peaks[1] // 2)
    message = str(e.value)
    assert "HunyuanPortrait will not fit" in message and "decode_chunk" in message and "Nothing was run" in message


# ---- MEMO ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def memo(tmp_path_factory, parity_root):
    from portrait_animation.loaders.store import ModelStore
    from portrait_animation.memo.pipeline import load_memo_bundle

    root = tmp_path_factory.mktemp("memo_models")
    write_memo_models(root, parity_root)
    return load_memo_bundle(StandaloneRuntime("cpu", show_progress=False), ModelStore.at(root), dtype="fp32",
                            emotion_model=False, identity=False)


@pytest.mark.parametrize("frames,clip,res", [(8, 4, 64), (6, 4, 96)])
def test_memo_estimate_matches_the_measured_peak(memo, frames, clip, res):
    from portrait_animation.memo import preflight as P
    from portrait_animation.memo.pipeline import MemoSettings, talking_frames

    s = MemoSettings(steps=2, num_past_frames=4, seed=3, width=res, height=res)
    resident = [h.module for h in memo.sampling_models]
    before = snapshot(resident)
    est = P.estimate(memo, s, frames, clip, output="video file")
    assert snapshot(resident) == before
    cond = P.stand_in_conditions(memo, frames, clip, lambda f: f())
    cond.audio_emb = torch.randn(cond.audio_emb.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), LiveCPUBytes() as meter:
        clips = list(talking_frames(memo, torch.rand(1, res, res, 3), cond, torch.zeros(1, 512), s))
    assert sum(c.shape[0] for c in clips) == frames and all(torch.isfinite(c).all() for c in clips)
    measured = pf.module_bytes(resident) + meter.peak
    assert within(est.peak, measured), (est.peak, measured)
    kept = P.estimate(memo, s, frames, clip, output="frames")
    assert kept.peak - est.peak == frames * res * res * 3 * 4                # the node's IMAGE output


def test_memo_refuses_a_run_that_cannot_fit(memo):
    from portrait_animation.memo import preflight as P
    from portrait_animation.memo.pipeline import MemoSettings

    s = MemoSettings(steps=2, num_past_frames=4, width=64, height=64)
    cond = P.stand_in_conditions(memo, 8, 4, lambda f: f())
    small = P.estimate(memo, s, 8, 4)
    assert P.estimate(memo, s, 8, 4, conditions=cond) is small      # keyed by the conditions' shapes: no new trace
    assert P.estimate(memo, MemoSettings(steps=2, num_past_frames=4, width=128, height=128), 8, 4).peak > small.peak
    with pytest.raises(pf.PreflightError) as e:
        P.ensure(memo, cond, s, free=small.peak // 2)
    assert "MEMO will not fit" in str(e.value) and "resolution" in str(e.value)
    assert P.ensure(memo, cond, s, free=small.peak + 1).fits


# ---- HelloMeme -----------------------------------------------------------------------------------------------------
def controls_with_store(models, frames, hw, cache_mb):
    controls = computed_controls(models, frames, hw)
    controls.cache.max_bytes = int(cache_mb * pf.MB)
    return controls


@pytest.mark.parametrize("frames,cache_mb", [(0, 0), (6, 0), (14, 0), (40, 0), (40, 64), (40, 0.5)])
def test_hellomeme_estimate_matches_the_measured_peak(frames, cache_mb):
    from portrait_animation.sk_attention import preflight as P
    from portrait_animation.sk_attention.pipeline_image import generate_image
    from portrait_animation.sk_attention.pipeline_video import generate_video

    models, _ = tiny_models("v5")
    video = frames > 0
    hw = (128, 128)
    ref, pos, neg = reference_image(hw), text(1), text(2)
    rt = StandaloneRuntime("cpu", show_progress=False)
    before = snapshot(P.modules(models))
    # 40 frames: 4 windows in the final pass, 2 traced; a control-feature store that holds every frame (64 MB) or
    # only some (0.5 MB): what the untraced windows would store is counted
    est = P.estimate(models, controls_with_store(models, max(frames, 1), hw, cache_mb), ref, video=video, steps=2,
                     prompt=pos, negative=neg, runtime=rt, output="video file")
    assert snapshot(P.modules(models)) == before
    options = dict(negative_prompt_embeds=neg, steps=2, guidance_scale=1.5, noise=0)
    with torch.no_grad(), LiveCPUBytes() as meter:
        if video:
            job = generate_video(models, rt, ref, pos, controls_with_store(models, frames, hw, cache_mb), **options)
            assert job.latents.shape[2] == frames
        else:
            assert torch.isfinite(generate_image(models, rt, ref, pos, computed_controls(models, 1, hw),
                                                 **options).image).all()
    measured = pf.module_bytes(P.modules(models)) + meter.peak
    assert within(est.peak, measured), (est.peak, measured)


def test_hellomeme_estimate_is_kept_per_input_shapes_not_per_object():
    from portrait_animation.sk_attention import preflight as P

    models, _ = tiny_models("v5")
    hw = (128, 128)
    rt = StandaloneRuntime("cpu", show_progress=False)

    def est(frames, controls=None):
        controls = controls or controls_with_store(models, frames, hw, 64)
        return P.estimate(models, controls, reference_image(hw), video=True, steps=2, prompt=text(1),
                          negative=text(2), runtime=rt, output="video file")

    mine = controls_with_store(models, 30, hw, 64)
    first = est(30, mine)
    assert not mine.cache.items and mine._negative is None          # the trace ran on a copy: no fake features
    assert est(30) is first                                         # a re-queue: new but equal inputs, no new trace
    other = est(31)                                                 # another length: traced again, a new figure
    assert other is not first and other.settings["frames"] == 31


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_hellomeme_euler_versions_estimate_matches_the_measured_peak(version):
    """v1/v2 (stage 1 per frame, fixed windows) and v3/v4 (end-frame pre-pass, Euler): 30 frames, more windows
    than traced."""
    from portrait_animation.sk_attention import preflight as P
    from portrait_animation.sk_attention.pipeline_video import generate_video
    from test_hellomeme_versions import as_version

    models, _ = as_version(version, latent_hw=(16, 16))
    hw = (128, 128)
    ref, pos, neg = reference_image(hw), text(1), text(2)
    rt = StandaloneRuntime("cpu", show_progress=False)
    est = P.estimate(models, controls_with_store(models, 30, hw, 64), ref, video=True, steps=2, prompt=pos,
                     negative=neg, runtime=rt, output="video file")
    with torch.no_grad(), LiveCPUBytes() as meter:
        job = generate_video(models, rt, ref, pos, controls_with_store(models, 30, hw, 64), negative_prompt_embeds=neg,
                             steps=2, guidance_scale=1.5, noise=0)
    assert job.latents.shape[2] == 30
    measured = pf.module_bytes(P.modules(models)) + meter.peak
    assert within(est.peak, measured), (est.peak, measured)


# ---- time model -----------------------------------------------------------------------------------------------------
def test_the_trace_counts_operations_matmul_conv_attention_and_bytes_apart():
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    lin = torch.nn.Linear(8, 8)

    def work(x):                                               # x (2, 4, 16, 16)
        h = torch.nn.functional.silu(conv(x))                  # conv + one elementwise op
        t = lin(h.flatten(2).transpose(1, 2))                  # views + (2*256, 8) x (8, 8) matmul
        q = t[:, None]                                         # (2, 1, 256, 8)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    t = pf.trace(lambda rt, make: work(make(lambda: torch.zeros(2, 4, 16, 16))), [conv, lin], "cpu")
    w = t.work
    assert w.conv == 2 * 2 * 8 * 4 * 9 * 16 * 16
    assert w.matmul == 2 * 2 * 256 * 8 * 8
    assert w.attention == 2 * 2 * 1 * 256 * 256 * (8 + 8) and w.scores == 2 * 1 * 256 * 256
    assert w.bytes >= 2 * 2 * 8 * 16 * 16 * 4                   # silu reads and writes (2, 8, 16, 16) fp32
    assert 4 <= w.ops <= 30 and t.flops == w.flops
    # Work scales like a number (the families scale traced units to whole runs)
    assert (w * 3 - w).ops == 2 * w.ops and (w + 0) is w and sum([w, w]).matmul == 2 * w.matmul


def test_rates_are_measured_once_per_device_and_cheaply():
    pf._RATES.pop(("cpu", None, torch.float32), None)
    r = pf.rates("cpu")
    assert pf.rates("cpu", torch.float16) is r                 # the CPU is measured in fp32 only; kept
    assert min(r.matmul, r.conv, r.attention, r.bandwidth) > 1e6 and 0 < r.per_op < 0.1
    assert r.probe_seconds < 5                                 # about 0.5 s on an idle 2-core CPU
    w = pf.Work(ops=1000, matmul=r.matmul, bytes=r.bandwidth)
    assert w.seconds(r) == pytest.approx(1000 * r.per_op + 2)


# ---- sizes chosen to fit (memory only: same frames) --------------------------------------------------------------
def test_memo_picks_a_smaller_vae_batch_that_fits_and_makes_the_same_frames(memo, monkeypatch):
    from portrait_animation.memo import preflight as P
    from portrait_animation.memo.pipeline import MemoSettings, talking_frames

    s = MemoSettings(steps=1, num_past_frames=4, seed=5, width=128, height=128)   # the decode makes the peak
    frames, clip = 8, 8
    peaks = {b: P.estimate(memo, s, frames, clip, vae_batch=b, output="video file").peak for b in (1, 2, 4)}
    assert peaks[1] <= peaks[2] < peaks[4] == P.estimate(memo, s, frames, clip, output="video file").peak
    cond = P.stand_in_conditions(memo, frames, clip, lambda f: f())
    cond.audio_emb = torch.randn(cond.audio_emb.shape, generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv(pf.BUDGET_ENV, str((peaks[2] + peaks[4]) / 2 / pf.MB))       # the cap between 2 and 4
    est = P.ensure(memo, cond, s, output="video file")
    assert est.picked == {"vae_batch": 2} and est.fits and "vae_batch 2" in est.summary()
    ref = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(2))

    def run(batch):
        with torch.no_grad():
            return torch.cat(list(talking_frames(memo, ref, cond, torch.zeros(1, 512), s, vae_batch=batch)))

    assert torch.equal(run(est.picked["vae_batch"]), run(None))
    with pytest.raises(pf.PreflightError, match="vae_batch 4"):                  # set by the caller: kept, refused
        P.ensure(memo, cond, s, output="video file", vae_batch=4)
    with pytest.raises(pf.PreflightError) as e:                                   # under the smallest: refused
        P.ensure(memo, cond, s, output="video file", free=peaks[1] - pf.MB // 4)
    assert "MEMO will not fit even with vae_batch 1" in str(e.value) and "clip_length" in str(e.value)


def test_hellomeme_picks_smaller_decode_batch_and_stores_that_fit_with_the_same_frames():
    from portrait_animation.sk_attention import preflight as P
    from portrait_animation.sk_attention.pipeline_video import generate_video

    models, _ = tiny_models("v5", latent_hw=(8, 8))                  # 64 px: the ladder's logic, at a quarter of the cost
    hw, frames = (64, 64), 40
    ref, pos, neg = reference_image(hw), text(1), text(2)
    rt = StandaloneRuntime("cpu", show_progress=False)
    options = dict(steps=2, prompt=pos, negative=neg, output="video file")
    default = P.estimate(models, controls_with_store(models, frames, hw, 64), ref, runtime=rt, **options)
    ladder = P.size_ladder(default, "cpu")
    assert ladder[-1]["decode_batch"] == 4 and ladder[0] == {"decode_batch": 1, "cache_bytes": 0,
                                                             "pad_cache_bytes": 0}
    smallest = P.ensure(models, controls_with_store(models, frames, hw, 64), ref, rt, free=10 ** 12,
                        decode_batch=1, pad_cache_bytes=0, auto=("cache_bytes",), **options)
    assert smallest.picked == {}                               # fits: nothing chosen
    tiny = P.estimate(models, P._fresh(controls_with_store(models, frames, hw, 64), 0), ref, runtime=rt,
                      decode_batch=1, pad_cache_bytes=0, **options)
    assert tiny.peak < default.peak
    picks = []
    for budget in ((tiny.peak + default.peak) // 2, tiny.peak + 1):   # a smaller decode batch; then every size
        est = P.ensure(models, controls_with_store(models, frames, hw, 64), ref, rt, free=budget, **options)
        assert est.fits and est.peak <= budget < default.peak
        picks.append(est)
    assert picks[0].picked["decode_batch"] < 8 and picks[0].picked["cache_bytes"] == default.sizes["cache_bytes"]
    assert picks[1].picked == {"decode_batch": 1, "cache_bytes": 0, "pad_cache_bytes": 0}
    kept = P.ensure(models, controls_with_store(models, frames, hw, 64), ref, rt, free=picks[1].peak,
                    decode_batch=2, **options)                    # set by the caller: kept, the stores still shrink
    assert kept.picked == {"cache_bytes": 0, "pad_cache_bytes": 0} and kept.sizes["decode_batch"] == 2

    def run(est):
        controls, run_options = controls_with_store(models, frames, hw, 64), {}
        P.apply_picked(est, controls, run_options)
        images = []
        job = generate_video(models, rt, ref, pos, controls, negative_prompt_embeds=neg, steps=2, guidance_scale=1.5,
                             noise=0, on_frame=lambda i, img: images.append(img), **run_options)
        return job, torch.cat(images)

    plain = run(None)
    for est in picks:
        chosen = run(est)
        assert chosen[0].decode_batch == est.picked["decode_batch"] and torch.equal(chosen[0].latents, plain[0].latents)
        if est.picked["decode_batch"] % 2 == 0:
            assert torch.equal(chosen[1], plain[1])
        else:  # the CPU's convolutions take other kernels for odd batches: the frames differ in float rounding only
            torch.testing.assert_close(chosen[1], plain[1], rtol=0, atol=1e-5)
    assert chosen[0].stats.control_cache_peak_bytes == 0 < plain[0].stats.control_cache_peak_bytes  # recomputed
    with pytest.raises(pf.PreflightError) as e:
        P.ensure(models, controls_with_store(models, frames, hw, 64), ref, rt, free=tiny.peak - pf.MB // 4,
                 **options)
    assert "will not fit even with the smallest sizes: decode_batch 1, cache_bytes 0" in str(e.value)
    assert "width/height" in str(e.value)


# ---- Speed Options --------------------------------------------------------------------------------------------------
MATH_REUSE = dict(attention="sdpa_math", cache_interval=2)


@pytest.mark.parametrize("version,frames", [("v5", 40), ("v2", 30)])
def test_hellomeme_estimate_with_speed_options_matches_the_measured_peak(version, frames):
    """sdpa_math's score matrices and feature reuse's stored deep features (one per window of a pass, held from the
    first step on: v5's keyframe windows, v2's fixed windows), with more windows than traced."""
    from portrait_animation.runtime.speed import SpeedOptions
    from portrait_animation.sk_attention import preflight as P
    from portrait_animation.sk_attention.pipeline_video import generate_video
    from test_hellomeme_versions import as_version

    models, _ = tiny_models("v5") if version == "v5" else as_version(version, latent_hw=(16, 16))
    hw = (128, 128)
    ref, pos, neg = reference_image(hw), text(1), text(2)
    rt = StandaloneRuntime("cpu", show_progress=False)
    speed = SpeedOptions(**MATH_REUSE)

    def est(speed):
        return P.estimate(models, controls_with_store(models, frames, hw, 64), ref, video=True, steps=2, prompt=pos,
                          negative=neg, runtime=rt, output="video file", speed=speed)

    fast, exact = est(speed), est(None)
    with torch.no_grad(), LiveCPUBytes() as meter:
        job = generate_video(models, rt, ref, pos, controls_with_store(models, frames, hw, 64),
                             negative_prompt_embeds=neg, steps=2, guidance_scale=1.5, noise=0, speed=speed)
    assert job.latents.shape[2] == frames
    measured = pf.module_bytes(P.modules(models)) + meter.peak
    assert within(fast.peak, measured), (fast.peak, measured, exact.peak)
    assert fast.peak > exact.peak and fast.settings["attention"] == "sdpa_math"
    assert fast.settings["cache_interval"] == 2 and "attention" not in exact.settings


def test_memo_estimate_with_speed_options_matches_the_measured_peak(memo):
    from portrait_animation.memo import preflight as P
    from portrait_animation.memo.pipeline import MemoSettings, talking_frames
    from portrait_animation.runtime.speed import SpeedOptions

    frames, clip, res = 8, 4, 96
    s = MemoSettings(steps=3, num_past_frames=4, seed=3, width=res, height=res)
    speed = SpeedOptions(**MATH_REUSE)
    fast = P.estimate(memo, s, frames, clip, output="video file", speed=speed)
    exact = P.estimate(memo, s, frames, clip, output="video file")
    cond = P.stand_in_conditions(memo, frames, clip, lambda f: f())
    cond.audio_emb = torch.randn(cond.audio_emb.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), LiveCPUBytes() as meter:
        clips = list(talking_frames(memo, torch.rand(1, res, res, 3), cond, torch.zeros(1, 512), s, speed=speed))
    assert sum(c.shape[0] for c in clips) == frames
    measured = pf.module_bytes([h.module for h in memo.sampling_models]) + meter.peak
    assert within(fast.peak, measured), (fast.peak, measured, exact.peak)
    assert fast.peak > exact.peak and fast.settings["cache_interval"] == 2


def test_hunyuan_estimate_with_sdpa_math_matches_the_measured_peak(hp):
    from portrait_animation.hunyuan_portrait import animate as A
    from portrait_animation.hunyuan_portrait import preflight as P
    from portrait_animation.runtime.speed import SpeedOptions

    bundle, size = hp
    cond = hp_conditions(6, size)
    s = A.settings_for(cond, num_inference_steps=1, n_sample_frames=4, overlap=1, pad_frames=1, decode_chunk_size=2)
    speed = SpeedOptions(attention="sdpa_math", compile="default")     # compile: traced eager
    fast, exact = P.estimate(bundle, s, 6, cond, speed=speed), P.estimate(bundle, s, 6, cond)
    with torch.no_grad(), LiveCPUBytes() as meter:
        video = A.animate(bundle, cond, s, seed=0, speed=SpeedOptions(attention="sdpa_math"))
    assert torch.isfinite(video).all()
    measured = pf.module_bytes([h.module for h in bundle.sampling_models]) + meter.peak
    assert within(fast.peak, measured), (fast.peak, measured, exact.peak)
    # at this size the scores are not at the peak; the trace ran the math path (matmuls + softmax, not the fused op)
    assert fast.time_parts["attention"] < exact.time_parts["attention"] / 10, (fast.time_parts, exact.time_parts)
    assert fast.settings["compile"] == "default" and fast.settings["attention"] == "sdpa_math"
