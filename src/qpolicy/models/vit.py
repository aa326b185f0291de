"""A small vision transformer (Dosovitskiy et al. 2021) for small images: patch embedding, pre-norm blocks of
multi-head self-attention and an MLP, LayerNorm, a class token and a linear head.

Every matrix multiply with a weight is an ``nn.Linear`` (the query/key/value projections are one ``qkv`` Linear),
so each is a quantizable layer of its own: per-output-channel weight scales and a per-tensor activation quantizer
on its input, like a convolution. The two products of activations with activations inside attention (Q Kᵀ and the
attention weights times V) have no weights: qpolicy keeps them, the softmax, LayerNorm and the residual additions in
float, and BitOPs count only the Linear layers' MACs (the attention products add ``2 T² D`` MACs per sample for T
tokens of width D; :func:`attention_macs`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyViT", "tiny_vit", "attention_macs"]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, *, image_size: int = 8, patch: int = 2, channels: int = 1, classes: int = 10, dim: int = 32,
                 depth: int = 2, heads: int = 4, mlp_ratio: int = 2):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch})")
        self.patch = patch
        self.embed = nn.Linear(channels * patch * patch, dim)  # patch embedding
        tokens = (image_size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.input_shape = (channels, image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)
        x = torch.cat([self.cls.expand(b, -1, -1), self.embed(x)], 1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def tiny_vit(image_size: int = 8, patch: int = 2, channels: int = 1, classes: int = 10, dim: int = 32,
             depth: int = 2, heads: int = 4, mlp_ratio: int = 2) -> TinyViT:
    """``--model qpolicy.models.vit:tiny_vit`` (``--model-arg image_size=32`` ...)."""
    return TinyViT(image_size=image_size, patch=patch, channels=channels, classes=classes, dim=dim, depth=depth,
                   heads=heads, mlp_ratio=mlp_ratio)


def attention_macs(model: TinyViT) -> int:
    """Per-sample MACs of the activation-by-activation products (Q Kᵀ, attention x V) that BitOPs leave out."""
    t = (model.input_shape[1] // model.patch) * (model.input_shape[2] // model.patch) + 1
    d = model.embed.out_features
    return len(model.blocks) * 2 * t * t * d
