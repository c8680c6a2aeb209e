"""μP, the maximal update parametrisation (Yang et al., Tensor Programs V, 2022), for Adam.

With ``model.mup_base_width = B``, a model of width w = m B is parametrised so that the best
learning rate found at width B stays best at width w. At w = B it is the ordinary model, bit
for bit; at other widths, each weight is placed by comparing its shape with the same model at
width B (as the ``mup`` package's base shapes do):

| weight | dims that grow with width | init std | Adam learning rate |
|---|---|---|---|
| hidden (qkv, attention out, MLP, modulations, time MLP) | both | base std / sqrt(m) | lr / m |
| input (token and time embeddings' first layers) | output only | base std | lr |
| output (each stream's final projection) | input only | zeros, output x 1/m | lr |
| biases, norms, tables | one or none | unchanged | lr |

"Base std" is the standard deviation the same weight has at width B under the model's own
initialisation (Xavier, N(0, 0.02) or zeros), so a zero-initialised weight stays zero. Heads
grow with width (head dim fixed), so attention keeps its 1/sqrt(head_dim) scale.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from anydit.config import ModelConfig


def base_config(cfg: ModelConfig) -> ModelConfig:
    """The same network at the base width (heads scaled with it), without μP."""
    b = cfg.mup_base_width
    return dataclasses.replace(cfg, width=b, heads=b // cfg.head_dim, mup_base_width=0)


def width_multiplier(cfg: ModelConfig) -> float:
    """m = width / base width (1 without μP)."""
    return cfg.width / cfg.mup_base_width if cfg.mup_base_width else 1.0


def _embedding_weights(model: nn.Module) -> set[str]:
    """Names of nn.Embedding weights: (vocabulary, width), so the input dim comes first."""
    return {f"{n}.weight" for n, mod in model.named_modules() if isinstance(mod, nn.Embedding)}


@torch.no_grad()
def apply_mup(model: nn.Module, base: nn.Module, multiplier: float) -> dict[str, float]:
    """Rescale ``model``'s initial weights for μP against ``base`` (the model at the base
    width, initialised the same way) and return each parameter's learning-rate scale."""
    base_params = dict(base.named_parameters())
    embeddings = _embedding_weights(model)
    scales = {}
    for name, p in model.named_parameters():
        q = base_params[name]
        grows = [a != b for a, b in zip(p.shape, q.shape, strict=True)]
        if name in embeddings:
            grows = grows[::-1]  # as (out, in), like a Linear weight
        scale, target = 1.0, None
        if p.dim() >= 2 and grows[0] and grows[1]:  # hidden
            scale, target = 1.0 / multiplier, q.std() / multiplier**0.5
        elif p.dim() >= 2 and grows[0]:  # input
            target = q.std()
        if target is not None:
            std = p.std()
            if std > 0:
                p.mul_(target / std)
        scales[name] = scale
    return scales


def lr_groups(named: list[tuple[str, nn.Parameter]], scales: dict[str, float], lr: float):
    """Optimiser parameter groups, one per learning-rate scale (``scales`` by name; a
    missing name is scale 1; a ``module.`` prefix of a DDP wrapper is ignored)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in named:
        key = name.removeprefix("module.")
        groups.setdefault(scales.get(key, 1.0), []).append(p)
    return [{"params": ps, "lr": lr * s} for s, ps in sorted(groups.items(), reverse=True)]
