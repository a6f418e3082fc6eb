"""Shared onnxruntime sessions.

Every owner asking for the same file with the same settings gets the same ``InferenceSession`` (onnxruntime allows
concurrent ``run`` calls on one session), so a server that builds a face toolkit, an identity embedder or a vocal
separator per job holds one session per model file, not one per job. onnxruntime is imported only when a session is
created.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

SHARED_SESSIONS = 8  # sessions the cache keeps referenced; owners keep theirs alive beyond that
_sessions: "OrderedDict[tuple, object]" = OrderedDict()
_sessions_lock = threading.Lock()

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Model files (by name) known not to run correctly with the CUDA provider: they stay on the CPU whatever the device.
# None of the released face/identity/separation models is (the original projects run them all on CUDA); the table is
# where such a finding goes.
CPU_ONLY_MODELS: dict[str, str] = {}
_said: set = set()


def _say_once(message: str) -> None:
    """One log line per distinct message and process (a fallback is worth saying once, not per session)."""
    if message not in _said:
        _said.add(message)
        log.warning(message)


def runtime_device():
    """The device the pack's runtime computes on (ComfyUI's ``get_torch_device()`` inside ComfyUI, else CUDA when
    torch sees a GPU); the CPU if it cannot be determined."""
    import torch

    try:
        from . import get_runtime

        return torch.device(get_runtime().device)
    except Exception:  # noqa: BLE001 - a runtime that cannot say where it runs: the safe answer is the CPU
        return torch.device("cpu")


def onnx_providers(device=None, model: str | Path | None = None) -> list:
    """onnxruntime providers for ``device`` ("cpu", "cuda", "cuda:N", a ``torch.device``; None or "auto": the
    runtime's device, :func:`runtime_device`).

    A CUDA device gets the CUDA provider (that GPU) with the CPU as fallback when onnxruntime offers it (the
    ``onnxruntime-gpu`` package); otherwise, and for files in :data:`CPU_ONLY_MODELS` (``model``), the CPU, said
    once in the log. A CPU device always gets the CPU, even where onnxruntime could use a GPU (ComfyUI ``--cpu``).
    """
    import onnxruntime as ort
    import torch

    dev = runtime_device() if device is None or str(device).lower() == "auto" else torch.device(device)
    if dev.type != "cuda":
        return [CPU]
    name = Path(model).name if model is not None else None
    if name in CPU_ONLY_MODELS:
        _say_once(f"{name} runs on the CPU ({CPU_ONLY_MODELS[name]})")
        return [CPU]
    if CUDA not in ort.get_available_providers():
        _say_once(f"onnxruntime {getattr(ort, '__version__', '')} has no CUDA provider (providers: "
                  f"{', '.join(ort.get_available_providers())}): the ONNX face and identity models run on the CPU; "
                  "install onnxruntime-gpu (instead of onnxruntime) to run them on the GPU")
        return [CPU]
    return [(CUDA, {"device_id": dev.index or 0, "arena_extend_strategy": "kNextPowerOfTwo",
                    "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True}), CPU]


def shared_session(path: str | Path, providers: Sequence, log_severity_level: Optional[int] = None):
    """The ``onnxruntime.InferenceSession`` for ``path`` with these providers, shared by every caller.

    Keyed by the file (resolved path, size, modification time: a replaced file gets a new session) and the settings.
    The cache keeps the ``SHARED_SESSIONS`` most recently used sessions referenced; one dropped from it lives on while
    an owner still holds it and is freed with its last owner (sessions have no reference cycles, so that happens at
    once).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, repr(list(providers)), log_severity_level)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is not None:
            _sessions.move_to_end(key)
            return session
    options = None
    if log_severity_level is not None:
        options = ort.SessionOptions()
        options.log_severity_level = log_severity_level
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    wanted = [p[0] if isinstance(p, tuple) else p for p in providers]
    if CUDA in wanted and CUDA not in session.get_providers():
        _say_once(f"onnxruntime could not start its CUDA provider for {path.name} (CUDA/cuDNN libraries missing or "
                  "not matching onnxruntime-gpu?): it runs on the CPU")
    with _sessions_lock:
        session = _sessions.setdefault(key, session)  # a concurrent caller may have built it first
        _sessions.move_to_end(key)
        while len(_sessions) > SHARED_SESSIONS:
            _sessions.popitem(last=False)
    return session


def clear_shared_sessions() -> None:
    """Drop the cache's references (sessions still held by owners stay alive until those are discarded)."""
    with _sessions_lock:
        _sessions.clear()


def create_session(path: str | Path, device=None):
    """The shared ``onnxruntime.InferenceSession`` for ``path`` on ``device`` (None: the runtime's device; see
    :func:`onnx_providers`)."""
    return shared_session(path, onnx_providers(device, model=path))
