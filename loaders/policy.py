"""One loading policy for every released checkpoint file: convert known layouts, drop known extras, warn on the rest.

The released files were written by many library versions and training scripts, so a strict "keys of the class" load
rejects real files (legacy VAE attention names, a missing training-only ``masked_spec_embed``, ``d2v_model.``
prefixes, CTC heads, LDM schedule buffers ...). Each loader declares a :class:`LoadPolicy` for its file kind:

1. ``unwrap``: top-level containers to descend into (``state_dict``, ``model`` ...); sibling entries such as an
   optimizer state are dropped and reported;
2. ``strip_prefixes``: prefixes removed where present (``module.``, ``d2v_model.``, ``wav2vec2.``) and ``prefix_map``
   pairs (``scope_map`` of an emotion2vec ``config.yaml``: file prefix -> model prefix);
3. ``conversions``: named key/tensor rewrites (legacy attention names, weight-norm spellings);
4. ``drops``: known extras, removed with one log line per rule that names the rule and how many keys it took;
5. at load time, against the module: model keys matching ``optional`` may be absent (they keep the module's own
   initial value, e.g. BatchNorm counters); any other missing key raises :class:`~.checkpoint.CheckpointKeyError`
   naming the file, the keys and the probable cause; keys no rule covers are ignored with a ``logging`` warning naming
   them (the original loaders warn, they do not fail); shape mismatches raise.

The result is a :class:`LoadReport` (what was converted, dropped, ignored, filled; the file's dtypes) attached to the
loaded module as ``module.load_report`` so that nodes can show it. The dtype is the file's own: nothing is cast
unless the caller passes ``dtype``.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Drop:
    """Keys matching ``pattern`` (a regex, ``re.match`` from the key start) are dropped, for ``reason``."""

    pattern: str
    reason: str

    def matches(self, key: str) -> bool:
        return re.match(self.pattern, key) is not None


@dataclass(frozen=True)
class Conversion:
    """A named rewrite ``state dict -> (state dict, number of keys changed)``."""

    name: str
    apply: Callable[[StateDict], tuple[StateDict, int]]


def prefix_drop(prefix: str, reason: str) -> Drop:
    return Drop(re.escape(prefix), reason)


@dataclass(frozen=True)
class LoadPolicy:
    """How the files of one kind are read into their module (see the module docstring for the order of steps)."""

    name: str
    unwrap: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ()
    prefix_map: tuple[tuple[str, str], ...] = ()
    conversions: tuple[Conversion, ...] = ()
    drops: tuple[Drop, ...] = ()
    optional: tuple[str, ...] = ()          # regexes (re.search) of model keys that the file may lack
    unexpected: str = "warn"                # "warn": ignore uncovered extra keys with a warning; "error": raise

    def with_(self, **changes) -> "LoadPolicy":
        """A copy with fields extended (tuples are appended to) or replaced (other values)."""
        values = {}
        for k, v in changes.items():
            cur = getattr(self, k)
            values[k] = cur + tuple(v) if isinstance(cur, tuple) and k != "name" else v
        return LoadPolicy(**{**self.__dict__, **values})


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------
def dtype_counts(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """``{dtype name: number of tensors}`` of a state dict as read (the file's own dtypes)."""
    return dict(Counter(str(v.dtype).replace("torch.", "") for v in sd.values()))


@dataclass
class LoadReport:
    """What one load did with one file. ``dtypes`` are the file's (tensor counts per dtype)."""

    source: str
    policy: str = ""
    dtypes: dict[str, int] = field(default_factory=dict)
    converted: list[str] = field(default_factory=list)             # "<conversion>: <n> keys"
    dropped: dict[str, list[str]] = field(default_factory=dict)    # reason -> dropped keys
    unexpected: list[str] = field(default_factory=list)            # extra keys no rule covers (ignored, warned)
    filled: list[str] = field(default_factory=list)                # optional model keys the file lacks
    parts: dict[str, "LoadReport"] = field(default_factory=dict)   # per component of a multi-model file

    @property
    def file_dtype(self) -> str:
        """The dominant floating dtype of the file ("float16", "float32", ...), or "" for a file without floats."""
        floats = {k: n for k, n in self.dtypes.items() if k.startswith(("float", "bfloat"))}
        return max(floats, key=floats.get) if floats else ""

    def drop(self, reason: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.dropped.setdefault(reason, []).extend(keys)

    def lines(self) -> list[str]:
        out = [f"{self.source}: {self.policy or 'checkpoint'}, file dtype {self.file_dtype or '-'}"]
        out += [f"converted {c}" for c in self.converted]
        for reason, keys in self.dropped.items():
            out.append(f"dropped {len(keys)} keys ({reason}): {_prefix_summary(keys)}")
        if self.filled:
            out.append(f"not in the file, kept at their initial values ({len(self.filled)}): "
                       f"{_prefix_summary(self.filled)}")
        if self.unexpected:
            out.append(f"ignored {len(self.unexpected)} unexpected keys: {_show(self.unexpected)}")
        for name, part in self.parts.items():
            out += [f"[{name}] {line}" for line in part.lines()[1:]]
        return out

    def __str__(self) -> str:
        return "\n  ".join(self.lines())


def _show(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _prefix_summary(keys: Sequence[str], limit: int = 6) -> str:
    """``lm_head.* (2), masked_spec_embed`` - keys grouped by their first name component."""
    groups = Counter(k.split(".", 1)[0] + (".*" if "." in k else "") for k in keys)
    items = [f"{g} ({n})" if n > 1 else g for g, n in groups.most_common()]
    return ", ".join(items[:limit]) + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------------------------------
# applying a policy to a state dict
# ---------------------------------------------------------------------------------------------------------------------
def unwrap_checkpoint(obj, keys: Sequence[str], report: Optional[LoadReport] = None):
    """Descend into ``obj[key]`` for each of ``keys`` present (in order), dropping the siblings (reported)."""
    for key in keys:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            siblings = [k for k in obj if k != key]
            if report is not None and siblings:
                report.drop(f"training-checkpoint entries beside {key!r}", siblings)
            obj = obj[key]
    return obj


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> tuple[StateDict, int]:
    out, n = {}, 0
    for k, v in sd.items():
        if k.startswith(prefix):
            k, n = k[len(prefix):], n + 1
        out[k] = v
    return out, n


def map_prefixes(sd: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]]) -> tuple[StateDict, int]:
    """Rename file prefix -> model prefix for the first pair whose (non-empty) file prefix a key starts with."""
    out, n = {}, 0
    for k, v in sd.items():
        for src, dst in pairs:
            if src and k.startswith(src):
                k, n = dst + k[len(src):], n + 1
                break
        out[k] = v
    return out, n


def apply_policy(sd: Mapping, policy: LoadPolicy, source: str,
                 report: Optional[LoadReport] = None) -> tuple[StateDict, LoadReport]:
    """Steps 1-4 of the policy (no module needed). Returns the converted state dict and the report so far."""
    report = report or LoadReport(source=source, policy=policy.name)
    report.policy = report.policy or policy.name
    sd = unwrap_checkpoint(sd, policy.unwrap, report)
    file_dtypes = getattr(sd, "file_dtypes", None)  # read already cast: the file's own dtypes, kept by the reader
    sd = dict(sd)
    if not report.dtypes:
        report.dtypes = dict(file_dtypes) if file_dtypes else \
            dtype_counts({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})
    for prefix in policy.strip_prefixes:
        sd, n = strip_prefix(sd, prefix)
        if n:
            report.converted.append(f"stripped prefix {prefix!r}: {n} keys")
    if policy.prefix_map:
        sd, n = map_prefixes(sd, policy.prefix_map)
        if n:
            pairs = ", ".join(f"{a!r}->{b!r}" for a, b in policy.prefix_map)
            report.converted.append(f"prefix map ({pairs}): {n} keys")
    for conv in policy.conversions:
        sd, n = conv.apply(sd)
        if n:
            report.converted.append(f"{conv.name}: {n} keys")
    kept = {}
    for k, v in sd.items():
        rule = next((d for d in policy.drops if d.matches(k)), None)
        if rule is None:
            kept[k] = v
        else:
            report.drop(rule.reason, [k])
    return kept, report


def log_report(report: LoadReport, logger: logging.Logger = log) -> None:
    """One log line per conversion and per drop rule; a warning for ignored unexpected keys."""
    for part in [report, *report.parts.values()]:
        where = part.source
        for c in part.converted:
            logger.info("%s: converted %s", where, c)
        for reason, keys in part.dropped.items():
            logger.info("%s: dropped %d keys (%s): %s", where, len(keys), reason, _prefix_summary(keys))
        if part.filled:
            logger.info("%s: %d keys not in the file keep their initial values: %s", where, len(part.filled),
                        _prefix_summary(part.filled))
        if part.unexpected:
            logger.warning("%s: ignoring %d unexpected keys that no rule covers (newer or different file?): %s",
                           where, len(part.unexpected), _show(part.unexpected, 20))


# ---------------------------------------------------------------------------------------------------------------------
# shared conversions
# ---------------------------------------------------------------------------------------------------------------------
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_ATTENTION_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def rename_legacy_attention(sd: StateDict) -> tuple[StateDict, int]:
    """diffusers < 0.14 attention names ``query/key/value/proj_attn`` -> ``to_q/to_k/to_v/to_out.0``.

    The released sd-vae-ft-mse and SD1.5 VAE files store the mid-block attention this way (2-D Linear weights); a
    4-D ``[C, C, 1, 1]`` weight (an LDM 1x1 conv) is squeezed to ``[C, C]``.
    """
    out, n = {}, 0
    for k, v in sd.items():
        m = _LEGACY_ATTENTION_RE.match(k)
        if m:
            k = f"{m[1]}.{_LEGACY_ATTENTION[m[2]]}.{m[3]}"
            if v.ndim == 4 and v.shape[2:] == (1, 1):
                v = v[:, :, 0, 0]
            n += 1
        out[k] = v
    return out, n


LEGACY_ATTENTION = Conversion("legacy attention names (query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0)",
                              rename_legacy_attention)


def weight_norm_names(module_path: str, to: str = "weight_g") -> Conversion:
    """``<module_path>.parametrizations.weight.original0/1`` <-> ``<module_path>.weight_g/weight_v``.

    ``to="weight_g"``: the module stores the old names (files written by torch's parametrisation are renamed);
    ``to="parametrizations"``: the other way round.
    """
    new = {f"{module_path}.parametrizations.weight.original0": f"{module_path}.weight_g",
           f"{module_path}.parametrizations.weight.original1": f"{module_path}.weight_v"}
    table = new if to == "weight_g" else {b: a for a, b in new.items()}

    def apply(sd: StateDict) -> tuple[StateDict, int]:
        n = sum(k in table for k in sd)
        return {table.get(k, k): v for k, v in sd.items()}, n

    old_names, new_names = "parametrizations.weight.original0/1", "weight_g/weight_v"
    direction = f"{old_names} -> {new_names}" if to == "weight_g" else f"{new_names} -> {old_names}"
    return Conversion(f"weight-norm names ({direction})", apply)


# schedule buffers of LDM (DDPM) single files; "Most models on civitai don't have this key", so never required
LDM_SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                        "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights", "model_ema.decay",
                        "model_ema.num_updates")
