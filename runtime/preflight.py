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

Time is a sum over the traced operations (:class:`WorkCounter`, :class:`Work`): a fixed cost per dispatched
operation (host work and launch: Python, dispatcher, kernel launch), the flops of matmuls, convolutions and attention
each at its own rate, attention's query x key scores (the softmax work a small head does not amortise) and the bytes
every operation reads and writes at the memory bandwidth. The per-op cost, the rates and the bandwidth are measured
once per device and dtype by short probes (:func:`rates`, < 1 s, kept for the process; each the fastest of its
repeats, so other programs' load is not counted). On the CPU the parts
add up; on a GPU the kernels run while the host queues the next ones, so the time is the slower of the two sides.

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


_KINDS = ("ops", "matmul", "conv", "attention", "scores", "bytes")


class Work:
    """What a traced stretch of a run does: dispatched operations, flops of matmuls / convolutions / attention, the
    attention scores (query x key pairs: softmax work that a small head dimension does not amortise), and bytes read
    and written by every operation that makes a new tensor. Adds, subtracts and scales like a number, so the
    families' scaling of the traced units to a whole run applies to it; :meth:`seconds` turns it into time at a
    device's measured rates."""

    __slots__ = _KINDS

    def __init__(self, ops=0.0, matmul=0.0, conv=0.0, attention=0.0, scores=0.0, bytes=0.0):  # noqa: A002
        self.ops, self.matmul, self.conv, self.attention = float(ops), float(matmul), float(conv), float(attention)
        self.scores, self.bytes = float(scores), float(bytes)

    def _values(self):
        return [getattr(self, k) for k in _KINDS]

    @property
    def flops(self) -> float:
        return self.matmul + self.conv + self.attention

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        return Work(*(a + b for a, b in zip(self._values(), other._values())))

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        return Work(*(a - b for a, b in zip(self._values(), other._values())))

    def __mul__(self, k):
        return Work(*(a * float(k) for a in self._values()))

    __rmul__ = __mul__

    def __truediv__(self, k):
        return Work(*(a / float(k) for a in self._values()))

    def __float__(self):
        return self.flops

    def __eq__(self, other):
        return isinstance(other, Work) and self._values() == other._values()

    def __lt__(self, other):                    # for max(): the larger piece of work is the one with more flops
        return (self.flops, self.ops) < (other.flops, other.ops)

    def __gt__(self, other):
        return other < self

    def seconds(self, rates: "Rates") -> float:
        """CPU: the host runs every operation, so the parts add up. GPU (``rates.overlap``): kernels run while the
        host queues the next ones, so the slower of the two sides."""
        host = self.ops * rates.per_op
        device = (self.matmul / rates.matmul + self.conv / rates.conv + self.attention / rates.attention
                  + self.scores / rates.scores + self.bytes / rates.bandwidth)
        return max(host, device) if rates.overlap else host + device

    def breakdown(self, rates: "Rates") -> dict:
        """Seconds per part: per-op cost, matmul, conv, attention, memory traffic."""
        return {"per_op": self.ops * rates.per_op, "matmul": self.matmul / rates.matmul, "conv": self.conv / rates.conv,
                "attention": self.attention / rates.attention + self.scores / rates.scores,
                "memory": self.bytes / rates.bandwidth}

    def __repr__(self):
        return (f"Work(ops={self.ops:.0f}, matmul={self.matmul:.3g}, conv={self.conv:.3g}, "
                f"attention={self.attention:.3g}, scores={self.scores:.3g}, bytes={self.bytes:.3g})")


def _attention_work(args) -> tuple[float, float]:
    """(flops, scores) of attention over (..., L, E) queries and (..., S, E) keys: two matmuls (q k^T, then the
    softmax times v) and L x S scores per batch and head."""
    q, k, v = args[:3]
    batch = 1
    for d in q.shape[:-2]:
        batch *= int(d)
    scores = float(batch) * int(q.shape[-2]) * int(k.shape[-2])
    return 2.0 * scores * (int(q.shape[-1]) + int(v.shape[-1])), scores


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class WorkCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the :class:`Work` of the operations dispatched through it (not while ``meter.paused``: inputs made
    before the run). Matmuls and convolutions get torch's flop formulas, attention kernels two matmuls and their
    scores; every operation that makes a new tensor its bytes in and out; views and metadata queries move nothing."""

    def __init__(self, meter: Optional["LiveBytes"] = None):
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry
        self.meter = meter
        self.work = Work()

    def total(self) -> Work:
        return Work(*self.work._values())

    def get_total_flops(self) -> float:
        return self.work.flops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (self.meter is not None and self.meter.paused) or func.namespace == "prim":
            return out
        w = self.work
        w.ops += 1
        name = func.__name__
        packet = func._overloadpacket
        if "attention" in name and len(args) >= 3 and all(isinstance(a, torch.Tensor) for a in args[:3]):
            flops, scores = _attention_work(args)
            w.attention += flops
            w.scores += scores
        elif packet in self.registry:
            flops = self.registry[packet](*args, **kwargs, out_val=out)
            if "conv" in name:
                w.conv += flops
            else:
                w.matmul += flops
        if not getattr(func, "is_view", False) and not name.startswith(("empty", "new_empty")):
            leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
            w.bytes += sum(_nbytes(t) for t in leaves)
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
        self.marks: list[Work] = []             # work counted at each unit's end
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
        work = self.counter.total() if self.counter is not None else Work()
        self.marks.extend([work] * int(n))
        if self.stop_after is not None and len(self.marks) >= self.stop_after:
            raise _Stop()


@dataclass
class Trace:
    peak: dict                 # device type -> peak live bytes of the trace
    work: Work                 # counted work of the trace
    marks: list                # work at each unit's end
    totals: list               # units announced by the traced progress reporters

    @property
    def flops(self) -> float:
        return self.work.flops

    def device_peak(self, device: torch.device | str) -> int:
        return int(self.peak.get(torch.device(device).type, 0))

    def work_for(self, units: Optional[int] = None) -> Work:
        """The work of a whole run of ``units`` units (default: the announced total), from the traced units: the
        work before the first unit, plus the mean work of the traced units after the first for every later one."""
        total = sum(self.totals) if units is None else units
        if not self.marks or total <= len(self.marks):
            return self.work
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
    device = torch.device(device)
    rt = TraceRuntime(device, stop_after)
    mode = fake_mode()

    meter = LiveBytes(mode)
    counter = rt.counter = WorkCounter(meter)

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
    return Trace(peak=dict(meter.peak), work=counter.total(), marks=list(rt.marks), totals=list(rt.totals))


def traced_speed(speed):
    """The Speed Options a trace runs with: what changes the memory of a run is kept, the rest is the exact path.

    * ``attention``: ``sdpa_math`` materialises every query x key score matrix and is traced as such; the fused
      kernels (``sdpa`` and its flash/efficient/cudnn backends, SageAttention, ComfyUI's choice) hold no score
      matrix and are traced as ``sdpa`` (their kernels cannot run on fake tensors);
    * ``cache_interval``: kept; the sampler's stored deep features are real tensors in the trace (a family topping
      up what its untraced windows would store);
    * ``compile``: traced eager; a compiled block holds what the eager block holds (inductor may fuse temporaries
      away, so the estimate is on the safe side)."""
    if speed is None:
        return None
    from .speed import SpeedOptions

    attention = "sdpa_math" if speed.attention == "sdpa_math" else "sdpa"
    return SpeedOptions(attention=attention, cache_interval=int(speed.cache_interval))


def speed_key(speed) -> tuple:
    """The part of an estimate's cache key that the Speed Options decide."""
    traced = traced_speed(speed)
    return () if traced is None else (traced.attention, traced.cache_interval)


def on_meta(fn):
    """``fn()`` with new tensors on the meta device (shapes and dtypes, no memory): a ``make`` for a family's stand-in
    conditions when only their :func:`shapes_key` is wanted."""
    with torch.device("meta"):
        return fn()


def shapes_key(*tensors: torch.Tensor) -> tuple:
    """The part of an estimate's cache key that input tensors decide: their shapes and dtypes (never their values,
    device or the object's id), so the Preflight node, the sampler's own check and a re-queue with new inputs of the
    same shapes share one trace."""
    return tuple((tuple(t.shape), str(t.dtype)) for t in tensors)


def speed_settings(speed) -> dict:
    """The Speed Options an estimate names in its settings (none for the exact path)."""
    if speed is None:
        return {}
    from .speed import EXACT

    return {k: v for k, v in (("attention", speed.attention), ("compile", speed.compile),
                              ("cache_interval", int(speed.cache_interval)))
            if v != getattr(EXACT, k)}


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


@dataclass
class Rates:
    """Measured speeds of one device and dtype: seconds per dispatched operation (host work + launch), flops per
    second of matmuls, convolutions and attention, bytes per second of an elementwise operation."""

    per_op: float
    matmul: float
    conv: float
    attention: float
    bandwidth: float
    scores: float = float("inf")   # attention scores per second (the softmax part, apart from the matmul flops)
    probe_seconds: float = 0.0
    overlap: bool = False       # the device computes while the host dispatches (GPU): time = the slower side

    def to_dict(self) -> dict:
        return {"per_op_us": round(self.per_op * 1e6, 2), "matmul_gflops": round(self.matmul / 1e9, 1),
                "conv_gflops": round(self.conv / 1e9, 1), "attention_gflops": round(self.attention / 1e9, 1),
                "scores_g_per_s": round(self.scores / 1e9, 2),
                "bandwidth_gbs": round(self.bandwidth / 1e9, 1), "probe_seconds": round(self.probe_seconds, 2)}


_RATES: dict = {}


class _OverheadProbe(torch.nn.Module):
    """A block of the kinds of layers the models are made of, on tiny tensors: its time is its operations' fixed
    cost (Python, dispatcher, kernel launch), not their arithmetic."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, c)
        self.lin = torch.nn.Linear(c, c)
        self.ln = torch.nn.LayerNorm(c)

    def forward(self, x):                      # (1, C, 4, 4)
        h = torch.nn.functional.silu(self.norm(self.conv(x)))
        t = self.ln(h.flatten(2).transpose(1, 2))                                       # (1, 16, C)
        q = self.lin(t)[:, None]                                                        # (1, 1, 16, C)
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q)[:, 0]
        return x + a.transpose(1, 2).reshape(x.shape)


def _timed(device: torch.device, fn, min_seconds: float = 0.03, min_reps: int = 3) -> float:
    """Seconds of the fastest call of ``fn`` (after one warm-up call): on a shared machine the others' work only
    ever adds time, so the fastest call is the device's own speed."""
    fn()
    _sync(device)
    best, reps, start = float("inf"), 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


def rates(device: torch.device | str, dtype: torch.dtype = torch.float32) -> Rates:
    """The :class:`Rates` of ``device`` in ``dtype`` (the CPU: float32), measured once per process (< 1 s). On a
    CPU with several threads each figure is the better of all threads and one thread: on an idle machine all threads
    are faster; on a machine that other programs keep busy, every parallel operation waits for a core, which this
    run's own speed does not include (the estimate is the run's time on an idle machine)."""
    device = torch.device(device)
    dtype = dtype if device.type != "cpu" else torch.float32
    key = (device.type, device.index, dtype)
    if key in _RATES:
        return _RATES[key]
    started = time.perf_counter()
    threads = torch.get_num_threads()
    measured = _measure(device, dtype, per_op=device.type != "cpu" or threads == 1)
    if device.type == "cpu" and threads > 1:
        torch.set_num_threads(1)                 # the host's per-operation cost is one thread's
        try:
            one = _measure(device, dtype)
        finally:
            torch.set_num_threads(threads)
        measured = Rates(per_op=min(measured.per_op, one.per_op), matmul=max(measured.matmul, one.matmul),
                         conv=max(measured.conv, one.conv), attention=max(measured.attention, one.attention),
                         bandwidth=max(measured.bandwidth, one.bandwidth), scores=max(measured.scores, one.scores))
    if device.type == "cuda":
        torch.cuda.empty_cache()                 # the probes' blocks go back: the check reads the free memory next
    measured.probe_seconds = time.perf_counter() - started
    measured.overlap = device.type != "cpu"
    _RATES[key] = measured
    log.debug("preflight rates of %s %s: %s", device, dtype, measured.to_dict())
    return measured


def _measure(device: torch.device, dtype: torch.dtype, per_op: bool = True) -> Rates:
    big = device.type != "cpu"
    kw = dict(device=device, dtype=dtype)
    with torch.no_grad():
        n = 4096 if big else 512
        a, b = torch.randn(n, n, **kw), torch.randn(n, n, **kw)
        matmul = 2 * n ** 3 / _timed(device, lambda: a @ b)
        del a, b
        batch, c, side = (8, 256, 64) if big else (1, 64, 48)
        x, conv = torch.randn(batch, c, side, side, **kw), torch.nn.Conv2d(c, c, 3, padding=1).to(**kw)
        conv_rate = 2 * batch * c * c * 9 * side * side / _timed(device, lambda: conv(x))
        del x, conv
        # attention at two head sizes: time = flops / rate + scores / score rate (a small head pays the scores)
        heads, tokens, dim = (16, 4096, 64) if big else (8, 512, 40)
        times = []
        for d in (dim, 8):
            q = torch.randn(1, heads, tokens, d, **kw)
            times.append(_timed(device, lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)))
            del q
        pairs = heads * tokens * tokens
        per_flop = max((times[0] - times[1]) / (4 * pairs * (dim - 8)), times[0] / (4 * pairs * dim) / 4)
        per_score = max(times[1] - 4 * pairs * 8 * per_flop, times[1] / 4) / pairs
        attention, scores = 1 / per_flop, 1 / per_score
        elems = (32 if big else 4) << 20
        u, v = torch.randn(elems, **kw), torch.randn(elems, **kw)
        bandwidth = 3 * elems * u.element_size() / _timed(device, lambda: u + v)
        del u, v
        if per_op:
            probe = _OverheadProbe().to(**kw)
            x = torch.randn(1, 8, 4, 4, **kw)
            counter = WorkCounter()
            with counter:
                probe(x)
            per_op = _timed(device, lambda: probe(x), min_seconds=0.05, min_reps=5) / max(1.0, counter.work.ops)
        else:
            per_op = float("inf")
    return Rates(per_op=per_op, matmul=matmul, conv=conv_rate, attention=attention, bandwidth=bandwidth,
                 scores=scores)


