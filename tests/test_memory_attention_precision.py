"""MEMO's temporal memory in every dtype the loader offers (fp32, bf16, fp16): the normaliser floor keeps its meaning
and the running sums stay close to the fp32 result over several clips (CPU half-precision kernels)."""
from __future__ import annotations

import copy

import pytest
import torch

from portrait_animation.motion.memory_attention import (NORMALISER_FLOOR, MemoryTemporalModule, MotionModuleConfig,
                                                        memory_read)

# relative to the largest fp32 value: a few units of each format's rounding (bf16 keeps 8 mantissa bits, fp16 11)
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
# the same checks on a GPU's half-precision kernels where one is present (the device check)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_floor_holds_in_every_dtype(dtype, device):
    # an empty normaliser (q . Zt = 0): the 1e-10 floor must not round to 0 (fp16 would give 0/0 = NaN)
    q = torch.softmax(torch.randn(6, 4, 8, device=device), dim=-1).to(dtype)
    out = memory_read(q, torch.zeros(6, 8, 8, dtype=dtype, device=device),
                      torch.zeros(6, 1, 8, dtype=dtype, device=device))
    assert out.dtype == dtype and torch.isfinite(out).all() and not out.any()


def test_memory_read_is_the_formula():
    gen = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(5, 3, 4, generator=gen), dim=-1)
    kv = torch.randn(5, 4, 4, generator=gen)
    z = torch.rand(5, 1, 4, generator=gen)
    z[0] = 0  # this row's normaliser is floored
    expected = torch.stack([q[r] @ kv[r] / torch.clamp(q[r] @ z[r].T, min=NORMALISER_FLOOR) for r in range(5)])
    torch.testing.assert_close(memory_read(q, kv, z), expected, rtol=1e-6, atol=0)


def _clip_sequence(module, dtype, clips, device="cpu"):
    """Run ``clips`` (list of (hidden, motion)) as the sampler does: memory rebuilt at every step of clip 0, updated
    at step 0 of later clips. Returns the outputs and the final memory of the first layer."""
    m = copy.deepcopy(module).to(device, dtype)
    outs = []
    for k, (hidden, motion) in enumerate(clips):
        for step in range(3):
            outs.append(m(hidden.to(device, dtype), motion.to(device, dtype), is_new_audio=k == 0,
                          update_past_memory=step == 0).cpu())
    layer = next(m.memory_layers())
    return outs, layer.memory


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_temporal_module_in_half_precision_matches_fp32(dtype, device):
    torch.manual_seed(0)
    channels, frames, past = 64, 16, 16  # MEMO's clip and past-frame counts; the positional table is on
    module = MemoryTemporalModule(channels, MotionModuleConfig(temporal_position_encoding=True,
                                                               temporal_position_encoding_max_len=24)).eval()
    clips = [(torch.randn(2, channels, frames, 4, 4) * 2, torch.randn(2, channels, past, 4, 4) * 2) for _ in range(3)]
    with torch.no_grad():
        ref, ref_memory = _clip_sequence(module, torch.float32, clips)
        outs, memory = _clip_sequence(module, dtype, clips, device)
    assert all(o.dtype == dtype and torch.isfinite(o).all() for o in outs)
    errors = [_relative_error(o, r) for o, r in zip(outs, ref)]
    assert max(errors) < TOLERANCE[dtype], errors
    # the state carried across clips (decayed and summed twice) stays in the model dtype and close to fp32
    assert memory.kv.dtype == dtype and memory.z.dtype == dtype
    assert _relative_error(memory.kv.cpu(), ref_memory.kv) < TOLERANCE[dtype]
    assert _relative_error(memory.z.cpu(), ref_memory.z) < TOLERANCE[dtype]
