"""Continuous kinds: image (C, H, W), video (T, C, H, W), sequence (L, C), vector (D,).

Ein notation: b batch, c channels, h/w patch rows/columns, p/q pixels inside a patch,
t frames (tokens along time), u frames inside a patch, l tokens along a sequence.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from anydit.modalities.base import Modality


def _grid(*sizes: int) -> Tensor:
    """All integer coordinates of a grid, row-major: (prod(sizes), len(sizes)) float."""
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in sizes], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=-1)


class Image(Modality):
    """(C, H, W) -> (H/p * W/p) tokens of p*p*C features; rotary axes (row, column)."""

    @property
    def token_dim(self) -> int:
        c, _, _ = self.shape
        return c * self.cfg.patch**2

    def tokenize(self, x: Tensor) -> Tensor:
        p = self.cfg.patch
        return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def detokenize(self, tokens: Tensor) -> Tensor:
        c, hh, ww = self.shape
        p = self.cfg.patch
        return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=hh // p, p=p, q=p, c=c)

    def positions(self) -> Tensor:
        _, hh, ww = self.shape
        rc = _grid(hh // self.cfg.patch, ww // self.cfg.patch)  # (n, 2)
        return torch.cat([torch.zeros(rc.shape[0], 1), rc], dim=-1)


class Video(Modality):
    """(T, C, H, W) -> (T/u * H/p * W/p) tokens of u*p*p*C features; axes (time, row, col)."""

    @property
    def token_dim(self) -> int:
        _, c, _, _ = self.shape
        return c * self.cfg.patch_t * self.cfg.patch**2

    def tokenize(self, x: Tensor) -> Tensor:
        p, u = self.cfg.patch, self.cfg.patch_t
        return rearrange(x, "b (t u) c (h p) (w q) -> b (t h w) (u p q c)", u=u, p=p, q=p)

    def detokenize(self, tokens: Tensor) -> Tensor:
        tt, c, hh, ww = self.shape
        p, u = self.cfg.patch, self.cfg.patch_t
        return rearrange(
            tokens,
            "b (t h w) (u p q c) -> b (t u) c (h p) (w q)",
            t=tt // u,
            h=hh // p,
            u=u,
            p=p,
            q=p,
            c=c,
        )

    def positions(self) -> Tensor:
        tt, _, hh, ww = self.shape
        pos = _grid(tt // self.cfg.patch_t, hh // self.cfg.patch, ww // self.cfg.patch)
        pos[:, 0] *= self.time_scale
        return pos


class Sequence(Modality):
    """(L, C) -> L/p tokens of p*C features; axis (time). Audio frames, actions, embeddings."""

    @property
    def token_dim(self) -> int:
        return self.shape[1] * self.cfg.patch

    def tokenize(self, x: Tensor) -> Tensor:
        return rearrange(x, "b (l p) c -> b l (p c)", p=self.cfg.patch)

    def detokenize(self, tokens: Tensor) -> Tensor:
        return rearrange(tokens, "b l (p c) -> b (l p) c", p=self.cfg.patch)

    def positions(self) -> Tensor:
        n = self.shape[0] // self.cfg.patch
        pos = torch.zeros(n, 3)
        pos[:, 0] = torch.arange(n, dtype=torch.float32) * self.time_scale
        return pos


class Vector(Modality):
    """(D,) -> one token of D features, no position. With stored ``mean``/``std`` the token is
    the standardised vector; values in and out stay in the data's own units."""

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
