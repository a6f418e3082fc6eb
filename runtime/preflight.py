"""Preflight: peak memory and time of a run, estimated before any work by tracing the real code on fake tensors.

The estimate runs the sampler's own functions, with its own modules, at the requested shapes, under
``FakeTensorMode``: every tensor has its real shape, dtype and device but no data, so nothing is computed and no
memory is taken. Two modes watch the trace:

* :class:`LiveBytes` adds up the bytes of the tensor storages created and still alive, per device, and keeps the
  peak (views share their storage);
* ``FlopCounterMode`` counts the floating-point work (matmuls, convolutions, attention).

The models the sampler makes resident are traced with fake weights on the compute device (their real bytes are
added as ``weights``); everything else keeps its place. A :class:`TraceRuntime` stands in for the real runtime: it
loads nothing, and its progress reporter stops the trace once ``stop_after`` units (denoiser steps, windows, decode
chunks) have run: the memory peak of a long run is reached in its first units (the sequence state is allocated
before them), and the time of the rest follows from the work per unit times the units the run announced.

Time is ``flops / throughput``, the throughput measured once per device and dtype by a short matmul probe: a rough
figure (convolutions, attention kernels and host work run at other rates).

:func:`check` compares an estimate with the memory free for the run (:func:`free_bytes`: ComfyUI's view under
ComfyUI, ``torch.cuda.mem_get_info`` standalone, host RAM on the CPU) and refuses with a message that names the
model, the estimate, the free memory and the fixes. :func:`largest_fitting` picks the largest of some sizes whose
estimate fits. ``PORTRAIT_ANIMATION_MEMORY_MB`` (environment) caps the memory the checks plan for.
"""
from __future__ import annotations

import json
import logging
import os
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional, Sequence, TypeVar

import torch

from ..media.errors import PlainName
from .base import Progress, Runtime

log = logging.getLogger(__name__)

MB = 1 << 20
BUDGET_ENV = "PORTRAIT_ANIMATION_MEMORY_MB"
T = TypeVar("T")


class PreflightError(PlainName, RuntimeError):
    """The run does not fit the free memory (raised before any work)."""


class _Stop(Exception):
    """Ends a trace after the units it needs."""


# ---- tracing ------------------------------------------------------------------------------------------------------
_SCALAR_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)


class LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the mode and still alive, per device type."""

    def __init__(self, mode=None):
        super().__init__()
        self.mode = mode                          # the fake mode, for outputs made from real stand-in values
        self.refs: dict[int, list] = {}          # storage id -> [tensor refcount, nbytes, device type]
        self.live: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.scalars = 0         # values read back from tensors (answered with 0)
        self.paused = 0          # inside Module._apply (weights cast or moved): not counted, no weak references

    def _on_zeros(self, func, args, kwargs):
        from torch._subclasses.fake_tensor import FakeTensor

        leaves = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if sum(t.numel() for t in leaves) > (1 << 20):
            raise RuntimeError(f"preflight: {func} on large tensors needs their values, which a trace does not have")
        device = leaves[0].device if leaves else torch.device("cpu")
        with torch.utils._python_dispatch._disable_current_modes():
            real = torch.utils._pytree.tree_map(
                lambda t: torch.zeros(t.shape, dtype=t.dtype) if isinstance(t, torch.Tensor) else t, (args, kwargs))
            out = func(*real[0], **real[1])
            return torch.utils._pytree.tree_map(
                lambda t: FakeTensor(self.mode, t.to("meta"), device) if isinstance(t, torch.Tensor) else t, out)

    def _release(self, key):
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live[entry[2]] -= entry[1]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SCALAR_READS:
            # a value read back (``.item()``, ``bool(t)``): fake tensors have none; the trace takes 0 / False, so
            # a data-dependent branch follows its "zero" side (the memory of both sides is the same in our samplers)
            self.scalars += 1
            return False if args[0].dtype == torch.bool else (0 if not args[0].is_floating_point() else 0.0)
        try:
            out = func(*args, **(kwargs or {}))
        except Exception as e:   # an output whose shape depends on values (bincount, nonzero): run it on zeros
            if type(e).__name__ != "DynamicOutputShapeException" or self.mode is None:
                raise
            out = self._on_zeros(func, args, kwargs or {})
        if self.paused:
            return out
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st._cdata
            entry = self.refs.get(key)
            if entry is None:
                kind = t.device.type
                entry = self.refs[key] = [0, st.nbytes(), kind]
                live = self.live[kind] = self.live.get(kind, 0) + st.nbytes()
                self.peak[kind] = max(self.peak.get(kind, 0), live)
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out


class _TraceProgress(Progress):
    def __init__(self, owner: "TraceRuntime", total: int):
        self.owner = owner
        owner.totals.append(int(total))

    def update(self, n: int = 1, preview=None) -> None:
        self.owner.unit(n)


class TraceRuntime(Runtime):
    """A runtime for traces: loads nothing, reports nothing; its progress marks units and stops the trace."""

    name = "preflight"

    def __init__(self, device: torch.device | str, stop_after: Optional[int] = None):
        self._device = torch.device(device)
        self.stop_after = stop_after
        self.totals: list[int] = []
        self.marks: list[float] = []            # flops counted at each unit's end
        self.counter = None

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def default_dtype(self, role, supported):
        return torch.float32

    def manage(self, name, module, dtype):
        from .base import ModelHandle

        return ModelHandle(name=name, module=module, dtype=dtype)    # the weights stay where they are

    def load(self, handles) -> None:
        pass

    def offload(self, handles) -> None:
        pass

    def progress(self, total: int, desc: str = "") -> Progress:
        return _TraceProgress(self, total)

    def check_interrupted(self) -> None:
        pass

    def unit(self, n: int = 1) -> None:
        flops = float(self.counter.get_total_flops()) if self.counter is not None else 0.0
        self.marks.extend([flops] * int(n))
        if self.stop_after is not None and len(self.marks) >= self.stop_after:
            raise _Stop()


@dataclass
class Trace:
    peak: dict                 # device type -> peak live bytes of the trace
    flops: float               # counted flops of the trace
    marks: list                # flops at each unit's end
    totals: list               # units announced by the traced progress reporters

    def device_peak(self, device: torch.device | str) -> int:
        return int(self.peak.get(torch.device(device).type, 0))

    def flops_for(self, units: Optional[int] = None) -> float:
        """The work of a whole run of ``units`` units (default: the announced total), from the traced units: the
        work before the first unit, plus the mean work of the traced units after the first for every later one."""
        total = sum(self.totals) if units is None else units
        if not self.marks or total <= len(self.marks):
            return self.flops
        first = self.marks[0]
        later = (self.marks[-1] - first) / (len(self.marks) - 1) if len(self.marks) > 1 else first
        return first + later * (total - 1)


def _fake_like(mode, t: torch.Tensor, device: torch.device) -> torch.Tensor:
    with mode:
        return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=device)


@contextmanager
def _fake_weights(mode, modules: Iterable[torch.nn.Module], device: torch.device):
    """Swap the parameters and buffers of ``modules`` for fake tensors on ``device``; restore them, and every
    attribute the trace set on a submodule (caches), afterwards."""
    subs, seen = [], set()
    for module in modules:
        for m in module.modules():
            if id(m) not in seen:
                seen.add(id(m))
                subs.append(m)
    saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers)) for m in subs]
    try:
        for m in subs:
            for table in (m._parameters, m._buffers):
                for key, value in list(table.items()):
                    if value is not None:
                        table[key] = _fake_like(mode, value, device)
        yield
    finally:
        for m, attrs, params, buffers in saved:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            m.__dict__.clear()
            m.__dict__.update(attrs)


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def _outside(fn):
    def wrapper(*args, **kwargs):  # real tensors: small tables computed from Python values (scheduler steps)
        with torch.utils._python_dispatch._disable_current_modes():
            return fn(*args, **kwargs)
    return wrapper


@contextmanager
def _patched(real_calls):
    saved = [(owner, name, getattr(owner, name)) for owner, name in real_calls]
    try:
        for owner, name, value in saved:
            setattr(owner, name, _outside(value))
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def trace(fn: Callable[[TraceRuntime, Callable], object], resident: Sequence[torch.nn.Module],
          device: torch.device | str, stop_after: Optional[int] = None, real_calls: Sequence[tuple] = ()) -> Trace:
    """Run ``fn(runtime, make)`` on fake tensors: ``resident`` modules get fake weights on ``device``; ``make(f)``
    calls ``f()`` in the fake mode outside the byte count (inputs that exist before the run: conditions, images).
    ``real_calls``: ``(owner, attribute)`` functions run on real tensors (tables made from Python values, e.g. a
    scheduler's ``set_timesteps``). The trace ends when ``fn`` returns or after ``stop_after`` progress units."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device)
    rt = TraceRuntime(device, stop_after)
    mode = fake_mode()

    counter = FlopCounterMode(display=False)
    rt.counter = counter
    meter = LiveBytes(mode)

    def make(f):  # inputs that exist before the run: not counted
        meter.paused += 1
        try:
            with mode:
                return f()
        finally:
            meter.paused -= 1
    apply = torch.nn.Module._apply
    moved: dict = {}                         # id -> (module, parameters, buffers) of modules cast/moved in the trace

    def fake_apply(module, fn, recurse=True):
        """``Module.to``/``.float()`` in a trace: the new (fake) tensors replace the old in place, no swapping (a
        fake weight cannot be swapped), uncounted; the originals come back when the trace ends."""
        meter.paused += 1
        try:
            for m in (module.modules() if recurse else [module]):
                if id(m) not in moved:
                    moved[id(m)] = (m, dict(m._parameters), dict(m._buffers))
                for table in (m._parameters, m._buffers):
                    for key, value in list(table.items()):
                        if value is not None:
                            table[key] = fn(value)
            return module
        finally:
            meter.paused -= 1

    torch.nn.Module._apply = fake_apply
    with torch.no_grad(), _fake_weights(mode, resident, device), _patched(real_calls):
        try:
            with mode, counter, meter:
                result = fn(rt, make)
                if hasattr(result, "__next__"):              # a generator: run it through
                    for _ in result:
                        pass
        except _Stop:
            pass
        finally:
            torch.nn.Module._apply = apply
            for m, params, buffers in moved.values():
                m._parameters.clear()
                m._parameters.update(params)
                m._buffers.clear()
                m._buffers.update(buffers)
    return Trace(peak=dict(meter.peak), flops=float(counter.get_total_flops()), marks=list(rt.marks),
                 totals=list(rt.totals))


# ---- weights, free memory, throughput ---------------------------------------------------------------------------
def module_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """Bytes of the parameters and buffers of ``modules`` (shared tensors once)."""
    seen, total = set(), 0
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            key = t.untyped_storage()._cdata if not t.is_meta else id(t)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes() if not t.is_meta else t.numel() * t.element_size()
    return total


def budget_override() -> Optional[int]:
    value = os.environ.get(BUDGET_ENV, "").strip()
    if not value:
        return None
    try:
        return int(float(value) * MB)
    except ValueError:
        raise PreflightError(f"environment variable {BUDGET_ENV}={value!r} is not a number of MB") from None


def free_bytes(runtime: Runtime, resident: Sequence[torch.nn.Module] = ()) -> int:
    """Memory this run may use on ``runtime.device``, counting what ``resident`` already holds there: ComfyUI's
    free memory plus what its memory manager could unload (under ComfyUI), ``torch.cuda.mem_get_info`` (standalone
    GPU), available host RAM (CPU). ``PORTRAIT_ANIMATION_MEMORY_MB`` caps it."""
    cap = budget_override()
    device = runtime.device
    held = sum(module_bytes([m]) for m in resident if _on(m, device))
    if device.type == "cpu":               # weights already in RAM count in the estimate: add them back
        free = host_available()
    elif runtime.name == "comfyui":
        import comfy.model_management as mm

        free = int(mm.get_free_memory(device))
        for loaded in list(getattr(mm, "current_loaded_models", [])):
            try:
                if loaded.device == device:
                    free += int(loaded.model_loaded_memory())
            except Exception:       # an entry without the method (other ComfyUI versions): counted as not freeable
                continue
        held = 0  # our models are among the loaded ones (or not loaded yet)
    else:
        free = int(torch.cuda.mem_get_info(device)[0])
    free += held
    return free if cap is None else min(free, cap)


def host_available() -> int:
    """Available host RAM (psutil when installed, else /proc/meminfo, else physical pages)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    for t in module.parameters():
        return t.device.type == device.type
    return False


_THROUGHPUT: dict = {}


def throughput(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """Flops per second of a square matmul on ``device`` in ``dtype`` (measured once per process and kept)."""
    device = torch.device(device)
    key = (device.type, device.index, dtype)
    if key not in _THROUGHPUT:
        n = 512 if device.type == "cpu" else 4096
        dtype = dtype if device.type != "cpu" or dtype == torch.float32 else torch.float32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        _sync(device)
        a @ b
        _sync(device)
        reps, start = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - start < 0.05:
            a @ b
            reps += 1
        _sync(device)
        _THROUGHPUT[key] = 2 * n ** 3 * reps / (time.perf_counter() - start)
    return _THROUGHPUT[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the estimate -----------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    """Peak memory and time of one run. On the CPU, device and host memory are the same and ``peak`` adds both."""

    model: str
    device: str
    weights: int                # bytes of the models resident on the device during the run
    work: int                   # peak bytes of the run's tensors on the device (traced)
    host: int                   # peak bytes of the run's tensors on the host (traced + outputs), when device != cpu
    flops: float
    seconds: float
    settings: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)     # stage -> traced device peak (bytes)
    free: Optional[int] = None
    trace_seconds: float = 0.0

    @property
    def on_cpu(self) -> bool:
        return self.device.startswith("cpu")

    @property
    def peak(self) -> int:
        """Peak bytes of the device memory (on the CPU: of host memory, weights + run + outputs)."""
        return self.weights + self.work + (self.host if self.on_cpu else 0)

    @property
    def fits(self) -> Optional[bool]:
        return None if self.free is None else self.peak <= self.free

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(peak=self.peak, peak_mb=round(self.peak / MB, 1), seconds=round(self.seconds, 1),
                   free_mb=None if self.free is None else round(self.free / MB, 1), fits=self.fits)
        out["stages"] = {k: round(v / MB, 1) for k, v in self.stages.items()}
        return out

    def summary(self) -> str:
        where = "host memory (CPU)" if self.on_cpu else f"{self.device} memory"
        lines = [f"{self.model}: about {self.peak / MB:,.0f} MB of {where} at the peak "
                 f"(weights {self.weights / MB:,.0f} MB + run {(self.peak - self.weights) / MB:,.0f} MB)"]
        if not self.on_cpu:
            lines.append(f"host memory held by the run: about {self.host / MB:,.0f} MB")
        for stage, value in self.stages.items():
            lines.append(f"  {stage}: {value / MB:,.0f} MB of work on the device")
        lines.append(f"time: roughly {_duration(self.seconds)} ({self.flops / 1e12:,.2f} TFLOP at the measured matmul "
                     "rate; a rough figure)")
        if self.free is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"free for the run: {self.free / MB:,.0f} MB -> {verdict}")
        lines.append("settings: " + ", ".join(f"{k} {v}" for k, v in self.settings.items()))
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check(estimate: Estimate, free: Optional[int], fixes: Sequence[str]) -> Estimate:
    """Attach ``free`` to the estimate; refuse (:class:`PreflightError`) when the peak exceeds it."""
    estimate.free = free
    if free is not None and estimate.peak > free:
        where = "host memory" if estimate.on_cpu else f"{estimate.device} memory"
        raise PreflightError(
            f"{estimate.model} will not fit: it needs about {estimate.peak / MB:,.0f} MB of {where} "
            f"(weights {estimate.weights / MB:,.0f} MB + run {(estimate.peak - estimate.weights) / MB:,.0f} MB; "
            + ", ".join(f"{k} {v}" for k, v in estimate.settings.items())
            + f") and {free / MB:,.0f} MB is free. Nothing was run. Try: " + "; ".join(fixes) + ".")
    return estimate


def advisory(model: str, check: Callable[[], T], fallback: Optional[T] = None) -> Optional[T]:
    """A sampler's preflight: ``check()`` (an estimate and its refusal), whose :class:`PreflightError` stops the run
    before any work. Any other failure means the trace could not follow this run's code; the check is a safeguard,
    not a condition of the run, so the failure is logged and the run goes on unchecked with ``fallback``."""
    try:
        return check()
    except PreflightError:
        raise
    except Exception as e:  # noqa: BLE001 (the trace runs the whole sampler on fake tensors)
        log.warning("%s preflight: could not estimate this run (%s: %s); running it without the memory check",
                    model, type(e).__name__, str(e).splitlines()[0] if str(e) else "", exc_info=log.isEnabledFor(
                        logging.DEBUG))
        return fallback


def largest_fitting(candidates: Sequence[int], estimate_for: Callable[[int], Estimate], free: Optional[int],
                    name: str) -> tuple[int, Estimate]:
    """The largest of ``candidates`` whose estimate fits ``free`` (the smallest when ``free`` is None means no
    limit: the largest). Estimates grow with the size, so the search halves the list each time."""
    ordered = sorted(set(int(c) for c in candidates))
    if free is None:
        return ordered[-1], estimate_for(ordered[-1])
    lo, hi, best = 0, len(ordered) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        est = estimate_for(ordered[mid])
        if est.peak <= free:
            best = (ordered[mid], est)
            lo = mid + 1
        else:
            hi = mid - 1
    if best is None:
        smallest = estimate_for(ordered[0])
        smallest.free = free
        raise PreflightError(f"{smallest.model} will not fit even with {name} {ordered[0]}: it needs about "
                             f"{smallest.peak / MB:,.0f} MB and {free / MB:,.0f} MB is free. Nothing was run.")
    best[1].free = free
    return best


__all__ = ["BUDGET_ENV", "Estimate", "LiveBytes", "PreflightError", "Trace", "TraceRuntime", "budget_override",
           "check", "fake_mode", "free_bytes", "largest_fitting", "module_bytes", "throughput", "trace"]
