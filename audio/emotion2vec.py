"""emotion2vec+ feature extractor (``emotion2vec/emotion2vec_plus_large``) in plain torch, without funasr.

MEMO classifies emotions from emotion2vec+ *frame features* (``Emotion2vec.extract_features(x)["x"]``, the output of
the last transformer block without the extra tokens), mean-pooled over time: 1024-d for the large model. The model is
a data2vec 2.0 audio encoder; this module rebuilds the parts used at inference with the funasr module names, so the
released ``model.pt`` loads strictly:

    modality_encoders.AUDIO.local_encoder.conv_layers.{i}.0.weight          conv (no bias)
    modality_encoders.AUDIO.local_encoder.conv_layers.{i}.2.1.{weight,bias} channel LayerNorm ("layer_norm" mode)
        (or .0.2.{weight,bias}: GroupNorm of the first layer in "default" mode)
    modality_encoders.AUDIO.project_features.{1,2}.*                         LayerNorm(512) -> Linear(512, D)
    modality_encoders.AUDIO.relative_positional_encoder.{1..depth}.0.*       grouped conv layers (+ .0.* pre-LN)
    modality_encoders.AUDIO.context_encoder.{blocks.{j}.*, norm.*}           "prenet" transformer blocks
    modality_encoders.AUDIO.extra_tokens (1, n_extra, D), .alibi_scale       learned extra tokens, ALiBi scales
    blocks.{j}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*      main transformer blocks
    norm.*                                                                    only when layer_norm_first

Checkpoint keys that inference does not use are dropped explicitly, with a log line: the pre-training decoder
(``modality_encoders.AUDIO.decoder.*``; the plus models lack it), the 9-way classification head ``proj.*`` (MEMO builds
the model with ``vocab_size=-1`` and uses its own classifier) and EMA/target copies (``_ema*``, ``ema.*``). The
released ``model.pt`` is a fairseq-style checkpoint whose keys carry ``d2v_model.``; that prefix and ``module.`` are
stripped, and the ``scope_map`` pairs of ``config.yaml`` (file prefix -> model prefix, funasr's mapping) are applied
when present. A missing key raises :class:`CheckpointKeyError`; other extra keys are logged and ignored
(:data:`POLICY`).

Architecture hyper-parameters are read from the model's ``config.yaml`` (``model_conf``), the same file funasr reads:
nothing about the large model is hard-coded here.

Forward (``extract_features``, eval, no masking), input ``(B, S)`` 16 kHz samples (MEMO standardises each segment with
a LayerNorm over the whole segment first):

1. conv feature encoder -> ``(B, 512, N)``, ~50 frames/s; LayerNorm + Linear -> ``(B, N, D)``;
2. ``x = x + relative_positional_encoder(x)`` (grouped convs, kernel ``max(3, conv_pos_width // conv_pos_depth)``,
   each followed by a non-affine LayerNorm and GELU);
3. ALiBi bias ``slope_h * -|i - j|`` (slopes ``2^(-8/H)`` geometric for a power-of-two H) times the learned, clamped
   ``alibi_scale``; prepend the extra tokens (zero bias for them);
4. context encoder (LayerNorm first unless ``layer_norm_first``, then the prenet blocks), then the main blocks;
   post-LN blocks: ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``; attention logits ``q.k * d^-0.5 + bias``;
5. drop the extra tokens -> ``(B, N, D)``.
"""
from __future__ import annotations

import ast
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..loaders.checkpoint import CheckpointKeyError, UnsafeCheckpoint, load_with_policy, read_state_dict
from ..loaders.policy import OPTIMIZER_DROPS, LoadPolicy, LoadReport, apply_policy, prefix_drop, unwrap_checkpoint
from ..loaders.store import CorruptModelFile, check_file_format

IGNORED_KEY_PREFIXES = ("modality_encoders.AUDIO.decoder.", "proj.", "_ema", "ema.")
UNWRAP_KEYS = ("state_dict", "model_state_dict", "model")   # the order funasr's loader unwraps nested checkpoints
STRIPPED_PREFIXES = ("module.", "d2v_model.")

# emotion2vec+ model.pt (funasr / fairseq training checkpoint) -> Emotion2VecModel
POLICY = LoadPolicy(
    "emotion2vec+ (funasr model.pt)",
    unwrap=UNWRAP_KEYS,
    strip_prefixes=STRIPPED_PREFIXES,
    drops=(prefix_drop("modality_encoders.AUDIO.decoder.", "pre-training decoder"),
           prefix_drop("proj.", "emotion classification head, MEMO uses its own classifier"),
           prefix_drop("_ema", "EMA teacher copy"), prefix_drop("ema.", "EMA teacher copy"), *OPTIMIZER_DROPS),
)


