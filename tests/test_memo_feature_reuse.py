"""Feature reuse across steps (DeepCache-style) in MEMO's Diffusion Net, opt-in through Speed Options'
``cache_interval``: a reuse call runs ``conv_in``, down block 0 and the last up block on the stored input of the last
up block (hidden states and audio stream); the memory update, the Reference Net and ``cache_interval=1`` stay exact."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from portrait_animation.loaders.store import ModelStore
from portrait_animation.memo.diffusion_net import DiffusionNet, DiffusionNetConfig
from portrait_animation.memo.pipeline import load_memo_bundle
from portrait_animation.motion import memo_sampler as ms
from portrait_animation.runtime import StandaloneRuntime
from portrait_animation.runtime.speed import DeepFeature, SpeedOptions

from helpers.tiny_models import write_memo_models
from parity.runner import DEFAULT_PARITY_ROOT
from test_memo_fast_paths import SMALL, _inputs

FRAMES, PAST, CLIPS, STEPS, SIZE = 2, 2, 2, 4, 64


def _double(kw: dict) -> dict:
    out = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    out["ref_features"] = {k: [[t.double() for t in layer] for layer in v] for k, v in kw["ref_features"].items()}
    return out


class _Counter:
    """Counts the forward calls of a module (a forward hook)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    net = DiffusionNet(DiffusionNetConfig(**SMALL)).double().eval()
    kw, sample = _inputs(net)
    return net, _double(kw), sample.double()


@pytest.mark.parametrize("flags", [dict(is_new_audio=True), dict(is_new_audio=False, update_past_memory=False)],
                         ids=["first_clip", "later_clip"])
@torch.no_grad()
def test_a_reuse_call_on_unchanged_inputs_equals_the_full_call(small, flags):
    """With nothing changed since the store, the shallow blocks on the stored features are the full net's arithmetic
    (the audio stream stored beside the hidden states included); new latents do reach the output."""
    net, kw, sample = small
    net.reset_memory()
    deep = DeepFeature()
    mid = _Counter(net.mid_block)
    full = net(sample, timestep=500.0, deep=deep, is_new_audio=True, **kw)
    assert deep.stores == 1 and mid.calls == 1
    deep.reuse = True
    again = net(sample, timestep=500.0, deep=deep, **flags, **kw)
    moved = net(sample + torch.randn_like(sample), timestep=500.0, deep=deep, **flags, **kw)
    assert mid.calls == 1 and deep.stores == 1  # the deep blocks did not run, nothing was stored again
    torch.testing.assert_close(again, full, rtol=0, atol=1e-12)
    assert (moved - full).abs().max() > 1e-3


@torch.no_grad()
def test_the_memory_update_always_runs_whole_and_reuse_leaves_memory_exact(small):
    """A call that updates the temporal memory (``update_past_memory``) runs every block even when asked to reuse;
    the memory after every call equals the exact path's."""
    net, kw, sample = small
    exact = DiffusionNet(DiffusionNetConfig(**SMALL)).double().eval()
    exact.load_state_dict(net.state_dict())
    mid = _Counter(net.mid_block)
    deep = DeepFeature()
    net.reset_memory()
    exact.reset_memory()
    # clip 0 (rebuilt every step), then a later clip: updated at its first step, read after it
    calls = [(True, False, False), (True, False, True), (False, True, True), (False, False, True), (False, False, True)]
    for step, (new_audio, update, reuse) in enumerate(calls):
        x = sample + 0.1 * step
        deep.reuse = reuse
        before = mid.calls
        net(x, timestep=900.0 - 100 * step, deep=deep, is_new_audio=new_audio, update_past_memory=update, **kw)
        exact(x, timestep=900.0 - 100 * step, is_new_audio=new_audio, update_past_memory=update, **kw)
        assert mid.calls - before == (0 if reuse and not update else 1), step
        got, want = net.memory_state(), exact.memory_state()
        assert got.keys() == want.keys() and len(got) > 0
        for name in want:
            assert torch.equal(got[name].kv, want[name].kv) and torch.equal(got[name].z, want[name].z), (step, name)


# ---- the sampler --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_memo_models(root, DEFAULT_PARITY_ROOT)
    b = load_memo_bundle(StandaloneRuntime("cpu", show_progress=False), ModelStore.at(root), dtype="fp32",
                         emotion_model=False, identity=False)
    return b.vae.module, b.reference_net.module, b.diffusion_net.module, b.image_proj.module


@pytest.fixture(scope="module")
def inputs(nets):
    gen = torch.Generator().manual_seed(7)
    token_dim = nets[2].config.audio_attention_dim
    return {"ref_image": torch.rand(1, 3, SIZE, SIZE, generator=gen) * 2 - 1, "face": torch.randn(1, 512, generator=gen),
            "audio": torch.randn(1, CLIPS * FRAMES, 32, token_dim, generator=gen),
            "emotions": torch.tensor([5, 1, 6, 6])}


def _run(nets, inputs, speed, memory: list | None = None, **settings):
    """The clips' latents; ``memory`` receives ``(clip, step, Diffusion Net memory snapshot)`` after every step."""
    net = nets[2]
    sampler = ms.MemoSampler(*nets, ms.MemoSamplerSettings(steps=STEPS, frames_per_clip=FRAMES, num_past_frames=PAST,
                                                           **settings))
    seen = {}
    on_step = None if memory is None else (lambda k, step: memory.append((k, step, net.memory_state())))
    with torch.no_grad():
        clips = list(sampler.clips(inputs["ref_image"], inputs["face"], inputs["audio"], inputs["emotions"], noise=5,
                                   speed=speed, on_step=on_step,
                                   inspect=lambda name, t: seen.__setitem__(name, t.clone())))
    return [c.latents for c in clips], seen


