"""Time embeddings and token embedders.

Ein notation: b batch, n tokens, d stream width, f sinusoidal features, m modalities.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, like DiT's timesteps).

    (...,) -> (..., dim)
    """
    half = dim // 2
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half
    )
    args = (t.to(dtype) * 1000.0)[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedder(nn.Module):
    """t -> sinusoidal -> MLP, the DiT timestep embedder. (...,) -> (..., d).

    With ``reverse`` the features are those of sigma = 1 - t (diffusers' SD3 and Flux count
    time from data: their timestep is 1000 sigma)."""

    def __init__(self, time_dim: int, width: int, reverse: bool = False):
        super().__init__()
        self.time_dim, self.reverse = time_dim, reverse
        self.mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal(1 - t if self.reverse else t, self.time_dim))


class TimeSummary(nn.Module):
    """Every modality's (mean) time, in canonical order, -> one vector: tells each stream what is
    given (t = 1), dropped (t = 0) or in between. (b, m) -> (b, d)."""

    def __init__(self, num_modalities: int, time_dim: int, width: int, reverse: bool = False):
        super().__init__()
        self.time_dim, self.reverse = time_dim, reverse
        self.mlp = nn.Sequential(
            nn.Linear(num_modalities * time_dim, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, times: Tensor) -> Tensor:
        feats = sinusoidal(1 - times if self.reverse else times, self.time_dim)  # (b, m, f)
        return self.mlp(feats.flatten(1))  # (b, d)


def sincos_2d(side: int, width: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings of a side x side grid, row-major:
    (side * side, width); the first half encodes the row, the second the column."""
    quarter = width // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (q,)
    pos = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")
    parts = []
    for axis in (rows, cols):
        args = axis.reshape(-1, 1) * freqs  # (side^2, q)
        parts += [args.sin(), args.cos()]
    table = torch.cat(parts, dim=-1)
    return torch.nn.functional.pad(table, (0, width - table.shape[-1])).float()


class PositionTable(nn.Module):
    """Absolute position embeddings of an image stream (SD3's ``pos_embed``): a fixed
    ``side`` x ``side`` table, centre-cropped to the stream's ``rows`` x ``cols`` patch grid
    and added to its tokens. (b, n, d) -> (b, n, d)."""

    def __init__(self, side: int, width: int, rows: int, cols: int):
        super().__init__()
        self.side, self.rows, self.cols = side, rows, cols
        self.register_buffer("table", sincos_2d(side, width))  # (side^2, d), saved with weights

    def forward(self, x: Tensor) -> Tensor:
        top, left = (self.side - self.rows) // 2, (self.side - self.cols) // 2
        grid = self.table.view(self.side, self.side, -1)
        crop = grid[top : top + self.rows, left : left + self.cols].reshape(-1, grid.shape[-1])
        return x + crop.to(x.dtype)


class BoxEmbedding(nn.Module):
    """Layout tokens (b, n, 4 + K + 1) -> (b, n, width): a linear map of the token plus an MLP
    of Fourier features of its box (corners and centre at ``octaves`` frequencies), GLIGEN's
    box embedding. A linear map of the corners alone cannot say "this image position lies in
    this box" to attention; sines and cosines of the geometry can (a key's phase set by the
    box's place).
    """

    def __init__(self, token_dim: int, width: int, octaves: int = 6):
        super().__init__()
        self.register_buffer(
            "freqs", math.pi * 2.0 ** torch.arange(octaves, dtype=torch.float32), persistent=False
        )
        self.linear = nn.Linear(token_dim, width)
        features = 6 * 2 * octaves  # x0, y0, x1, y1, centre x, centre y; sine and cosine
        self.mlp = nn.Sequential(
            nn.Linear(features, width), nn.GELU(approximate="tanh"), nn.Linear(width, width)
        )

    def fourier(self, tokens: Tensor) -> Tensor:
        """(b, n, 4 + ...) corners in [-1, 1] -> (b, n, 12 * octaves) features."""
        corners = tokens[..., :4]
        centre = (corners[..., :2] + corners[..., 2:]) / 2
        geometry = torch.cat([corners, centre], dim=-1)  # (b, n, 6)
        args = geometry[..., None] * self.freqs.to(tokens.dtype)  # (b, n, 6, o)
        return torch.cat([args.sin(), args.cos()], dim=-1).flatten(-2)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear(tokens) + self.mlp(self.fourier(tokens))


class EncoderConnector(nn.Module):
    """A pretrained encoder's features (b, n, K * D) -> stream tokens (b, n, width).

    A learned softmax-weighted sum over the K layers' features (UniFusion's layer-wise
    pooling; the weights start equal), then a connector of ``depth`` linear layers with GELU
    between (EMMA's connector; depth 1 is one linear embedding, what a plain sequence gets).
    """

    def __init__(self, layers: int, dim: int, width: int, depth: int = 1):
        super().__init__()
        self.layers, self.dim = layers, dim
        self.layer_logits = nn.Parameter(torch.zeros(layers))
        parts: list[nn.Module] = []
        for i in range(depth):
            parts.append(nn.Linear(dim if i == 0 else width, width))
            if i < depth - 1:
                parts.append(nn.GELU(approximate="tanh"))
        self.connector = nn.Sequential(*parts)

    @property
    def layer_weights(self) -> Tensor:
        """(K,) the pooling weights, summing to 1."""
        return self.layer_logits.softmax(0)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        x = x.reshape(b, n, self.layers, self.dim)
        pooled = torch.einsum("bnkd,k->bnd", x, self.layer_weights.to(x.dtype))
        return self.connector(pooled)