def throughput(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """Flops per second of a square matmul on ``device`` in ``dtype`` (see :func:`rates`)."""
    return rates(device, dtype).matmul


def seconds(work: Work, device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """The time of ``work`` on ``device`` in ``dtype`` at the measured :func:`rates`."""
    return work.seconds(rates(device, dtype))


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
    ops: float = 0.0            # dispatched operations of the whole run (their fixed cost is part of ``seconds``)
    time_parts: dict = field(default_factory=dict)  # seconds per part of the time model (Work.breakdown)
    picked: dict = field(default_factory=dict)      # sizes the preflight chose (left on auto, defaults too large)
    sizes: dict = field(default_factory=dict)       # the memory-only sizes of the run and what they hold (family)
    refusal: str = ""                               # why the run would be refused (set by the Preflight node)

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
        out["time_parts"] = {k: round(v, 2) for k, v in self.time_parts.items()}
        return out

    def summary(self) -> str:
        where = "host memory (CPU)" if self.on_cpu else f"{self.device} memory"
        lines = [f"{self.model}: about {self.peak / MB:,.0f} MB of {where} at the peak "
                 f"(weights {self.weights / MB:,.0f} MB + run {(self.peak - self.weights) / MB:,.0f} MB)"]
        if not self.on_cpu:
            lines.append(f"host memory held by the run: about {self.host / MB:,.0f} MB")
        for stage, value in self.stages.items():
            lines.append(f"  {stage}: {value / MB:,.0f} MB of work on the device")
        lines.append(f"time: roughly {_duration(self.seconds)} ({self.flops / 1e12:,.2f} TFLOP and {self.ops:,.0f} "
                     "operations at this device's measured rates; the run alone, within about 2x on a CPU)")
        if self.free is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"free for the run: {self.free / MB:,.0f} MB -> {verdict}")
        lines.append("settings: " + ", ".join(f"{k} {v}" for k, v in self.settings.items()))
        if self.picked:
            lines.append("chosen to fit (memory only, same result): "
                         + ", ".join(f"{k} {v}" for k, v in self.picked.items()))
        if self.refusal:
            lines.append("the sampler would refuse: " + self.refusal)
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


def largest_fitting(candidates: Sequence[T], estimate_for: Callable[[T], Estimate], free: Optional[int],
                    name: str, fixes: Sequence[str] = ()) -> tuple[T, Estimate]:
    """The largest of ``candidates`` whose estimate fits ``free`` (None means no limit: the largest). Estimates grow
    with the size, so the search halves the list each time. ``candidates``: numbers (sorted here), or any values
    already in increasing order of memory (e.g. tuples of sizes). Nothing fits: :class:`PreflightError` naming the
    smallest candidate's estimate and ``fixes``."""
    ordered = sorted(set(candidates)) if all(isinstance(c, (int, float)) for c in candidates) else list(candidates)
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
        tried = ordered[0] if not isinstance(ordered[0], dict) else ", ".join(f"{k} {v}" for k, v in ordered[0].items())
        raise PreflightError(f"{smallest.model} will not fit even with {name} {tried}: it needs about "
                             f"{smallest.peak / MB:,.0f} MB (" + ", ".join(f"{k} {v}" for k, v in
                                                                          smallest.settings.items())
                             + f") and {free / MB:,.0f} MB is free. Nothing was run."
                             + (" Try: " + "; ".join(fixes) + "." if fixes else ""))
    best[1].free = free
    return best


__all__ = ["BUDGET_ENV", "Estimate", "LiveBytes", "PreflightError", "Rates", "Trace", "TraceRuntime", "Work",
           "WorkCounter", "budget_override", "check", "fake_mode", "free_bytes", "largest_fitting", "module_bytes",
           "rates", "seconds", "speed_key", "speed_settings", "throughput", "trace", "traced_speed"]
