"""Reading checkpoints: safetensors, ``.pth``/``.bin`` with ``weights_only=True``, diffusers folders; strict loading.

* :func:`read_state_dict` reads one file into a CPU state dict, optionally casting floating tensors to a dtype.
* :func:`read_diffusers_folder` reads ``config.json`` plus the weights (single file or sharded index).
* :func:`load_strict` loads a state dict into a module and raises :class:`CheckpointKeyError` naming the file and the
  missing, unexpected and mis-shaped keys. Modules can be built on the meta device and materialised by the load
  (``assign=True``), so the weights are held in memory once.
* :func:`embedded_config` returns the configs the official loaders would fetch from the hub, shipped with the pack;
  :func:`config_dict` resolves a config argument (``None`` -> the embedded one, a dict, a JSON file or a folder).
* :func:`load_with_policy` is what the family loaders use for released files: it applies a
  :class:`~.policy.LoadPolicy` (known layouts converted, known extras dropped and logged, uncovered extras warned
  about, missing keys an error) and attaches the :class:`~.policy.LoadReport` to the module as ``load_report``.
  :func:`load_file_with_policy` reads the file first and returns the module in eval mode.
  :func:`load_strict` / :func:`build_and_load` without a policy keep the exact-match semantics (parity code paths).
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

import torch

from ..media.errors import PlainName
from .policy import LoadPolicy, LoadReport, apply_policy, dtype_counts, log_report, unwrap_checkpoint
from .store import CorruptModelFile, check_file_format

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin")
INDEX_NAMES = ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json",
               "diffusion_pytorch_model.bin.index.json", "pytorch_model.bin.index.json")


class UnsafeCheckpoint(PlainName, RuntimeError):
    """The file needs arbitrary unpickling; refused."""


class CheckpointKeyError(PlainName, RuntimeError):
    """The checkpoint's keys do not match the module: names the file and the offending keys."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple, tuple]],
                 what: str = "", limit: int = 12, hint: str = ""):
        self.source, self.missing, self.unexpected, self.mismatched = source, missing, unexpected, mismatched

        def show(keys):
            head = ", ".join(keys[:limit])
            return head + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")

        parts = [f"checkpoint {source} does not match {what or 'the model'}"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if mismatched:
            parts.append("shape mismatches ({}): {}".format(
                len(mismatched), show([f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched])))
        parts.append(hint or "Probable cause: a wrong file or version? (Is this the right file for this model, from "
                             "the release this pack expects?)")
        super().__init__("\n  ".join(parts))


class FileStateDict(dict):
    """A state dict as read from a file, cast or not, that remembers the file's own tensor dtypes
    (``file_dtypes``: ``{dtype name: count}``) for the :class:`~.policy.LoadReport`."""

    file_dtypes: dict[str, int]

    def __init__(self, *args, file_dtypes: Optional[dict[str, int]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.file_dtypes = dict(file_dtypes) if file_dtypes is not None else dtype_counts(self)

    def merge(self, other: Mapping[str, torch.Tensor]) -> None:
        """``update`` that also adds ``other``'s file dtype counts (sharded checkpoints)."""
        self.update(other)
        counts = getattr(other, "file_dtypes", None) or dtype_counts(other)
        for k, n in counts.items():
            self.file_dtypes[k] = self.file_dtypes.get(k, 0) + n


def _cast_one(v: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return v.to(dtype) if dtype is not None and v.is_floating_point() and v.dtype != dtype else v


def _cast(sd: dict, dtype: torch.dtype | None) -> dict:
    """Cast the floating tensors of ``sd`` to ``dtype``, one at a time and in place of the dict's entries, so that an
    uncast tensor is freed as soon as its copy exists (when nothing else holds it)."""
    if dtype is None:
        return sd
    for k in list(sd):
        sd[k] = _cast_one(sd[k], dtype)
    return sd


# safetensors dtype names -> torch dtypes (the format's header names, https://github.com/huggingface/safetensors)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32"),
                     ("U64", "uint64")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)


def _read_safetensors_cast(path: Path, dtype: torch.dtype) -> FileStateDict:
    """Read a ``.safetensors`` file one tensor at a time with plain reads, casting each floating tensor to ``dtype``
    as it arrives: the peak host memory is the cast state dict plus one tensor as stored, with no memory map whose
    touched pages would count towards the process's resident size. Raises ``ValueError`` on a malformed file."""
    size = path.stat().st_size
    counts: dict[str, int] = {}
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("file shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise ValueError(f"header length {n} does not fit the file size {size}")
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        base = 8 + n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            st_dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if st_dtype not in _ST_DTYPES:
                raise ValueError(f"tensor {key!r}: unsupported dtype {st_dtype}")
            t_dtype = _ST_DTYPES[st_dtype]
            numel = 1
            for d in shape:
                numel *= int(d)
            itemsize = torch.empty((), dtype=t_dtype).element_size()
            if end - start != numel * itemsize or start < 0 or base + end > size:
                raise ValueError(f"tensor {key!r}: data offsets {start}..{end} do not fit its shape {list(shape)} "
                                 f"{st_dtype} or the file size {size}")
            raw = torch.empty(end - start, dtype=torch.uint8)
            f.seek(base + start)
            if end > start and f.readinto(memoryview(raw.numpy())) != end - start:
                raise ValueError(f"tensor {key!r}: file truncated")
            t = raw.view(t_dtype).reshape(shape)
            name = str(t_dtype).replace("torch.", "")
            counts[name] = counts.get(name, 0) + 1
            out[key] = _cast_one(t, dtype)
            del raw, t
    return FileStateDict(out, file_dtypes=counts)


def read_state_dict(path: str | Path, dtype: torch.dtype | None = None, unwrap: str | Sequence[str] | None = None,
                    report: Optional[LoadReport] = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a CPU state dict (tensors in the file's own dtypes unless ``dtype`` is given).

    ``.safetensors``/``.sft`` are memory-mapped; ``.pth``/``.pt``/``.bin``/``.ckpt`` go through
    ``torch.load(weights_only=True)`` (never arbitrary unpickling). ``unwrap`` names a top-level key that must be
    there (a string), or a sequence of container keys descended into where present, in order (training checkpoints
    ``{"model": {...}, "optimizer": {...}}``; the siblings are recorded as dropped in ``report``); a lone
    ``state_dict`` key is unwrapped automatically.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt"):
        raise ValueError(f"unsupported checkpoint format {suffix!r} for {path} (use .safetensors, .pth or .bin)")
    try:
        if suffix in (".safetensors", ".sft") and dtype is not None:
            sd = _read_safetensors_cast(path, dtype)
        elif suffix in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(f"{path} holds Python objects beyond tensors, which this pack refuses to unpickle "
                               f"(torch.load weights_only=True): {e}. Use the official file, or convert it to "
                               "safetensors.") from e
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        problem = check_file_format(path) or f"{type(e).__name__}: {e}"
        raise CorruptModelFile(None, path, problem) from e
    except Exception as e:
        if type(e).__name__ == "SafetensorError":
            raise CorruptModelFile(None, path, f"{type(e).__name__}: {e}") from e
        raise
    if unwrap is not None and not isinstance(unwrap, str):
        sd = unwrap_checkpoint(sd, tuple(unwrap), report)
    elif unwrap is not None:
        if unwrap not in sd:
            raise CheckpointKeyError(str(path), [unwrap], [], [], what=f"the expected layout (top-level {unwrap!r})")
        sd = sd[unwrap]
    elif set(sd) == {"state_dict"}:
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointKeyError(str(path), [], [], [], what="a flat tensor state dict")
    sd = sd if isinstance(sd, FileStateDict) else FileStateDict(sd)
    return _cast(sd, dtype)  # per tensor: a memory-mapped .pth is never held whole in its own dtype


def _is_zip(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def find_weights(folder: str | Path) -> list[Path]:
    """The weight file(s) of a diffusers-style folder: one file, or the shards listed by an index."""
    folder = Path(folder)
    for name in INDEX_NAMES:
        idx = folder / name
        if idx.is_file():
            shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    found = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".pth"))
    if len(found) == 1:
        return found
    raise FileNotFoundError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_NAMES)}")


def read_diffusers_folder(folder: str | Path, dtype: torch.dtype | None = None,
                          config: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a diffusers-style folder. An explicit ``config`` replaces ``config.json``."""
    folder = Path(folder)
    if config is None:
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json; pass a config explicitly")
        config = json.loads(cfg_path.read_text())
    sd = FileStateDict()
    for f in find_weights(folder):
        sd.merge(read_state_dict(f, dtype=dtype))
    return config, sd


def read_checkpoint(path: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a file, or from a diffusers folder (its config is ignored here)."""
    path = Path(path)
    if path.is_dir():
        return read_diffusers_folder(path, dtype=dtype, config={})[1]
    return read_state_dict(path, dtype=dtype)


def strip_config(config: dict) -> dict:
    """Drop diffusers bookkeeping entries (``_class_name``, ``_diffusers_version``, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def embedded_config(name: str) -> dict:
    """A config shipped with the pack (``loaders/configs/<name>.json``), e.g. ``sd15_unet``, ``wav2vec2_base``."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise KeyError(f"no embedded config {name!r} (known: {known})")
    return json.loads(path.read_text())


def config_dict(config, embedded: str, file_name: str = "config.json", subfolder: str = "") -> tuple[dict, str]:
    """``(dict, where it came from)`` for a model-config argument: ``None`` -> the embedded config ``embedded``; a
    dict as given; a JSON file; a folder holding ``file_name`` directly or under ``subfolder/``. A file that is not
    there raises ``FileNotFoundError`` naming it."""
    if config is None:
        return embedded_config(embedded), f"the embedded {embedded} config"
    if isinstance(config, dict):
        return config, "the given config dict"
    path = Path(config)
    if path.is_dir():
        candidates = [path / file_name] + ([path / subfolder / file_name] if subfolder else [])
        path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    return json.loads(path.read_text()), str(path)


def diff_keys(module: torch.nn.Module, sd: Mapping[str, torch.Tensor]):
    """``(missing, unexpected, mismatched)`` between a module's state dict and ``sd``."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted((k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
                        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape))
    return missing, unexpected, mismatched


def load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "state dict",
                what: str = "", ignore: Callable[[str], bool] | None = None) -> torch.nn.Module:
    """Load ``sd`` into ``module`` requiring an exact key and shape match (``ignore`` filters known extras).

    Works for modules built on the meta device: the tensors are assigned, not copied.
    """
    if ignore is not None:
        sd = {k: v for k, v in sd.items() if not ignore(k)}
    missing, unexpected, mismatched = diff_keys(module, sd)
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(source, missing, unexpected, mismatched, what=what or type(module).__name__)
    on_meta = any(t.is_meta for t in module.state_dict().values())
    module.load_state_dict(sd, strict=True, assign=on_meta)
    return module


@contextmanager
def on_meta_device() -> Iterator[None]:
    """Build modules without allocating weights (fill them later with :func:`load_strict`)."""
    with torch.device("meta"):
        yield


def build_and_load(factory: Callable[[], torch.nn.Module], sd: Mapping[str, torch.Tensor], source: str,
                   dtype: torch.dtype | None = None, policy: Optional[LoadPolicy] = None,
                   what: str = "") -> torch.nn.Module:
    """Build ``factory()`` on the meta device, load ``sd`` and return it (CPU, in ``dtype`` if given).

    Without ``policy`` the load is strict (exact keys and shapes). With one, see :func:`load_with_policy`.
    """
    if policy is not None:
        return load_with_policy(factory, sd, policy, source, dtype=dtype, what=what)
    with on_meta_device():
        module = factory()
    sd = _cast(dict(sd), dtype)
    load_strict(module, sd, source=source, what=what)
    _materialise_leftovers(module, factory, dtype)
    return module


def load_with_policy(factory: Callable[[], torch.nn.Module], sd: Mapping, policy: LoadPolicy, source: str,
                     dtype: torch.dtype | None = None, what: str = "",
                     report: Optional[LoadReport] = None) -> torch.nn.Module:
    """Build ``factory()`` on the meta device and fill it from a released file's state dict under ``policy``.

    Known layouts are converted and known extras dropped (:func:`~.policy.apply_policy`, one log line per rule);
    model keys matching ``policy.optional`` may be absent (they keep the module's initial values); any other missing
    key, and any shape mismatch, raises :class:`CheckpointKeyError` naming ``source``, the keys and the probable cause;
    extra keys no rule covers are ignored with a warning (``policy.unexpected == "error"`` makes them fatal). The
    tensors keep the file's dtype unless ``dtype`` is given. The :class:`~.policy.LoadReport` is attached to the module
    as ``load_report``.
    """
    sd, report = apply_policy(sd, policy, source, report)
    with on_meta_device():
        module = factory()
    what = what or type(module).__name__
    missing, unexpected, mismatched = diff_keys(module, sd)
    optional = [k for k in missing if any(re.search(p, k) for p in policy.optional)]
    missing = [k for k in missing if k not in optional]
    if missing or mismatched or (unexpected and policy.unexpected == "error"):
        hint = ""
        if missing and len(missing) + len(optional) == len(module.state_dict()):
            hint = ("Probable cause: a wrong file or version? None of the model's keys is in the file (first file "
                    f"keys: {', '.join(list(sd)[:4])}).")
        raise CheckpointKeyError(source, missing, unexpected, mismatched, what=what, hint=hint)
    for k in unexpected:
        del sd[k]
    report.unexpected, report.filled = report.unexpected + unexpected, report.filled + optional
    sd = _cast(sd, dtype)
    module.load_state_dict(sd, strict=False, assign=True)
    _materialise_leftovers(module, factory, dtype)
    log_report(report)
    module.load_report = report
    return module


def load_file_with_policy(path: str | Path, factory: Callable[[], torch.nn.Module], policy: LoadPolicy,
                          dtype: torch.dtype | None = None, what: str = "") -> torch.nn.Module:
    """:func:`load_with_policy` on the state dict of the file ``path`` (:func:`read_state_dict`), in eval mode."""
    module = load_with_policy(factory, read_state_dict(path, dtype=dtype), policy, str(path), dtype=dtype, what=what)
    return module.eval()


def _materialise_leftovers(module: torch.nn.Module, factory: Callable[[], torch.nn.Module],
                           dtype: torch.dtype | None) -> None:
    """Tensors the state dict did not fill (non-persistent buffers, optional keys) are still on meta: take them from
    a module built on the CPU."""
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if not leftover:
        return
    cpu = factory()
    cpu_tensors = dict(cpu.named_parameters())
    cpu_tensors.update(dict(cpu.named_buffers()))
    for name in leftover:
        owner, attr = _owner(module, name)
        t = cpu_tensors[name]
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if attr in owner._parameters:
            owner._parameters[attr] = torch.nn.Parameter(t.detach(), requires_grad=cpu_tensors[name].requires_grad)
        else:
            owner._buffers[attr] = t


def _owner(module: torch.nn.Module, dotted: str):
    parts = dotted.split(".")
    for p in parts[:-1]:
        module = getattr(module, p)
    return module, parts[-1]
