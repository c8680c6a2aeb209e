"""Low-rank adapters (LoRA, Hu et al. 2021) on a model's linear layers.

A ``LoRALinear`` is an ``nn.Linear`` with two more parameters, ``lora_a`` (r, in) and
``lora_b`` (out, r): y = x W^T + b + (alpha / r) x A^T B^T. ``lora_b`` starts at zero, so an
adapted model computes exactly what the base did until it trains. The base weight keeps its
name, so a base checkpoint loads into an adapted model (the adapters start fresh) and
``merge_lora`` folds the adapters back into plain weights for export.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRALinear(nn.Linear):
    """A linear layer with a trainable low-rank update beside its (usually frozen) weight."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, bias=True):
        super().__init__(in_features, out_features, bias=bias)
        self.rank, self.scale = rank, (alpha or rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)

    def merged_weight(self) -> Tensor:
        """W + (alpha / r) B A: the plain weight this layer computes."""
        return self.weight + self.scale * (self.lora_b @ self.lora_a)


def add_lora(model: nn.Module, stream_of, streams, rank: int, alpha: float) -> int:
    """Replace every ``nn.Linear`` whose parameters belong to ``streams`` (``stream_of`` maps
    a parameter name to its stream) by a ``LoRALinear`` with the same weights. Returns how
    many layers were adapted."""
    targets = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and stream_of(f"{name}.weight") in streams
    ]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        new = LoRALinear(old.in_features, old.out_features, rank, alpha, old.bias is not None)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        setattr(parent, child, new)
    return len(targets)


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with every adapter folded into its base weight and the
    ``lora_a``/``lora_b`` entries removed: the weights of a plain (unadapted) model."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.weight"] = module.merged_weight().detach()
            del state[f"{name}.lora_a"], state[f"{name}.lora_b"]
    return state
