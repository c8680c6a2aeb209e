"""Shared tiny configurations. Everything runs on CPU in seconds."""

from __future__ import annotations

import pytest
import torch

import anydit


def four_modalities(**model_kw):
    """image + label + text + sequence, debug size."""
    mods = [
        anydit.ModalityConfig("image", "image", (1, 8, 8), patch=2),
        anydit.ModalityConfig("label", "label", num_classes=10),
        anydit.ModalityConfig("text", "text", (12,)),
        anydit.ModalityConfig("audio", "sequence", (16, 4), patch=4),
    ]
    return mods, anydit.preset("debug", **model_kw)


def random_batch(model, b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A raw batch of the right shapes for every modality of ``model``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in model.modalities.items():
        if m.discrete:
            out[name] = torch.randint(0, m.token_dim, (b, *m.shape), generator=g)
        else:
            out[name] = torch.randn(b, *m.shape, generator=g)
    return out


@pytest.fixture
def model4():
    torch.manual_seed(0)
    mods, cfg = four_modalities()
    return anydit.MMDiT(mods, cfg)


def randomize(model, seed: int = 0, std: float = 0.1) -> None:
    """Give every parameter (the zero-initialised ones too) random values, so outputs depend on
    every input and every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def perturb(model, seed: int = 0, std: float = 0.05) -> None:
    """Add N(0, std^2) noise to every parameter, so the zero-initialised layers move too while
    the rest keeps its scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
