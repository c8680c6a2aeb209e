"""Multi-axis rotary position embedding (RoPE over (time, row, column) coordinates).

The head dimension's rotation pairs are split between the three axes (Flux-style "axes_dim"):
each axis rotates its own block of pairs by ``position * theta^(-i / k)``. Position 0 on every
axis is the identity rotation, which is how position-free tokens (labels, vectors) opt out.
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_pairs(head_dim: int, axes: int = 3) -> list[int]:
    """How many rotation pairs each axis gets; the first (time) axis takes the remainder."""
    pairs = head_dim // 2
    each = pairs // axes
    return [pairs - each * (axes - 1)] + [each] * (axes - 1)


def rotary_angles(positions: Tensor, head_dim: int, theta: float) -> Tensor:
    """(n, axes) float positions -> (n, head_dim // 2) angles."""
    parts = []
    for axis, k in enumerate(axis_pairs(head_dim, positions.shape[-1])):
        if k == 0:
            continue
        freqs = theta ** (-torch.arange(k, dtype=torch.float64) / k)  # (k,)
        parts.append(positions[:, axis : axis + 1].double() * freqs)  # (n, k)
    return torch.cat(parts, dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (b, h, n, d) by angles given as cos/sin (n, d/2), in "rotate-half" layout."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
