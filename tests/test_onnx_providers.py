"""Which onnxruntime providers the face, identity and separation models get: CUDA only when the runtime (or the
caller) says CUDA AND onnxruntime offers it (onnxruntime-gpu); else the CPU, said once in the log; CPU-only models
stay on the CPU; PD-FGC follows the runtime's device. The providers list is faked: this machine has no GPU."""
from __future__ import annotations

import logging

import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from portrait_animation.runtime import onnx as rt_onnx  # noqa: E402

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def fake(monkeypatch):
    """``fake(available, runtime_device)``: set what onnxruntime offers and where the runtime computes."""
    monkeypatch.setattr(rt_onnx, "_said", set())

    def set_(available, device="cpu"):
        monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
        monkeypatch.setattr(rt_onnx, "runtime_device", lambda: torch.device(device))
    return set_


def names(providers):
    return [p[0] if isinstance(p, tuple) else p for p in providers]


@pytest.mark.parametrize("device, index", [(None, 0), ("auto", 0), ("cuda", 0), ("cuda:1", 1),
                                           (torch.device("cuda", 2), 2)])
def test_cuda_runtime_with_onnxruntime_gpu_uses_cuda_then_cpu(fake, device, index):
    fake(GPU_BUILD, "cuda:0" if device in (None, "auto") else "cpu")
    providers = rt_onnx.onnx_providers(device)
    assert names(providers) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers[0][1]["device_id"] == index


@pytest.mark.parametrize("device", [None, "auto", "cpu", torch.device("cpu")])
def test_cpu_runtime_stays_on_the_cpu_even_with_onnxruntime_gpu(fake, device):
    fake(GPU_BUILD, "cpu")  # ComfyUI --cpu on a machine with onnxruntime-gpu
    assert rt_onnx.onnx_providers(device) == ["CPUExecutionProvider"]


def test_cuda_without_onnxruntime_gpu_falls_back_with_one_log_line(fake, caplog):
    fake(CPU_BUILD, "cuda")
    with caplog.at_level(logging.WARNING, logger=rt_onnx.__name__):
        for _ in range(3):
            assert rt_onnx.onnx_providers(None) == ["CPUExecutionProvider"]
    lines = [r.getMessage() for r in caplog.records if r.name == rt_onnx.__name__]
    assert len(lines) == 1 and "onnxruntime-gpu" in lines[0] and "CPU" in lines[0]


def test_cpu_only_models_stay_on_the_cpu(fake, monkeypatch, caplog):
    fake(GPU_BUILD, "cuda")
    monkeypatch.setitem(rt_onnx.CPU_ONLY_MODELS, "bad_on_cuda.onnx", "wrong results with the CUDA provider")
    with caplog.at_level(logging.WARNING, logger=rt_onnx.__name__):
        assert rt_onnx.onnx_providers("cuda", model="/m/bad_on_cuda.onnx") == ["CPUExecutionProvider"]
    assert any("bad_on_cuda.onnx" in r.getMessage() for r in caplog.records)
    assert names(rt_onnx.onnx_providers("cuda", model="/m/other.onnx"))[0] == "CUDAExecutionProvider"


def test_sessions_get_the_chosen_providers(fake, monkeypatch, tmp_path):
    """The toolkit's, the identity models' and the separator's sessions are built with the chosen providers."""
    from portrait_animation.audio import separation
    from portrait_animation.motion.hellomeme import toolkit

    built = []

    class FakeSession:
        def __init__(self, path, sess_options=None, providers=()):
            built.append(names(providers))

        def get_providers(self):
            return ["CPUExecutionProvider"]

        def get_inputs(self):
            return [type("I", (), {"name": "x"})()]

        def get_outputs(self):
            return [type("O", (), {"name": "y"})()]

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    rt_onnx.clear_shared_sessions()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"onnx")
    fake(GPU_BUILD, "cuda")
    toolkit.LandmarkModel.from_file(path)
    separation.onnx_spec_model(path, device=torch.device("cuda"))
    fake(GPU_BUILD, "cpu")
    rt_onnx.clear_shared_sessions()
    toolkit.LandmarkModel.from_file(path)
    separation.onnx_spec_model(path)
    rt_onnx.clear_shared_sessions()
    assert built == [["CUDAExecutionProvider", "CPUExecutionProvider"]] * 2 + [["CPUExecutionProvider"]] * 2


def test_a_cuda_provider_that_does_not_start_is_said(fake, monkeypatch, tmp_path, caplog):
    class NoCuda:
        def __init__(self, path, sess_options=None, providers=()):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", NoCuda)
    rt_onnx.clear_shared_sessions()
    path = tmp_path / "x.onnx"
    path.write_bytes(b"onnx")
    fake(GPU_BUILD, "cuda")
    with caplog.at_level(logging.WARNING, logger=rt_onnx.__name__):
        rt_onnx.create_session(path)
    rt_onnx.clear_shared_sessions()
    assert any("x.onnx" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)


def test_pdfgc_follows_the_runtime_device(monkeypatch, tmp_path):
    from portrait_animation.motion.hellomeme import pdfgc

    moved = []
    monkeypatch.setattr(rt_onnx, "runtime_device", lambda: torch.device("meta"))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a or k) or self)
    monkeypatch.setattr("portrait_animation.loaders.checkpoint.read_diffusers_folder",
                        lambda folder, dtype=None, config=None: ({}, {}))
    monkeypatch.setattr("portrait_animation.loaders.checkpoint.load_with_policy",
                        lambda factory, sd, policy, source, dtype=None: torch.nn.Linear(1, 1))
    pdfgc.load_fan_encoder(tmp_path, device="auto")
    pdfgc.load_fan_encoder(tmp_path)            # None: stays where it was loaded (the CPU)
    assert moved == [(torch.device("meta"),)]
