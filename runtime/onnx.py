"""Shared onnxruntime sessions.

Every owner asking for the same file with the same settings gets the same ``InferenceSession`` (onnxruntime allows
concurrent ``run`` calls on one session), so a server that builds a face toolkit, an identity embedder or a vocal
separator per job holds one session per model file, not one per job. onnxruntime is imported only when a session is
created.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

SHARED_SESSIONS = 8  # sessions the cache keeps referenced; owners keep theirs alive beyond that
_sessions: "OrderedDict[tuple, object]" = OrderedDict()
_sessions_lock = threading.Lock()


def onnx_providers(device: Optional[str] = None) -> list:
    """onnxruntime providers for ``device``: "cpu" forces the CPU; None/"auto"/"cuda"/"cuda:N" use CUDA (device N)
    when onnxruntime offers it, with the CPU as fallback."""
    import onnxruntime as ort

    dev = (device or "auto").lower()
    providers: list = []
    if dev != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(dev.split(":", 1)[1]) if dev.startswith("cuda:") else 0
        providers.append(("CUDAExecutionProvider", {"device_id": index, "arena_extend_strategy": "kNextPowerOfTwo",
                                                    "cudnn_conv_algo_search": "EXHAUSTIVE",
                                                    "do_copy_in_default_stream": True}))
    providers.append("CPUExecutionProvider")
    return providers


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


def create_session(path: str | Path, device: Optional[str] = None):
    """The shared ``onnxruntime.InferenceSession`` for ``path`` (CUDA when available, else CPU)."""
    return shared_session(path, onnx_providers(device))
