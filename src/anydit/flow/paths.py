"""Probability paths. t = 0 is noise, t = 1 is data.

Continuous (rectified flow / linear interpolation):

    x_t = t * x1 + (1 - t) * x0,    x0 ~ N(0, I),    target velocity v = x1 - x0

Discrete (absorbing state / masked diffusion): each token is revealed (kept) with probability
t and is the mask id otherwise; the network predicts the clean token's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast per-sample (b,) or per-token (b, n) times against x (b, n, ...)."""
    while t.dim() < x.dim():
        t = t.unsqueeze(-1)
    return t.to(x.dtype) if x.dtype.is_floating_point else t


@dataclass
class PathSample:
    """A point on the continuous path and its target. Shapes: x (b, n, p), t (b,) or (b, n)."""

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    velocity: Tensor


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """x_t = t x1 + (1 - t) x0."""
    t = expand_time(t, x1)
    return t * x1 + (1 - t) * x0


def sample_path(x1: Tensor, t: Tensor, x0: Tensor) -> PathSample:
    """x_t and its target velocity for data x1, noise x0 at times t."""
    return PathSample(x0=x0, x1=x1, t=t, x_t=interpolate(x0, x1, t), velocity=x1 - x0)


def reveal_mask(
    shape: tuple[int, int], t: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """(b, n) bools, each True (revealed) with probability t ((b,) or (b, n))."""
    u = torch.rand(shape, generator=generator, device=t.device)
    return u < (t[:, None] if t.dim() == 1 else t)
