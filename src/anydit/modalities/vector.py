"""Vectors (D,): one token of D features, no position. Optionally standardised with stored
statistics, or pooled (no token: added to every stream's conditioning, as SD3's pooled text).
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydit.modalities.base import Modality, check


def parse_numbers(text: str, where: str) -> Tensor:
    """``"0.5, -1, 2"`` -> float32 (D,)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{where}: expected comma-separated numbers, got {text!r}") from None
    return torch.tensor(values, dtype=torch.float32)


class Vector(Modality):
    """(D,) -> one token of D features. With stored ``mean``/``std`` the token is the
    standardised vector; values in and out stay in the data's own units."""

    kind = "vector"
    rank = 1
    options = frozenset({"standardize", "mean", "std", "pooled"})

    @classmethod
    def check_kind(cls, cfg, where: str) -> None:
        if cfg.mean or cfg.std:
            d = cfg.shape[0]
            check(
                len(cfg.mean) == len(cfg.std) == d,
                f"{where}.mean / std",
                f"{d} values each",
                (len(cfg.mean), len(cfg.std)),
            )
            check(all(v > 0 for v in cfg.std), f"{where}.std", "values > 0", cfg.std)
        check(
            cfg.pooled in ("", "mlp", "time"), f"{where}.pooled", "'', 'mlp' or 'time'", cfg.pooled
        )
        if cfg.pooled:
            check(
                cfg.pooled != "time" or tuple(cfg.shape) == (1,),
                f"{where}.shape",
                "(1,) for pooled 'time' (one scalar)",
                cfg.shape,
            )
            check(
                cfg.width == 0,
                f"{where}.width",
                "0 for a pooled vector (it has no stream)",
                cfg.width,
            )

    @property
    def token_dim(self) -> int:
        return self.shape[0]

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        if not self.cfg.mean:
            return None
        mean = torch.tensor(self.cfg.mean, dtype=x.dtype, device=x.device)
        return mean, torch.tensor(self.cfg.std, dtype=x.dtype, device=x.device)

    def tokenize(self, x: Tensor) -> Tensor:
        stats = self._stats(x)
        if stats is not None:
            x = (x - stats[0]) / stats[1]
        return x.unsqueeze(1)

    def detokenize(self, tokens: Tensor) -> Tensor:
        x = tokens.squeeze(1)
        stats = self._stats(x)
        return x if stats is None else x * stats[1] + stats[0]

    def positions(self) -> Tensor:
        return torch.zeros(1, 3)

    def read_inline(self, value):
        if isinstance(value, str):
            value = parse_numbers(value, f"modality '{self.name}' ({self.kind})").tolist()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        return super().read_inline(value)
