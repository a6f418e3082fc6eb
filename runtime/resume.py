"""Resumable long runs: finished segments of a sampling run in a cache folder keyed by everything that determines the
frames, so a run that was cancelled, crashed or lost its server continues where it stopped.

* :class:`ResumeOptions` says where (a folder that survives a restart: inside ComfyUI ``output/portrait_animation/
  resume``, never the temp folder ComfyUI wipes at start), whether to keep a finished job's entry and how large the
  whole cache may grow (oldest entries deleted first).
* :func:`resume_key` hashes the inputs of a run: tensors (dtype, shape, bytes), settings (dataclasses, dicts, lists,
  numbers, strings), models (:func:`module_fingerprint`: parameter names, shapes, dtypes and a strided sample of
  their values), the device kind and the pack's version and resume format.
* :class:`ResumeJob` is one run's entry: ``<folder>/<family>-<key>/<segment>.pt``, each segment written under a
  temporary name and renamed (an interrupted write leaves no segment), read with ``torch.load(weights_only=True)``;
  a corrupt or partial segment is logged and ignored, never raised. :meth:`ResumeJob.finish` deletes the entry when
  the run completed (unless ``keep``).

What a segment holds is each family's business (MEMO: the final latents of a finished clip; HunyuanPortrait and
HelloMeme: the whole-sequence latent state after a step, with the scheduler and noise-generator state); the families
only say which names they save and how to continue from them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

RESUME_FORMAT = 1  # bump when what a segment holds, or how a family continues from it, changes
DEFAULT_MAX_GB = 8.0
ENTRY_META = "job.json"
_FINGERPRINT_ATTR = "_pa_resume_fingerprint"


@dataclass(frozen=True)
class ResumeOptions:
    """Where and how a sampler keeps its finished segments. ``folder`` None or ``enabled`` False: no resume."""

    folder: str | None = None
    enabled: bool = True
    keep: bool = False  # keep a finished job's entry (a re-queue of the same job then only decodes)
    max_gb: float = DEFAULT_MAX_GB  # the whole cache folder; the oldest entries go first

    @property
    def active(self) -> bool:
        return bool(self.enabled and self.folder)


# ---- keys ---------------------------------------------------------------------------------------------------------
def _pack_version() -> str:
    try:
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        return match.group(1) if match else "unknown"
    except OSError:
        return "unknown"


def module_fingerprint(module: torch.nn.Module, samples: int = 16) -> str:
    """A cheap identity of a model's weights: every parameter's and buffer's name, shape, dtype and ``samples``
    values taken at a stride through it (cached on the module; a different file or dtype gives a different one)."""
    cached = getattr(module, _FINGERPRINT_ATTR, None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            if flat.numel():
                stride = max(1, flat.numel() // samples)
                h.update(flat[::stride][:samples].float().cpu().numpy().tobytes())
    value = h.hexdigest()
    try:
        object.__setattr__(module, _FINGERPRINT_ATTR, value)
    except (AttributeError, TypeError):
        pass
    return value


def _feed(h, value: Any) -> None:
    if isinstance(value, torch.nn.Module):
        h.update(b"M" + module_fingerprint(value).encode())
    elif isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    elif is_dataclass(value) and not isinstance(value, type):
        h.update(f"D{type(value).__name__}".encode())
        _feed(h, {f.name: getattr(value, f.name) for f in fields(value)})
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            _feed(h, str(k))
            _feed(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    elif hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy arrays and scalars
        import numpy as np

        a = np.ascontiguousarray(value)
        h.update(f"A{a.dtype}{a.shape}".encode() + a.tobytes())
    else:
        h.update(f"{type(value).__name__}:{value!r}".encode())


def device_identity(device) -> str:
    """The device kind (CUDA: the card's name; bit-identical continuation is only promised on the same kind)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def resume_key(*parts: Any) -> str:
    """A hex key of everything that determines a run's frames (pass the inputs, settings, models, dtype, device)."""
    h = hashlib.sha256()
    _feed(h, ("portrait-animation", _pack_version(), RESUME_FORMAT, torch.__version__))
    for part in parts:
        _feed(h, part)
    return h.hexdigest()[:32]


# ---- the cache folder ---------------------------------------------------------------------------------------------
def _entry_size(path: Path) -> int:  # an entry may hold entries of its own (hunyuan_portrait.resume.guard_scope)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _entry_time(path: Path) -> float:
    times = [f.stat().st_mtime for f in path.rglob("*") if f.is_file()]
    return max(times) if times else path.stat().st_mtime


def enforce_cap(folder: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the oldest entries (last written first kept) until the folder holds at most ``max_bytes``; ``keep`` is
    never deleted. Returns the deleted entries."""
    if not folder.is_dir():
        return []
    entries = [p for p in folder.iterdir() if p.is_dir() and (keep is None or p.resolve() != keep.resolve())]
    sizes = {p: _entry_size(p) for p in entries}
    total = sum(sizes.values()) + (_entry_size(keep) if keep is not None and keep.is_dir() else 0)
    removed = []
    for p in sorted(entries, key=_entry_time):
        if total <= max_bytes:
            break
        shutil.rmtree(p, ignore_errors=True)
        total -= sizes[p]
        removed.append(p)
        log.info("resume cache: removed %s (%.1f MB) to stay under %.1f GB", p.name, sizes[p] / 2 ** 20,
                 max_bytes / 2 ** 30)
    return removed


class ResumeJob:
    """One run's entry in the cache folder (see the module docstring). ``None``-safe use: :func:`open_job` returns
    None when resume is off, and the samplers skip every call then."""

    def __init__(self, options: ResumeOptions, family: str, key: str, describe: dict | None = None):
        self.options = options
        self.family = family
        self.key = key
        self.root = Path(options.folder)
        self.path = self.root / f"{family}-{key}"
        self.describe = describe or {}
        self.resumed_from: str | None = None  # what a continuing run started from (for logs and tests)

    @property
    def max_bytes(self) -> int:
        return int(self.options.max_gb * 2 ** 30)

    def load(self, name: str) -> dict | None:
        """The segment ``name``, or None (absent, or unreadable: logged and ignored)."""
        path = self.path / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise ValueError(f"expected a dict, found {type(data).__name__}")
            return data
        except Exception as e:  # noqa: BLE001 -- a bad cache entry must never stop a run
            log.warning("resume cache: ignoring the unreadable segment %s (%s: %s); this part is computed again",
                        path, type(e).__name__, e)
            return None

    def save(self, name: str, data: dict) -> None:
        """Write ``data`` (tensors, numbers, strings, lists, dicts) as segment ``name`` atomically; a failed write
        is logged (the run goes on without it)."""
        tmp = self.path / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = self.path / ENTRY_META
            if not meta.is_file():
                meta_tmp = self.path / f".{ENTRY_META}.{uuid.uuid4().hex}.tmp"
                meta_tmp.write_text(json.dumps({"family": self.family, "key": self.key, "created": time.time(),
                                                "format": RESUME_FORMAT, **self.describe}, default=str))
                os.replace(meta_tmp, meta)
            torch.save(data, tmp)
            os.replace(tmp, self.path / f"{name}.pt")
        except OSError as e:
            log.warning("resume cache: could not write %s (%s); the run goes on without it", self.path / name, e)
            tmp.unlink(missing_ok=True)
            return
        enforce_cap(self.root, self.max_bytes, keep=self.path)

    def drop(self, name: str) -> None:
        (self.path / f"{name}.pt").unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.pt")) if self.path.is_dir() else []

    def finish(self) -> None:
        """The run completed: delete the entry (unless ``keep``)."""
        if not self.options.keep:
            shutil.rmtree(self.path, ignore_errors=True)

    def resuming(self, what: str, done: int, total: int) -> None:
        self.resumed_from = f"{what} {done} of {total}"
        log.info("resuming %s from %s %d of %d (%s)", self.family, what, done, total, self.path)


def open_job(options: ResumeOptions | None, family: str, *key_parts: Any, describe: dict | None = None
             ) -> ResumeJob | None:
    """The run's :class:`ResumeJob` (its key from ``key_parts``), or None when resume is off."""
    if options is None or not options.active:
        return None
    job = ResumeJob(options, family, resume_key(family, *key_parts), describe)
    try:
        enforce_cap(job.root, job.max_bytes, keep=job.path)
    except OSError as e:
        log.warning("resume cache: cannot tidy %s (%s)", job.root, e)
    return job


def settings_dict(value: Any) -> Any:
    """A dataclass as a plain dict (for ``describe``)."""
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


__all__ = ["DEFAULT_MAX_GB", "RESUME_FORMAT", "ResumeJob", "ResumeOptions", "device_identity", "enforce_cap",
           "module_fingerprint", "open_job", "resume_key", "settings_dict"]
