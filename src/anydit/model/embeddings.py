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
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = (t.float() * 1000.0)[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedder(nn.Module):
    """t -> sinusoidal -> MLP, the DiT timestep embedder. (...,) -> (..., d)."""

    def __init__(self, time_dim: int, width: int):
        super().__init__()
        self.time_dim = time_dim
        self.mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal(t, self.time_dim))


class TimeSummary(nn.Module):
    """Every modality's (mean) time, in canonical order, -> one vector: tells each stream what is
    given (t = 1), dropped (t = 0) or in between. (b, m) -> (b, d)."""

    def __init__(self, num_modalities: int, time_dim: int, width: int):
        super().__init__()
        self.time_dim = time_dim
        self.mlp = nn.Sequential(
            nn.Linear(num_modalities * time_dim, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, times: Tensor) -> Tensor:
        feats = sinusoidal(times, self.time_dim)  # (b, m, f)
        return self.mlp(feats.flatten(1))  # (b, d)