# ---------------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------------
def parse_conv_spec(spec) -> list[tuple[int, int, int]]:
    """``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + ..."`` -> list of ``(channels, kernel, stride)`` without ``eval``.

    Accepts list/tuple literals of int triples combined with ``+`` and ``* int``; anything else is rejected.
    """
    if isinstance(spec, (list, tuple)):
        layers = [tuple(int(v) for v in layer) for layer in spec]
    else:
        def value(node):
            if isinstance(node, ast.Constant) and isinstance(node.value, int):
                return node.value
            if isinstance(node, (ast.List, ast.Tuple)):
                items = [value(e) for e in node.elts]
                return items if isinstance(node, ast.List) else tuple(items)
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
                left, right = value(node.left), value(node.right)
                return left + right if isinstance(node.op, ast.Add) else left * right
            raise ValueError(f"unsupported element in feature_encoder_spec: {ast.dump(node)}")

        layers = [tuple(int(v) for v in layer) for layer in value(ast.parse(str(spec), mode="eval").body)]
    if not layers or any(len(layer) != 3 for layer in layers):
        raise ValueError(f"feature_encoder_spec must list (channels, kernel, stride) triples, got {spec!r}")
    return layers


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


@dataclass
class Emotion2VecConfig:
    """The inference-relevant fields of funasr's ``Emotion2vec`` ``model_conf`` (and ``modalities.audio``)."""

    embed_dim: int = 768
    depth: int = 8
    num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    norm_affine: bool = True
    layer_norm_first: bool = False
    # modalities.audio
    feature_encoder_spec: tuple = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    extractor_mode: str = "layer_norm"
    conv_pos_width: int = 95
    conv_pos_groups: int = 16
    conv_pos_depth: int = 5
    conv_pos_pre_ln: bool = False
    prenet_depth: int = 4
    num_extra_tokens: int = 10
    use_alibi_encoder: bool = True
    learned_alibi: bool = False
    alibi_scale: float = 1.0
    learned_alibi_scale_per_head: bool = True
    learned_alibi_scale_per_layer: bool = False
    num_alibi_heads: int = 12
    model_depth: int = 8

    @classmethod
    def from_model_conf(cls, conf: dict) -> "Emotion2VecConfig":
        """Build from a ``model_conf`` mapping (values may be strings, as PyYAML reads ``1e-05``)."""
        audio = dict((conf.get("modalities") or {}).get("audio") or {})
        top = {"embed_dim": int, "depth": int, "num_heads": int, "mlp_ratio": float, "norm_eps": float,
               "norm_affine": _as_bool, "layer_norm_first": _as_bool}
        sub = {"extractor_mode": str, "conv_pos_width": int, "conv_pos_groups": int, "conv_pos_depth": int,
               "conv_pos_pre_ln": _as_bool, "prenet_depth": int, "num_extra_tokens": int,
               "use_alibi_encoder": _as_bool, "learned_alibi": _as_bool, "alibi_scale": float,
               "learned_alibi_scale_per_head": _as_bool, "learned_alibi_scale_per_layer": _as_bool,
               "num_alibi_heads": int, "model_depth": int}
        kwargs = {k: f(conf[k]) for k, f in top.items() if conf.get(k) is not None}
        kwargs.update({k: f(audio[k]) for k, f in sub.items() if audio.get(k) is not None})
        if audio.get("feature_encoder_spec") is not None:
            kwargs["feature_encoder_spec"] = tuple(parse_conv_spec(audio["feature_encoder_spec"]))
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.extractor_mode not in ("layer_norm", "default"):
            raise ValueError(f"emotion2vec config: extractor_mode {self.extractor_mode!r} "
                             "(expected layer_norm or default)")
        if self.embed_dim % self.num_heads:
            raise ValueError("emotion2vec config: embed_dim must be divisible by num_heads")
        if self.use_alibi_encoder and self.learned_alibi:
            raise NotImplementedError("emotion2vec config: learned_alibi=true (a learned ALiBi table) is not supported")
        if self.use_alibi_encoder and self.num_alibi_heads > self.num_heads:
            raise ValueError("emotion2vec config: num_alibi_heads exceeds num_heads")

    @property
    def pos_kernel(self) -> int:
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @property
    def receptive_field(self) -> int:
        """Samples the conv feature encoder needs for one frame (400 for the released spec)."""
        field_, jump = 1, 1
        for _, k, s in self.feature_encoder_spec:
            field_ += (k - 1) * jump
            jump *= s
        return field_


