"""An exponential moving average of the weights: what sampling and evaluation load."""

from __future__ import annotations

import copy

import torch


def make_ema(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` to average into."""
    return copy.deepcopy(model).requires_grad_(False)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, over all parameters (shards under FSDP)."""
    torch._foreach_lerp_(
        list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay
    )


def ema_decay(step: int, decay: float) -> float:
    """Warm the EMA up: early on, average over fewer steps ((1 + s) / (10 + s), capped)."""
    return min(decay, (1 + step) / (10 + step))
