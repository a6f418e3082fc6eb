"""HunyuanPortrait appearance extractor: DINOv2 ViT-L/14 with 4 registers, LayerScale and six ID-aware IMAdapters.

Parameter names reproduce the released ``dino.pth`` (DINOv2 ``vit_large`` built with ``block_chunks=0``): ``cls_token``,
``pos_embed`` (37x37 grid + cls), ``register_tokens``, ``mask_token`` (unused), ``patch_embed.proj``, flat
``blocks.{i}`` with ``norm1/attn.qkv/attn.proj/ls1.gamma/norm2/mlp.fc1/mlp.fc2/ls2.gamma`` and, on the adapter blocks,
``blocks.{i}.adapter.*``; final ``norm``.

The pipeline encodes a 224x224 ImageNet-normalised crop with an ArcFace embedding into all 261 tokens
(cls, 4 registers, 16x16 patches), see :meth:`DinoV2IdEncoder.forward`.

IMAdapter at inference: the Inception conv branches only form the queries of a cross-attention whose key/value is the
single ID token, so the softmax is exactly 1 and every query receives the same vector. The branches therefore cannot
change the output; they exist for loading and are skipped unless ``compute_branches=True``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import attention


@dataclass(frozen=True)
class DinoConfig:
    """``vit_large(patch_size=14, num_register_tokens=4, img_size=526, init_values=1.0, block_chunks=0,
    add_adapter_layer=[3,7,11,15,19,23], visual_adapter_dim=384)``."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 14
    img_size: int = 526                      # 526 // 14 = 37 -> 37x37 positional grid
    in_chans: int = 3
    num_register_tokens: int = 4
    layer_norm_eps: float = 1e-6
    interpolate_offset: float = 0.1          # scale factor (n + 0.1) / 37 of the positional resize
    adapter_blocks: tuple[int, ...] = (3, 7, 11, 15, 19, 23)
    adapter_dim: int = 384
    adapter_attn_dim: int = 256
    adapter_heads: int = 8
    id_dim: int = 512
    adapter_scale: float = 0.2               # adapter residual weight inside ls2
    bn_eps: float = 1e-3

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/14 * W/14, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` projection (head dim 64, scale 1/8)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = attention(q, k, v)                               # (B, heads, N, 64)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma``."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ConvBNReLU(nn.Module):
    """Conv2d (with bias) -> BatchNorm2d (running statistics) -> ReLU; keys ``conv.*``, ``bn.*``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=True)
        self.bn = nn.BatchNorm2d(out_ch, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class IdCrossAttention(nn.Module):
    """Patch features (queries, 384 -> 256) attend to the ArcFace token (key/value, 512 -> 256), 8 heads, back to 384.

    ``multihead_attn`` is an ``nn.MultiheadAttention`` (packed ``in_proj``, sequence-first)."""

    def __init__(self, image_dim: int, id_dim: int, embed_dim: int, num_heads: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=0.1)
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.id_proj = nn.Linear(id_dim, embed_dim)
        self.back_proj = nn.Linear(embed_dim, image_dim)

    def forward(self, image_features: torch.Tensor, id_tokens: torch.Tensor) -> torch.Tensor:
        """(B, P, 384), (B, T, 512) -> (B, P, 384), the full computation."""
        query = self.image_proj(image_features).transpose(0, 1)   # (P, B, 256)
        kv = self.id_proj(id_tokens).transpose(0, 1)              # (T, B, 256)
        out, _ = self.multihead_attn(query, kv, kv, need_weights=False)
        return self.back_proj(out).transpose(0, 1)

    def single_token(self, id_tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1, 512) -> (B, 1, 384): the output for every query when the key/value is one token (softmax = 1)."""
        if id_tokens.shape[1] != 1:
            raise ValueError(f"the query-independent path needs exactly one ID token, got {id_tokens.shape[1]}")
        mha = self.multihead_attn
        e = mha.embed_dim
        v = F.linear(self.id_proj(id_tokens), mha.in_proj_weight[2 * e:], mha.in_proj_bias[2 * e:])
        return self.back_proj(mha.out_proj(v))


class IMAdapter(nn.Module):
    """ID-aware adapter on the ``norm2`` output of a block: 1024 -> 384 (ReLU), ID cross-attention on the patch tokens,
    cls/register tokens kept, skip connection, 384 -> 1024."""

    def __init__(self, cfg: DinoConfig):
        super().__init__()
        d = cfg.adapter_dim
        self.num_prefix_tokens = 1 + cfg.num_register_tokens
        self.branch1 = ConvBNReLU(d, d // 2, 1, cfg.bn_eps)
        self.branch2 = nn.Sequential(ConvBNReLU(d, d // 16, 1, cfg.bn_eps), ConvBNReLU(d // 16, d // 4, 3, cfg.bn_eps))
        self.branch3 = nn.Sequential(ConvBNReLU(d, d // 16, 1, cfg.bn_eps), ConvBNReLU(d // 16, d // 4, 5, cfg.bn_eps))
        self.D_fc1 = nn.Linear(cfg.embed_dim, d)
        self.D_fc2 = nn.Linear(d, cfg.embed_dim)
        self.cross_attn = IdCrossAttention(d, cfg.id_dim, cfg.adapter_attn_dim, cfg.adapter_heads)

    def forward(self, x: torch.Tensor, id_tokens: torch.Tensor, compute_branches: bool = False) -> torch.Tensor:
        """(B, 5 + P, 1024), (B, 1, 512) -> (B, 5 + P, 1024)."""
        x0 = F.relu(self.D_fc1(x))                                 # (B, 5 + P, 384)
        n = self.num_prefix_tokens
        patches = x0[:, n:]
        if compute_branches or id_tokens.shape[1] != 1:
            b, p, d = patches.shape
            side = math.isqrt(p)
            grid = patches.reshape(b, side, side, d).permute(0, 3, 1, 2)
            feats = torch.cat([self.branch1(grid), self.branch2(grid), self.branch3(grid)], dim=1)
            attended = self.cross_attn(feats.reshape(b, d, p).permute(0, 2, 1), id_tokens)
        else:
            attended = self.cross_attn.single_token(id_tokens).expand_as(patches)
        out = torch.cat([x0[:, :n], attended], dim=1) + x0         # cls/registers become 2 * x0
        return self.D_fc2(out)


class DinoBlock(nn.Module):
    """Pre-norm ViT block; on adapter blocks the ffn residual is ``ls2(mlp(n) + 0.2 * adapter(n, id))``."""

    def __init__(self, cfg: DinoConfig, use_adapter: bool):
        super().__init__()
        dim = cfg.embed_dim
        self.adapter_scale = cfg.adapter_scale
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(dim, cfg.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.ls2 = LayerScale(dim)
        self.adapter = IMAdapter(cfg) if use_adapter else None

    def forward(self, x: torch.Tensor, id_tokens: torch.Tensor | None = None,
                compute_branches: bool = False) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        h = self.norm2(x)
        ffn = self.mlp(h)
        if self.adapter is not None:
            ffn = ffn + self.adapter_scale * self.adapter(h, id_tokens, compute_branches)
        return x + self.ls2(ffn)


class DinoV2IdEncoder(nn.Module):
    """DINOv2 ViT-L/14 + 4 registers + IMAdapters, as ``dino.pth``."""

    def __init__(self, cfg: DinoConfig = DinoConfig()):
        super().__init__()
        self.config = cfg
        c, g = cfg.embed_dim, cfg.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g + 1, c))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, c))
        self.mask_token = nn.Parameter(torch.zeros(1, c))          # training only; kept for loading
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, c)
        adapters = set(cfg.adapter_blocks)
        self.blocks = nn.ModuleList(DinoBlock(cfg, i in adapters) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)

    @property
    def num_tokens(self) -> int:
        """Tokens of a 224 input: 1 cls + registers + 16x16 patches (261)."""
        return 1 + self.config.num_register_tokens + (224 // self.config.patch_size) ** 2

    def interpolate_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """(1, 1 + h*w, C) positional table for an image of ``height x width`` pixels, in the table's dtype.

        The grid is resized with bicubic interpolation (no antialias) in float32, using the scale factors
        ``(n + 0.1) / 37`` rather than an output size, as DINOv2 does."""
        cfg = self.config
        pos = self.pos_embed.float()
        g = cfg.grid_size
        rows, cols = height // cfg.patch_size, width // cfg.patch_size
        if rows == g and cols == g:
            return self.pos_embed
        grid = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        scale = ((rows + cfg.interpolate_offset) / g, (cols + cfg.interpolate_offset) / g)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        if grid.shape[-2:] != (rows, cols):
            raise ValueError(f"positional grid resized to {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([pos[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + R + P, C): patches, cls, positional table, then registers (no positional)."""
        b = image.shape[0]
        x = self.patch_embed(image)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_embed(image.shape[-2], image.shape[-1])
        return torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)

    def forward(self, image: torch.Tensor, id_embedding: torch.Tensor, compute_branches: bool = False) -> torch.Tensor:
        """(B, 3, 224, 224) ImageNet-normalised image, (B, 512) or (B, 1, 512) ArcFace embedding (zeros when ArcFace
        is off) -> (B, 261, 1024) final-LayerNorm tokens [cls, 4 registers, 16x16 patches]."""
        dtype = self.pos_embed.dtype
        image = image.to(dtype)
        id_tokens = id_embedding.to(dtype)
        if id_tokens.ndim == 2:
            id_tokens = id_tokens[:, None]
        x = self.prepare_tokens(image)
        for block in self.blocks:
            x = block(x, id_tokens, compute_branches)
        return self.norm(x)


__all__ = ["DinoBlock", "DinoConfig", "DinoV2IdEncoder", "IMAdapter", "IdCrossAttention"]