def read_config_yaml(path: str | Path) -> dict:
    """The ``model_conf`` mapping of an emotion2vec ``config.yaml`` (PyYAML, which ComfyUI already requires)."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - PyYAML ships with ComfyUI
        raise ImportError("reading emotion2vec's config.yaml needs PyYAML (pip install pyyaml)") from e
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("model_conf"), dict):
        raise ValueError(f"{path} has no 'model_conf' section: not an emotion2vec config.yaml")
    model = data.get("model")
    if model is not None and str(model).lower() != "emotion2vec":
        raise ValueError(f"{path} describes model {model!r}, not Emotion2vec")
    return data["model_conf"]


# ---------------------------------------------------------------------------------------------------------------------
# modules (names follow funasr's Emotion2vec so that model.pt loads strictly)
# ---------------------------------------------------------------------------------------------------------------------
class _SwapLastAxes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class _DropLast(nn.Module):
    """Remove the last time step (even-kernel 'same' padding)."""

    def __init__(self, kernel: int):
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :-self.remove] if self.remove else x


def _conv_feature_layer(c_in: int, c_out: int, kernel: int, stride: int, norm: Optional[str]) -> nn.Sequential:
    """Index layout ``0 conv, 1 (dropout), 2 norm, 3 GELU`` (``0 conv, 1, 2 GELU`` without norm)."""
    conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=False)
    if norm == "layer":
        return nn.Sequential(conv, nn.Identity(),
                             nn.Sequential(_SwapLastAxes(), nn.LayerNorm(c_out), _SwapLastAxes()), nn.GELU())
    if norm == "group":
        return nn.Sequential(conv, nn.Identity(), nn.GroupNorm(c_out, c_out, affine=True), nn.GELU())
    return nn.Sequential(conv, nn.Identity(), nn.GELU())


class ConvFeatureEncoder(nn.Module):
    def __init__(self, cfg: Emotion2VecConfig):
        super().__init__()
        layers, c_in = [], 1
        for i, (c, k, s) in enumerate(cfg.feature_encoder_spec):
            norm = "layer" if cfg.extractor_mode == "layer_norm" else ("group" if i == 0 else None)
            layers.append(_conv_feature_layer(c_in, c, k, s, norm))
            c_in = c
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S) -> (B, C, N)``."""
        x = x[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


def _positional_encoder(cfg: Emotion2VecConfig) -> nn.Sequential:
    d, k = cfg.embed_dim, cfg.pos_kernel
    layers = [nn.Sequential(nn.Conv1d(d, d, k, padding=k // 2, groups=cfg.conv_pos_groups), _DropLast(k),
                            _SwapLastAxes(), nn.LayerNorm(d, elementwise_affine=False), _SwapLastAxes(), nn.GELU())
              for _ in range(cfg.conv_pos_depth)]
    encoder = nn.Sequential(_SwapLastAxes(), *layers, _SwapLastAxes())
    if cfg.conv_pos_pre_ln:
        encoder = nn.Sequential(nn.LayerNorm(d), encoder)
    return encoder


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, T, D)``, additive logit bias ``(B, H, T, T)`` or None -> ``(B, T, D)``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if bias is not None:
            bias = bias.to(q.dtype)
            if bias.shape[1] < self.heads:   # ALiBi on the first heads only
                bias = F.pad(bias, (0, 0, 0, 0, 0, self.heads - bias.shape[1]))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """data2vec 2.0 ``AltBlock`` at inference (no dropout / drop-path); post-LN unless ``layer_norm_first``."""

    def __init__(self, cfg: Emotion2VecConfig):
        super().__init__()
        d = cfg.embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.attn = Attention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.layer_norm_first:
            # data2vec 2.0's pre-LN branch adds the MLP output to itself instead of to the residual (kept as is).
            x = x + self.attn(self.norm1(x), bias)
            y = self.mlp(self.norm2(x))
            return y + y
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.mlp(x))


class ContextEncoder(nn.Module):
    def __init__(self, cfg: Emotion2VecConfig):
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.prenet_depth))
        self.norm = None if cfg.layer_norm_first else nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps,
                                                                    elementwise_affine=cfg.norm_affine)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor], scales: Optional[torch.Tensor]) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        for i, blk in enumerate(self.blocks):
            x = blk(x, _scaled_bias(bias, scales, i))
        return x


