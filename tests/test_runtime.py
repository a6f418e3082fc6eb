"""Standalone runtime: dtype policy, model residency, progress callbacks and cancellation."""
from __future__ import annotations

import threading

import pytest
import torch

from portrait_animation.runtime import Interrupted, StandaloneRuntime, get_runtime, parse_dtype


def test_parse_dtype():
    assert parse_dtype("fp16") is torch.float16 and parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("auto") is None and parse_dtype(None) is None and parse_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        parse_dtype("fp8")


def test_dtype_policy_on_cpu():
    rt = StandaloneRuntime("cpu")
    assert rt.dtype("auto") is torch.float32  # no half precision by default on the CPU
    assert rt.dtype("bf16") is torch.bfloat16  # an explicit request wins
    assert StandaloneRuntime("cpu", dtype="fp16").dtype(None) is torch.float16


@pytest.mark.parametrize("native", [True, False])
def test_dtype_policy_on_a_gpu_follows_native_bf16(monkeypatch, native):
    # a fake device capability: emulated bf16 (pre-Ampere GPUs) must not count as support
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    rt = StandaloneRuntime("cuda")
    assert rt.bf16_supported() is native
    half = torch.bfloat16 if native else torch.float16
    assert rt.default_dtype("diffusion", (torch.bfloat16, torch.float16, torch.float32)) is half
    # a caller that leaves fp16 out of `supported` (MEMO) gets bf16 or fp32, never fp16
    memo_choice = rt.default_dtype("diffusion", (torch.bfloat16, torch.float32))
    assert memo_choice is (torch.bfloat16 if native else torch.float32)
    assert not StandaloneRuntime("cpu").bf16_supported()  # bf16 on the CPU works, but slowly


@pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None,
                    reason="no NVIDIA GPU (the device check)")
def test_native_bf16_on_a_real_gpu():
    major, _ = torch.cuda.get_device_capability()
    assert StandaloneRuntime("cuda").bf16_supported() is (major >= 8)  # Ampere and later compute bf16 natively


def test_outside_comfyui_the_runtime_is_standalone():
    assert isinstance(get_runtime(), StandaloneRuntime)


class RecordingLinear(torch.nn.Linear):
    """Records the devices it is moved to (the CPU-only test machine has a single real device)."""

    def __init__(self):
        super().__init__(3, 2)
        self.moves = []

    def to(self, *args, **kwargs):
        device = kwargs.get("device", args[0] if args and not isinstance(args[0], torch.dtype) else None)
        if device is not None:
            self.moves.append(str(device))
        kwargs.pop("device", None)
        args = tuple(a for a in args if isinstance(a, torch.dtype))
        return super().to(*args, **kwargs)


def test_manage_load_offload_moves_weights_and_casts():
    rt = StandaloneRuntime("cuda:1", offload_device="cpu")
    h = rt.manage("toy", RecordingLinear(), torch.float64)
    assert h.module.weight.dtype is torch.float64 and h.module.moves == ["cpu"]
    rt.load([h])
    rt.offload([h])
    assert h.module.moves == ["cpu", "cuda:1", "cpu"]
    keep = StandaloneRuntime("cuda:1", offload_device="cpu", keep_loaded=True)
    h2 = keep.manage("toy", RecordingLinear(), torch.float32)
    keep.load([h2])
    keep.offload([h2])
    assert h2.module.moves == ["cuda:1", "cuda:1", "cuda:1"]


def test_progress_reports_and_interrupt_stops_the_loop():
    rt = StandaloneRuntime("cpu", show_progress=False)
    seen = []
    rt.callbacks.append(lambda v, t, p: seen.append((v, t)))
    done = 0
    with pytest.raises(Interrupted):
        with rt.progress(10) as bar:
            for i in range(10):
                if i == 3:
                    threading.Thread(target=rt.interrupt).start()
                    threading.Event().wait(0.05)
                done += 1
                bar.update(1)
    assert done == 4 and seen[-1] == (4, 10)
    # the flag is consumed: the next run is not cancelled
    with rt.progress(2) as bar:
        bar.update(2)
    assert seen[-1] == (2, 2)


def test_progress_total_grows_when_the_loop_finds_more_work():
    rt = StandaloneRuntime("cpu", show_progress=True)
    seen = []
    rt.callbacks.append(lambda v, t, p: seen.append((v, t)))
    with rt.progress(4) as bar:
        bar.update(3)
        bar.grow(2)  # e.g. an identity guard's retry of 2 steps
        assert bar.bar.total == 6
        bar.update(3)
    assert seen == [(3, 4), (6, 6)]