def test_cache_interval_one_is_the_exact_path_bit_for_bit(nets, inputs):
    exact, _ = _run(nets, inputs, None)
    one, _ = _run(nets, inputs, SpeedOptions(cache_interval=1))
    assert all(torch.equal(a, b) for a, b in zip(one, exact))


@pytest.mark.parametrize("interval", [2, 3])
def test_sampler_reuse_runs_deep_blocks_one_in_n_steps_and_keeps_reference_and_memory_exact(nets, inputs, interval):
    vae, reference_net, net, image_proj = nets
    deep_calls, ref_calls = _Counter(net.mid_block), _Counter(reference_net)
    exact, _ = _run(nets, inputs, None)
    exact_deep, exact_ref = deep_calls.calls, ref_calls.calls
    memory: list = []
    reuse, seen = _run(nets, inputs, SpeedOptions(cache_interval=interval), memory)
    full_steps = len(range(0, STEPS, interval))  # step 0 (the memory update) and every n-th step, per clip
    assert exact_deep == CLIPS * STEPS and deep_calls.calls - exact_deep == CLIPS * full_steps
    assert ref_calls.calls - exact_ref == exact_ref == CLIPS  # the Reference Net: once per clip, never reused

    # the memory after every step is the exact path's for the same past frames: replay each clip's memory update
    # (which reads the Reference Net's features of the past frames only, not the latents) on an exact net
    replay = DiffusionNet(net.config).eval()
    replay.load_state_dict(net.state_dict())
    replay.reset_memory()
    tokens = ms.MemoSampler(*nets).identity_tokens(inputs["face"])
    h = w = SIZE // 8
    with torch.no_grad():
        for k in range(CLIPS):
            feats = reference_net(seen[f"clip{k}.ref_latents"].repeat(2, 1, 1, 1), 0.0, tokens)
            audio = inputs["audio"][:, k * FRAMES:(k + 1) * FRAMES]
            replay(torch.zeros(2, 4, FRAMES, h, w), feats, 500.0, tokens, torch.cat([audio, audio]),
                   torch.tensor([9, 9]), uc_mask=torch.cat([torch.ones(FRAMES), torch.zeros(FRAMES)]).bool(),
                   is_new_audio=k == 0, update_past_memory=True)
            want = replay.memory_state()
            for clip, step, got in memory:
                if clip == k:
                    for name in want:
                        torch.testing.assert_close(got[name].kv, want[name].kv, rtol=0, atol=1e-6)
                        torch.testing.assert_close(got[name].z, want[name].z, rtol=0, atol=1e-6)

    # an approximation of the exact clips (CFG batch and all), not another video: closer to them than the exact
    # path's clips for another identity (the random stand-ins amplify every change, so nothing tighter holds here)
    other, _ = _run(nets, {**inputs, "face": torch.randn(1, 512, generator=torch.Generator().manual_seed(1))}, None)
    for a, b, c in zip(reuse, exact, other):
        assert torch.isfinite(a).all() and not torch.equal(a, b)
        assert (a - b).abs().mean() < (c - b).abs().mean()


def test_memo_node_passes_speed_with_cache_interval_to_the_sampler(monkeypatch):
    """Speed Options with ``cache_interval`` reaches MEMO's sampling through the node's optional 'speed' input."""
    from helpers.comfy_stub import forget_stub_nodes, install_stub_comfy_api

    latest = install_stub_comfy_api(monkeypatch)
    latest.io.NodeOutput = lambda *values: values
    import importlib

    from portrait_animation.memo import pipeline

    memo_node = importlib.import_module("portrait_animation.nodes.memo")
    speed_node = importlib.import_module("portrait_animation.nodes.speed")
    schema = {i["id"]: i for i in memo_node.MemoSampler.define_schema()["inputs"]}
    assert schema["speed"]["kind"] == "PA_SPEED_OPTIONS" and schema["speed"]["optional"]
    speed_inputs = {i["id"]: i for i in speed_node.SpeedOptionsNode.define_schema()["inputs"]}
    assert "MEMO" in speed_inputs["cache_interval"]["tooltip"]
    (options,) = speed_node.SpeedOptionsNode.execute(attention="sdpa", compile="off", cache_interval=3)
    assert options == SpeedOptions(cache_interval=3)

    received = {}

    def talking_frames(bundle, reference, conditions, face, settings, runtime=None, speed=None, **options):
        received["speed"] = speed  # options: the identity guard and resume (None / the default here)
        yield torch.rand(conditions.frames_with_audio, 8, 8, 3)

    monkeypatch.setattr(pipeline, "talking_frames", talking_frames)
    monkeypatch.setattr(pipeline, "check_settings", lambda *args: None)
    from portrait_animation.memo import preflight

    monkeypatch.setattr(preflight, "ensure", lambda *args, **kwargs: None)  # no bundle to trace here
    monkeypatch.setattr(pipeline, "face_embedding", lambda *args, **kw: torch.zeros(512))
    conditions = types.SimpleNamespace(frames_with_audio=4, fps=30.0, clip_length=4,
                                       audio={"waveform": torch.zeros(1, 1, 2400), "sample_rate": 16000})
    out = memo_node.MemoSampler.execute(memo=None, reference=torch.rand(1, 8, 8, 3), conditions=conditions, seed=0,
                                        steps=2, cfg=3.5, past_frames=2, resolution=64, on_missing_face="uncond",
                                        faithful=True, speed=options)
    assert received["speed"] is options and out[0].shape == (4, 8, 8, 3)
    forget_stub_nodes()