def _scaled_bias(bias: Optional[torch.Tensor], scales: Optional[torch.Tensor], i: int) -> Optional[torch.Tensor]:
    """The ALiBi bias of block ``i`` when scales are per layer (``scales (L, 1, H, 1, 1)``), else ``bias`` as is."""
    if bias is None or scales is None:
        return bias
    return bias * scales[i].to(bias.dtype)


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi slopes: geometric ``2^(-8/n) ** (i + 1)`` for a power-of-two ``n``; otherwise the nearest power of two's
    slopes followed by every other slope of twice that count."""
    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][:heads - closest]


def alibi_bias(heads: int, length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(heads, length, length)``: ``slope_h * -|i - j|``."""
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float32)
    pos = torch.arange(length)
    distance = -(pos[None, :] - pos[:, None]).abs()
    return (slopes[:, None, None] * distance[None]).to(device=device, dtype=dtype)


class AudioModalityEncoder(nn.Module):
    def __init__(self, cfg: Emotion2VecConfig):
        super().__init__()
        self.cfg = cfg
        c_last = cfg.feature_encoder_spec[-1][0]
        self.local_encoder = ConvFeatureEncoder(cfg)
        self.project_features = nn.Sequential(_SwapLastAxes(), nn.LayerNorm(c_last), nn.Linear(c_last, cfg.embed_dim))
        self.relative_positional_encoder = _positional_encoder(cfg)
        self.context_encoder = ContextEncoder(cfg)
        self.extra_tokens = (nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, cfg.embed_dim))
                             if cfg.num_extra_tokens > 0 else None)
        self.alibi_scale = None
        if cfg.use_alibi_encoder:
            layers = cfg.prenet_depth + cfg.model_depth if cfg.learned_alibi_scale_per_layer else 1
            heads = cfg.num_alibi_heads if cfg.learned_alibi_scale_per_head else 1
            self.alibi_scale = nn.Parameter(torch.full((layers, 1, heads, 1, 1), cfg.alibi_scale))

    def forward(self, source: torch.Tensor):
        """``(B, S)`` -> tokens ``(B, n_extra + N, D)``, the ALiBi bias for the main blocks (or None) and per-layer
        scales for the main blocks (or None)."""
        cfg = self.cfg
        x = self.project_features(self.local_encoder(source))
        x = x + self.relative_positional_encoder(x)
        b, t, _ = x.shape
        bias = scales = None
        if self.alibi_scale is not None:
            ab = alibi_bias(cfg.num_alibi_heads, t, device=x.device)[None].expand(b, -1, -1, -1)
            s = self.alibi_scale.clamp_min(0)
            if s.shape[0] == 1:
                ab = ab * s[0].to(ab.dtype)
            else:
                scales = s
            bias = ab
        if self.extra_tokens is not None:
            n = self.extra_tokens.shape[1]
            x = torch.cat([self.extra_tokens.expand(b, -1, -1).to(x.dtype), x], dim=1)
            if bias is not None:
                bias = F.pad(bias, (n, 0, n, 0))
        pre_scales = scales[:cfg.prenet_depth] if scales is not None else None
        x = self.context_encoder(x, bias, pre_scales)
        main_scales = scales[cfg.prenet_depth:] if scales is not None else None
        return x, bias, main_scales


