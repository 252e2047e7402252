"""A small Vision Transformer embedder whose patch tokens form a grid."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn


class TokenGrid:
    r"""Reshapes transformer tokens ``(N, T, C)`` to a feature map ``(N, C, h, w)``.

    The first ``num_prefix_tokens`` tokens (class token, registers) are
    dropped and the remaining ``h * w`` patch tokens laid out row by row. Pass
    it as ``reshape_transform`` to the library's layer methods when the
    explained layer is a transformer block.

    Args:
        grid_size (tuple of int): ``(h, w)`` of the patch grid.
        num_prefix_tokens (int, optional): Tokens before the patch tokens.
            Default: 1
    """

    def __init__(self, grid_size: Tuple[int, int], num_prefix_tokens: int = 1) -> None:
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens = int(num_prefix_tokens)

    def __call__(self, tokens: Tensor) -> Tensor:
        h, w = self.grid_size
        expected = self.num_prefix_tokens + h * w
        if tokens.dim() != 3 or tokens.shape[1] != expected:
            raise ValueError(
                f"expected tokens of shape (N, {expected}, C) for a {h}x{w} grid with "
                f"{self.num_prefix_tokens} prefix tokens, got {tuple(tokens.shape)}"
            )
        patches = tokens[:, self.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    def inverse(self, grid: Tensor, like: Tensor) -> Tensor:
        """The tokens ``like`` with their patch tokens taken from ``grid``
        ``(N, C, h, w)`` (the prefix tokens are ``like``'s)."""
        patches = grid.flatten(2).transpose(1, 2)
        return torch.cat([like[:, : self.num_prefix_tokens], patches], dim=1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenGrid) and (self.grid_size, self.num_prefix_tokens) == (
            other.grid_size,
            other.num_prefix_tokens,
        )

    def __hash__(self) -> int:
        return hash((self.grid_size, self.num_prefix_tokens))

    def __repr__(self) -> str:
        return f"TokenGrid(grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens})"


class ChannelsLast:
    r"""Turns a channels-last feature map ``(N, h, w, C)`` (Swin's stages,
    ConvNeXt's blocks between their permutes) into ``(N, C, h, w)``. Pass it
    as ``reshape_transform`` to the library's layer methods for such a layer.
    """

    def __call__(self, t: Tensor) -> Tensor:
        if t.dim() != 4:
            raise ValueError(f"expected a channels-last feature map (N, h, w, C), got {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2)

    def inverse(self, grid: Tensor, like: Tensor) -> Tensor:
        """``grid`` ``(N, C, h, w)`` back in the layout ``(N, h, w, C)``."""
        return grid.permute(0, 2, 3, 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChannelsLast)

    def __hash__(self) -> int:
        return hash(ChannelsLast)

    def __repr__(self) -> str:
        return "ChannelsLast()"


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` linear and an output ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = self.softmax((q @ k.transpose(-2, -1)) * self.scale)
        out = (attn @ v).transpose(1, 2).reshape(n, t, c)
        return self.proj(out)


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEmbedder(nn.Module):
    r"""Small Vision Transformer embedder with a class token.

    Args:
        image_size (int or tuple of int, optional): Input height and width.
            Default: 32
        patch_size (int, optional): Side of the square patches.
            Default: 8
        in_channels (int, optional): Input channels.
            Default: 3
        dim (int, optional): Token width.
            Default: 48
        depth (int, optional): Number of transformer blocks.
            Default: 2
        num_heads (int, optional): Attention heads.
            Default: 3
        embedding_dim (int, optional): Output width.
            Default: 32
        pool (str, optional): ``"cls"`` (class token) or ``"mean"`` (mean of
            the patch tokens) before the final linear head.
            Default: ``"cls"``

    Input ``(N, in_channels, H, W)``; output ``(N, embedding_dim)``. A block's
    output ``(N, 1 + h * w, dim)`` becomes a grid with :attr:`token_grid`.
    """

    def __init__(
        self,
        image_size: int | Tuple[int, int] = 32,
        patch_size: int = 8,
        in_channels: int = 3,
        dim: int = 48,
        depth: int = 2,
        num_heads: int = 3,
        embedding_dim: int = 32,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"image size {(h, w)} is not divisible by patch size {patch_size}")
        self.image_size = (h, w)
        self.grid_size = (h // patch_size, w // patch_size)
        self.num_prefix_tokens = 1
        self.pool = pool
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, embedding_dim)
        self.embedding_dim = embedding_dim

    @property
    def token_grid(self) -> TokenGrid:
        """Reshapes this model's block outputs to ``(N, dim, h, w)`` patch grids."""
        return TokenGrid(self.grid_size, self.num_prefix_tokens)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"ViTEmbedder was built for {self.image_size} inputs, got {tuple(x.shape[-2:])}"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(tokens + self.pos_embed))
        pooled = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(1)
        return self.head(pooled)
