"""Time samplers for training, and the timestep shift that training and sampling share.

The shift s maps a uniform u to t = u / (u + s (1 - u)); s > 1 spends more of training and of
the sampling steps near noise (t small), which large token counts need (SD3, section 5.3.2).
s = 1 is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_time(u: Tensor, shift: float) -> Tensor:
    """t = u / (u + s (1 - u)); fixes 0 and 1."""
    if shift == 1.0:
        return u
    return u / (u + shift * (1 - u))


def sample_times(
    sampler: str,
    n: int,
    shift: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """n training times in (0, 1): ``uniform`` or ``logit_normal`` (sigmoid of a normal),
    then shifted."""
    if sampler == "uniform":
        u = torch.rand(n, generator=generator, device=device)
    elif sampler == "logit_normal":
        u = torch.sigmoid(
            logit_mean + logit_std * torch.randn(n, generator=generator, device=device)
        )
    else:
        raise ValueError(f"time sampler: expected 'uniform' or 'logit_normal', got {sampler!r}")
    return shift_time(u, shift)
