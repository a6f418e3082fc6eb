"""wav2vec 2.0 audio encoder for MEMO (``facebook/wav2vec2-base-960h``), loaded from the released files.

Why a small module of our own instead of ``transformers.Wav2Vec2Model``:

* MEMO uses the encoder in a non-standard way (the CNN features are resampled to the video frame count *between*
  the feature encoder and the feature projection) and needs every transformer layer output. With transformers the
  original did this by subclassing and calling internals whose signatures changed in transformers 5 (the encoder no
  longer returns per-layer hidden states itself). Owning the ~150 lines keeps the pack independent of that churn.
* The released checkpoint stores the positional convolution's weight norm as ``weight_g``/``weight_v``; depending on
  the torch/transformers versions a ``Wav2Vec2Model`` expects ``parametrizations.weight.original0/1`` instead. Here the
  released names are the module's own parameter names (the weight is formed with ``torch._weight_norm`` each call,
  exactly what torch's weight-norm parametrisation computes), and the newer names are accepted by renaming them.
* The released files (``model.safetensors`` and ``pytorch_model.bin``) hold 212 tensors: no ``masked_spec_embed``
  (users' transformers logs show it "newly initialized"). It is SpecAugment's training-time mask embedding, so the
  encoder does not declare it; a file that has it (transformers re-saves, the parity weights) gets it dropped.
* No network, no ``from_pretrained``: the config comes from ``config.json`` next to the weights or from the pack's
  embedded copy (``loaders/configs/wav2vec2_base_960h.json``) for a single-file download.

Supported configurations: the wav2vec2 "base" family (``do_stable_layer_norm = false``; feature-encoder norm
``group`` or ``layer``; GELU activations), which covers every checkpoint MEMO uses. Key layout: the ``Wav2Vec2ForCTC``
checkpoint keys ``wav2vec2.*`` (``lm_head.*`` is the unused CTC head and is dropped explicitly) or a bare
``Wav2Vec2Model`` state dict without the prefix; :data:`POLICY` is the whole rule set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..loaders.checkpoint import (FileStateDict, embedded_config, find_weights, load_with_policy,
                                  read_state_dict)
from ..loaders.policy import OPTIMIZER_DROPS, Drop, LoadPolicy, apply_policy, prefix_drop, weight_norm_names
from . import features as feat

EMBEDDED_CONFIG = "wav2vec2_base_960h"
EMBEDDED_PREPROCESSOR = "wav2vec2_base_960h_preprocessor"
CTC_PREFIX = "wav2vec2."
IGNORED_PREFIXES = ("lm_head.",)

# facebook/wav2vec2-base-960h as released (Wav2Vec2ForCTC, 212 tensors) or re-saved by newer transformers / ComfyUI
POLICY = LoadPolicy(
    "wav2vec2 (Wav2Vec2ForCTC release)",
    strip_prefixes=(CTC_PREFIX,),
    conversions=(weight_norm_names("encoder.pos_conv_embed.conv", to="weight_g"),),
    drops=(prefix_drop("lm_head.", "CTC head, unused by MEMO"),
           Drop(r"masked_spec_embed$", "SpecAugment mask embedding, training only"), *OPTIMIZER_DROPS),
)


# ---------------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Wav2Vec2Config:
    """The architecture fields of a transformers ``Wav2Vec2Config`` that the encoder needs."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: Sequence[int] = (512,) * 7
    conv_kernel: Sequence[int] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: Sequence[int] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    hidden_act: str = "gelu"
    feat_extract_activation: str = "gelu"
    do_normalize: bool = True            # from preprocessor_config.json
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, config: dict, preprocessor: Optional[dict] = None) -> "Wav2Vec2Config":
        names = {f for f in cls.__dataclass_fields__ if f not in ("extra", "do_normalize")}
        kwargs = {k: config[k] for k in names if k in config}
        for k in ("conv_dim", "conv_kernel", "conv_stride"):
            if k in kwargs:
                kwargs[k] = tuple(int(v) for v in kwargs[k])
        cfg = cls(**kwargs, extra=dict(config))
        if preprocessor is not None:
            cfg.do_normalize = bool(preprocessor.get("do_normalize", True))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
            raise ValueError("wav2vec2 config: conv_dim, conv_kernel and conv_stride must have the same length")
        if self.do_stable_layer_norm:
            raise NotImplementedError("wav2vec2 checkpoints with do_stable_layer_norm=true (the 'large' layout) are "
                                      "not supported here; MEMO uses facebook/wav2vec2-base-960h")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError("wav2vec2 config: feat_extract_norm must be 'group' or 'layer', "
                             f"got {self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) != "gelu":
                raise NotImplementedError(f"wav2vec2 config: {name}={getattr(self, name)!r} (only 'gelu' is supported)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("wav2vec2 config: hidden_size must be divisible by num_attention_heads")

    @property
    def receptive_field(self) -> int:
        """Samples the convolutional feature encoder needs for one output frame (400 for the released layout)."""
        field_, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride):
            field_ += (k - 1) * jump
            jump *= s
        return field_


# ---------------------------------------------------------------------------------------------------------------------
# modules (names follow the released checkpoint)
# ---------------------------------------------------------------------------------------------------------------------
class ConvFeatureLayer(nn.Module):
    """Conv1d -> (GroupNorm with one group per channel | channel LayerNorm | nothing) -> GELU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: Optional[str]):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out, elementwise_affine=True)

    def forward(self, x: torch.Tensor, group_stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``(B, C_in, S) -> (B, C_out, S')``. ``group_stats`` = ``(mean, rstd)`` ``(B, C_out)`` replaces the GroupNorm's
        own statistics over ``S'`` (used when ``x`` is one chunk of a longer signal)."""
        x = self.conv(x)
        if self.norm_kind == "group" and group_stats is not None:
            mean, rstd = group_stats  # float64; y = a * x + b as torch's GroupNorm kernel forms it
            a = rstd * self.layer_norm.weight.double()
            b = self.layer_norm.bias.double() - mean * a
            x = x.mul_(a.to(x.dtype)[..., None]).add_(b.to(x.dtype)[..., None])
        elif self.norm_kind == "group":
            x = self.layer_norm(x)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        layers = []
        c_in = 1
        for i, (c, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            norm = "layer" if cfg.feat_extract_norm == "layer" else ("group" if i == 0 else None)
            layers.append(ConvFeatureLayer(c_in, c, k, s, cfg.conv_bias, norm))
            c_in = c
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """``(B, S) -> (B, C, N)`` (about 50 frames per second at 16 kHz)."""
        x = input_values[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x

    # --- chunked evaluation: the same frames with memory that does not grow with the signal -------------------------
    @property
    def hop(self) -> int:
        """Input samples between two output frames (the product of the strides, 320 for the released layout)."""
        hop = 1
        for layer in self.conv_layers:
            hop *= layer.conv.stride[0]
        return hop

    @property
    def receptive_field(self) -> int:
        """Input samples one output frame sees (400 for the released layout)."""
        field_, jump = 1, 1
        for layer in self.conv_layers:
            field_ += (layer.conv.kernel_size[0] - 1) * jump
            jump *= layer.conv.stride[0]
        return field_

    def num_frames(self, samples: int) -> int:
        """Output frames of the whole-signal run on ``samples`` input samples (no padding anywhere)."""
        n = samples
        for layer in self.conv_layers:
            n = (n - layer.conv.kernel_size[0]) // layer.conv.stride[0] + 1
        return max(n, 0)

    def first_layer_stats(self, input_values: torch.Tensor, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, rstd)`` ``(B, C)`` (float64) of the first convolution's output over the WHOLE time axis, as the
        first layer's GroupNorm (one group per channel) computes them (biased variance), in one streaming pass.

        The convolution is linear in its input patches ``p_t`` (``kernel`` samples every ``stride``): with the patch
        mean ``m`` and covariance ``Σ`` over all ``t``, channel ``c`` (weights ``w_c``, bias ``b_c``) has mean
        ``w_c·m + b_c`` and variance ``w_cᵀ Σ w_c``. So the pass only accumulates ``Σ p_t`` and ``Σ p_t p_tᵀ``
        (float64, ``kernel × kernel``) chunk by chunk; the 512-channel convolution itself runs once, in :meth:`chunked`.
        """
        conv = self.conv_layers[0].conv
        k, s = conv.kernel_size[0], conv.stride[0]
        total = (input_values.shape[-1] - k) // s + 1
        step = max(1, chunk_frames * self.hop // s)  # first-layer frames per chunk
        s1 = s2 = None
        for a in range(0, total, step):
            b = min(total, a + step)
            patches = input_values[:, a * s:(b - 1) * s + k].double().unfold(-1, k, s)  # (B, b - a, k)
            c1, c2 = patches.sum(dim=1), patches.transpose(1, 2) @ patches             # (B, k), (B, k, k)
            s1, s2 = (c1, c2) if s1 is None else (s1 + c1, s2 + c2)
        m = s1 / total
        cov = s2 / total - m[:, :, None] * m[:, None, :]
        w = conv.weight.detach().double().reshape(conv.out_channels, k).to(m.device)           # (C, k)
        mean = m @ w.T                                                                        # (B, C)
        if conv.bias is not None:
            mean = mean + conv.bias.detach().double().to(m.device)
        var = torch.einsum("ck,bkl,cl->bc", w, cov, w).clamp_min(0)
        return mean, torch.rsqrt(var + self.conv_layers[0].layer_norm.eps)

    def chunked(self, input_values: torch.Tensor, chunk_frames: int,
                device: Optional[torch.device] = None) -> torch.Tensor:
        """:meth:`forward` evaluated ``chunk_frames`` output frames at a time: ``(B, S) -> (B, C, N)``, the same frames.

        Chunk ``[a, b)`` reads samples ``[a * hop, (b - 1) * hop + receptive_field)`` (overlapping its neighbours by
        ``receptive_field - hop``); with no padding in any convolution its outputs are exactly frames ``a..b-1`` of
        the whole run. A first-layer GroupNorm normalises over the whole time axis, so its statistics come from a
        first streaming pass (:meth:`first_layer_stats`). ``input_values`` may stay on the host: each chunk is moved
        to ``device`` (default: the weights' device) on its own, and only the ``(B, C, N)`` result grows with ``S``.
        """
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
        if device is None:
            device = self.conv_layers[0].conv.weight.device
        dtype = self.conv_layers[0].conv.weight.dtype
        total = self.num_frames(input_values.shape[-1])
        if total <= chunk_frames:
            return self(input_values.to(device, dtype))
        hop, field_ = self.hop, self.receptive_field
        stats = None
        if self.conv_layers[0].norm_kind == "group":
            stats = tuple(t.to(device) for t in self.first_layer_stats(input_values.to(dtype), chunk_frames))
        out = None
        for a in range(0, total, chunk_frames):
            b = min(total, a + chunk_frames)
            x = input_values[:, None, a * hop:(b - 1) * hop + field_].to(device, dtype)
            for i, layer in enumerate(self.conv_layers):
                x = layer(x, group_stats=stats if i == 0 else None)
            if out is None:
                out = x.new_empty(x.shape[0], x.shape[1], total)
            out[..., a:b] = x
        return out


class FeatureProjection(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C) -> (B, T, hidden)``."""
        return self.projection(self.layer_norm(x))


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is ``g * v / ||v||`` with the norm over all axes but the kernel axis (dim 2).

    Parameters keep the released names ``weight_g (1, 1, K)``, ``weight_v (C, C/groups, K)`` and ``bias``.
    """

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.groups = groups
        self.padding = kernel // 2
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=0.02)

    def weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.conv = WeightNormConv1d(cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups)
        self.remove = 1 if cfg.num_conv_pos_embeddings % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, H) -> (B, T, H)``: same-length grouped convolution (even kernels drop the last output), GELU."""
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, :-self.remove]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bidirectional multi-head attention without mask: ``(B, T, H) -> (B, T, H)``."""
        b, t, d = x.shape

        def split(y):
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, inner)
        self.output_dense = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer layer: ``x = LN(x + attn(x)); x = LN_final(x + ff(x))``."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.intermediate_size)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, T, H)`` -> the output of every layer, a list of ``L`` tensors ``(B, T, H)``."""
        x = self.layer_norm(x + self.pos_conv_embed(x))
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class Wav2Vec2Encoder(nn.Module):
    """The ``Wav2Vec2Model`` part of a wav2vec2 checkpoint, split where MEMO needs it (eval behaviour only)."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.config = cfg
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = TransformerEncoder(cfg)
        # No ``masked_spec_embed``: SpecAugment's training-only embedding, absent from the released files.

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def cnn_features(self, input_values: torch.Tensor, chunk_frames: Optional[int] = None,
                     device: Optional[torch.device] = None) -> torch.Tensor:
        """Convolutional features ``(B, S) -> (B, N, C)``; with ``chunk_frames`` evaluated that many frames at a time
        (the same values, memory flat in ``S``; see :meth:`FeatureEncoder.chunked`)."""
        if chunk_frames is None:
            return self.feature_extractor(input_values).transpose(1, 2)
        return self.feature_extractor.chunked(input_values, chunk_frames, device=device).transpose(1, 2)

    def layer_outputs(self, cnn_features: torch.Tensor) -> torch.Tensor:
        """Feature projection + transformer: ``(B, T, C) -> (B, T, L, hidden)`` (all L layer outputs)."""
        outs = self.encoder(self.feature_projection(cnn_features))
        return torch.stack(outs, dim=2)

    def forward(self, input_values: torch.Tensor, num_frames: Optional[int] = None) -> torch.Tensor:
        """``(B, S) -> (B, T, L, hidden)``; with ``num_frames`` the CNN features are first resampled to that count."""
        x = self.cnn_features(input_values)
        if num_frames is not None:
            x = feat.resample_frames(x, num_frames)
        return self.layer_outputs(x)


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def wav2vec2_model_keys(sd: dict) -> dict:
    """Map a checkpoint state dict to the encoder's own key names (:data:`POLICY` steps: strip ``wav2vec2.``, rename
    the weight-norm parametrisation keys to ``weight_g``/``weight_v``, drop ``lm_head.*`` and ``masked_spec_embed``)."""
    return apply_policy(sd, POLICY, "wav2vec2 state dict")[0]


def load_wav2vec2(path: str | Path, config: Optional[dict] = None, preprocessor: Optional[dict] = None,
                  dtype: torch.dtype = torch.float32) -> Wav2Vec2Encoder:
    """Load a wav2vec2 checkpoint into :class:`Wav2Vec2Encoder` under :data:`POLICY` (CPU, eval mode).

    ``path``: a folder as released (``config.json``, ``preprocessor_config.json``, ``model.safetensors`` or
    ``pytorch_model.bin``) or a single weights file (ComfyUI's ``audio_encoders/wav2vec2-base-960h.safetensors``); a
    missing config falls back to the embedded ``wav2vec2_base_960h`` one. A missing or mis-shaped key raises
    :class:`~..loaders.checkpoint.CheckpointKeyError` naming the file and the keys; extra keys no rule covers are
    logged and ignored. The :class:`~..loaders.policy.LoadReport` is ``model.load_report``.
    """
    path = Path(path)
    if path.is_dir():
        files = find_weights(path)
        folder = path
    elif path.is_file():
        files = [path]
        folder = path.parent
    else:
        raise FileNotFoundError(f"wav2vec2 checkpoint not found: {path}")
    if config is None:
        config = _read_json(folder / "config.json") if path.is_dir() else None
        if config is None:
            config = embedded_config(EMBEDDED_CONFIG)
    if preprocessor is None:
        preprocessor = (_read_json(folder / "preprocessor_config.json") if path.is_dir() else None) \
            or embedded_config(EMBEDDED_PREPROCESSOR)
    cfg = Wav2Vec2Config.from_dict(config, preprocessor)
    sd = FileStateDict()
    for f in files:
        sd.merge(read_state_dict(f, dtype=dtype))  # cast as read; the report keeps the file's dtypes
    source = str(files[0] if len(files) == 1 else folder)
    model = load_with_policy(lambda: Wav2Vec2Encoder(cfg), sd, POLICY, source=source, dtype=dtype,
                             what=f"a wav2vec2 encoder with this config ({cfg.num_hidden_layers} layers, "
                                  f"hidden {cfg.hidden_size})")
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------------
# MEMO's feature path
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Wav2VecFeatures:
    """Intermediate and final results of the audio feature path (one utterance).

    ``input_values (S',)`` normalised + padded waveform; ``cnn_features (N, C)``; ``cnn_features_resampled (T, C)``;
    ``hidden_states (T, L, H)``; ``audio_emb (T, 5, L, H)``; ``num_frames`` = T (a multiple of the clip length);
    ``frames_before_padding`` = ``ceil(samples / 16000 * fps)``.
    """

    input_values: torch.Tensor
    cnn_features: torch.Tensor
    cnn_features_resampled: torch.Tensor
    hidden_states: torch.Tensor
    audio_emb: torch.Tensor
    num_frames: int
    frames_before_padding: int
    notes: list = field(default_factory=list)


# CNN feature frames per chunk (50 per second at 16 kHz: 10 s, about 130 MB of first-layer activations in fp32)
CNN_CHUNK_FRAMES = 500


@torch.no_grad()
def wav2vec_frame_features(model: Wav2Vec2Encoder, waveform: torch.Tensor, fps, clip_length: int,
                           device: Optional[torch.device] = None,
                           chunk_frames: Optional[int] = CNN_CHUNK_FRAMES) -> Wav2VecFeatures:
    """MEMO's wav2vec path on a 16 kHz mono waveform ``(samples,)``.

    normalise (if the preprocessor says so) -> pad to whole clips -> CNN features -> resample to T frames ->
    projection + transformer -> all layer outputs ``(T, L, H)`` -> +-2 context windows ``(T, 5, L, H)`` (on the CPU,
    float32).

    The convolutional encoder runs ``chunk_frames`` feature frames at a time (``None``: the whole signal at once) with
    the waveform kept on the host, so its memory does not grow with the audio; the frames equal the whole-signal
    run's. The transformer attends over all T frames at once (as the original; chunking it would change the
    features), so its activations, like the returned features, stay linear in T.
    """
    notes: list[str] = []
    x = waveform.detach().to("cpu", torch.float32).reshape(-1)
    if model.config.do_normalize:
        x = feat.normalize_utterance(x)
    x, total, frames = feat.pad_to_whole_clips(x, fps, clip_length)
    if total == 0:
        raise ValueError("the audio has no samples: nothing to encode")
    need = model.config.receptive_field
    if x.shape[-1] < need:
        notes.append(f"audio shorter than the encoder's {need}-sample receptive field: zero-padded to {need} samples")
        x = F.pad(x, (0, need - x.shape[-1]))
    if device is None:
        device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if chunk_frames is None:
        cnn = model.cnn_features(x[None].to(device, dtype))
    else:
        cnn = model.cnn_features(x[None], chunk_frames=chunk_frames, device=device)
    cnn_t = feat.resample_frames(cnn, total)
    hidden = model.layer_outputs(cnn_t)[0].float().cpu()
    return Wav2VecFeatures(
        input_values=x,
        cnn_features=cnn[0].float().cpu(),
        cnn_features_resampled=cnn_t[0].float().cpu(),
        hidden_states=hidden,
        audio_emb=feat.context_windows(hidden),
        num_frames=total,
        frames_before_padding=frames,
        notes=notes,
    )


__all__ = [
    "CNN_CHUNK_FRAMES", "EMBEDDED_CONFIG", "Wav2Vec2Config", "Wav2Vec2Encoder", "Wav2VecFeatures", "load_wav2vec2",
    "wav2vec2_model_keys", "wav2vec_frame_features",
]
