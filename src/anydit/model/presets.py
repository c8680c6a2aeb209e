"""Size presets as functions (DiT style); keyword arguments override any field."""

from __future__ import annotations

from collections.abc import Callable

from anydit.config import ModelConfig


def debug(**kw) -> ModelConfig:
    """A few thousand parameters: for tests and CI."""
    return ModelConfig(
        **{"width": 32, "depth": 2, "heads": 2, "head_dim": 16, "time_dim": 32, **kw}
    )


def small(**kw) -> ModelConfig:
    """~4M parameters for two streams: CPU demos."""
    return ModelConfig(
        **{"width": 192, "depth": 6, "heads": 3, "head_dim": 64, "time_dim": 128, **kw}
    )


def base(**kw) -> ModelConfig:
    """~60M parameters for two streams."""
    return ModelConfig(**{"width": 512, "depth": 12, "heads": 8, "head_dim": 64, **kw})


def large(**kw) -> ModelConfig:
    """~300M parameters for two streams: one GPU."""
    return ModelConfig(**{"width": 1024, "depth": 16, "heads": 16, "head_dim": 64, **kw})


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "debug": debug,
    "small": small,
    "base": base,
    "large": large,
}


def preset(name: str, **kw) -> ModelConfig:
    """The ModelConfig of a named preset; an unknown name is an error listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](**kw)