SCHEDULE_DROP = Drop("(?:" + "|".join(re.escape(b) for b in LDM_SCHEDULE_BUFFERS) + ")$",
                     "DDPM schedule buffers / EMA counters (training state, not weights)")
EMA_DROP = prefix_drop("model_ema.", "EMA copy of the training run")
LOSS_DROP = prefix_drop("loss.", "training loss (discriminator / LPIPS)")
OPTIMIZER_DROPS = (prefix_drop("optimizer.", "optimizer state"), prefix_drop("lr_scheduler.", "optimizer state"))

# BatchNorm step counters: only used to derive a momentum in training
BN_COUNTERS = r"(^|\.)num_batches_tracked$"

# the generic policy for released diffusers-style folders that were saved from the classes as they are
RELEASED_FOLDER = LoadPolicy("released diffusers folder", unwrap=("state_dict",), optional=(BN_COUNTERS,))


__all__ = [
    "BN_COUNTERS", "Conversion", "Drop", "EMA_DROP", "LEGACY_ATTENTION", "LDM_SCHEDULE_BUFFERS", "LOSS_DROP",
    "LoadPolicy", "LoadReport", "OPTIMIZER_DROPS", "RELEASED_FOLDER", "SCHEDULE_DROP", "apply_policy",
    "dtype_counts", "log_report", "map_prefixes", "prefix_drop", "rename_legacy_attention", "strip_prefix",
    "unwrap_checkpoint", "weight_norm_names",
]