class Emotion2VecModel(nn.Module):
    """funasr ``Emotion2vec(vocab_size=-1)`` at inference: ``extract_features`` only."""

    def __init__(self, cfg: Emotion2VecConfig):
        super().__init__()
        self.config = cfg
        self.modality_encoders = nn.ModuleDict({"AUDIO": AudioModalityEncoder(cfg)})
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine) \
            if cfg.layer_norm_first else None

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def extract_features(self, source: torch.Tensor) -> torch.Tensor:
        """Frame features ``(B, S) -> (B, N, D)`` (extra tokens removed), as ``extract_features(x)["x"]``."""
        x, bias, scales = self.modality_encoders["AUDIO"](source)
        for i, blk in enumerate(self.blocks):
            x = blk(x, _scaled_bias(bias, scales, i))
        if self.norm is not None:
            x = self.norm(x)
        return x[:, self.config.num_extra_tokens:]

    def utterance_features(self, source: torch.Tensor) -> torch.Tensor:
        """Mean-pooled frame features ``(B, S) -> (B, D)`` (what MEMO feeds its classifier)."""
        return self.extract_features(source).mean(dim=1)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.extract_features(source)


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------
def read_emotion2vec_checkpoint(path: str | Path, report: Optional[LoadReport] = None) -> dict[str, torch.Tensor]:
    """A flat state dict from ``model.pt`` (``torch.load(weights_only=True)``) or a converted ``.safetensors``.

    Nested checkpoints are unwrapped like funasr does (``state_dict`` -> ``model_state_dict`` -> ``model``; siblings
    such as an optimizer state are recorded in ``report``). Keys are returned as stored (prefixes are the policy's
    business). A file that needs arbitrary unpickling is refused with :class:`UnsafeCheckpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"emotion2vec checkpoint not found: {path}")
    if path.suffix.lower() in (".safetensors", ".sft"):
        sd = read_state_dict(path)
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            problem = check_file_format(path)
            if problem:
                raise CorruptModelFile(None, path, problem) from e
            raise UnsafeCheckpoint(
                f"{path} holds Python objects beyond tensors, which this pack refuses to unpickle "
                f"(torch.load weights_only=True): {e}. Convert it once to safetensors (load it with funasr in a "
                f"trusted environment and save the model's state_dict) and point the loader at that file.") from e
        except (RuntimeError, OSError, EOFError) as e:
            raise CorruptModelFile(None, path, check_file_format(path) or f"{type(e).__name__}: {e}") from e
        sd = unwrap_checkpoint(sd, UNWRAP_KEYS, report)
    if not isinstance(sd, dict):
        raise CheckpointKeyError(str(path), [], [], [], what="a flat tensor state dict")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointKeyError(str(path), [], bad, [], what="a flat tensor state dict")
    return sd


def read_scope_map(path: str | Path) -> tuple[tuple[str, str], ...]:
    """The ``scope_map`` of an emotion2vec ``config.yaml`` as (file prefix, model prefix) pairs ("none" -> "").

    funasr reads it as a flat list ``[src, dst, src, dst, ...]`` (or a comma-separated string) at the top level.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    raw = data.get("scope_map") if isinstance(data, dict) else None
    if raw is None:
        return ()
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    items = [("" if str(x).strip().lower() == "none" else str(x).strip()) for x in items]
    return tuple(zip(items[0::2], items[1::2]))


def emotion2vec_model_keys(sd: dict, scope_map: tuple[tuple[str, str], ...] = ()) -> dict:
    """The state dict under :data:`POLICY`: prefixes stripped / mapped, decoder, head and EMA copies dropped."""
    return apply_policy(sd, POLICY.with_(prefix_map=scope_map), "emotion2vec state dict")[0]


def load_emotion2vec(path: str | Path, config: Optional[dict | str | Path] = None,
                     dtype: torch.dtype = torch.float32) -> Emotion2VecModel:
    """Load emotion2vec+ under :data:`POLICY` (CPU, eval mode); the report is ``model.load_report``.

    ``path``: the model folder (``model.pt`` + ``config.yaml``) or the weights file; ``config``: a ``model_conf``
    dict or the path of ``config.yaml`` (default: ``config.yaml`` next to the weights; its ``scope_map`` is honoured).
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        weights = next((path / n for n in ("model.pt", "model.safetensors", "model.pb") if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"no emotion2vec weights (model.pt) in {path}")
    else:
        folder, weights = path.parent, path
    if config is None:
        config = folder / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"emotion2vec needs its config.yaml (not found next to {weights})")
    conf = config if isinstance(config, dict) else read_config_yaml(config)
    scope_map = () if isinstance(config, dict) else read_scope_map(config)
    cfg = Emotion2VecConfig.from_model_conf(conf)
    report = LoadReport(source=str(weights))
    sd = read_emotion2vec_checkpoint(weights, report)
    model = load_with_policy(lambda: Emotion2VecModel(cfg), sd, POLICY.with_(prefix_map=scope_map),
                             source=str(weights), dtype=dtype, report=report,
                             what=f"emotion2vec ({cfg.prenet_depth}+{cfg.depth} blocks of {cfg.embed_dim}, "
                                  "built from config.yaml)")
    return model.eval().requires_grad_(False)


__all__ = [
    "Emotion2VecConfig", "Emotion2VecModel", "alibi_bias", "alibi_slopes", "emotion2vec_model_keys",
    "load_emotion2vec", "parse_conv_spec", "read_config_yaml", "read_emotion2vec_checkpoint", "read_scope_map",
]
