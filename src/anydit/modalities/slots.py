"""Slots (S, C, H, W): several images of one kind in one sample -- a source and its edit,
references, in-context example pairs -- without a modality per slot.

A slots stream tokenises each slot like an image (patch x patch) and puts the slot index on the
rotary time axis, so attention tells the slots apart and a slot's pixels keep their own grid.
Unlike a video's frames, slots are not a clip: no clock, no temporal patches, and the kind's
shift and loss weight are 1. In training, ``p_partial`` gives *whole slots* (each with a drawn
share, as tokens are for other kinds): the model learns every "these slots given, the others
made" task, of which editing (source given) and in-context (an example pair and a query given)
are two. At sampling, ``slot_mask`` builds the data mask of given slots for
``Generate(known=..., mask=...)``.

Ein notation: b batch, s slots, c channels, h/w patch rows/columns, p/q pixels inside a patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange
from PIL import Image as PILImage
from torch import Tensor

from anydit.modalities.base import check
from anydit.modalities.image import grid
from anydit.modalities.pictures import PIL_MODES, display_scale, image_grid
from anydit.modalities.video import Video


class Slots(Video):
    """(S, C, H, W) -> (S * H/p * W/p) tokens of p*p*C features; axes (slot, row, col)."""

    kind = "slots"
    rank = 4
    options = frozenset({"patch"})

    @classmethod
    def check_kind(cls, cfg, where: str) -> None:
        check(cfg.patch >= 1, f"{where}.patch", "an integer >= 1", cfg.patch)
        check(cfg.shape[0] >= 1, f"{where}.shape (S)", "at least one slot", cfg.shape[0])
        for axis, size in zip("HW", cfg.shape[2:], strict=True):
            check(
                size % cfg.patch == 0, f"{where}.shape ({axis})", f"a multiple of {cfg.patch}", size
            )

    @property
    def slots(self) -> int:
        return self.shape[0]

    @property
    def tokens_per_slot(self) -> int:
        _, _, hh, ww = self.shape
        return (hh // self.cfg.patch) * (ww // self.cfg.patch)

    @property
    def token_dim(self) -> int:
        return self.shape[1] * self.cfg.patch**2

    def tokenize(self, x: Tensor) -> Tensor:
        p = self.cfg.patch
        return rearrange(x, "b s c (h p) (w q) -> b (s h w) (p q c)", p=p, q=p)

    def detokenize(self, tokens: Tensor) -> Tensor:
        s, c, hh, ww = self.shape
        p = self.cfg.patch
        return rearrange(
            tokens, "b (s h w) (p q c) -> b s c (h p) (w q)", s=s, h=hh // p, p=p, q=p, c=c
        )

    @property
    def default_shift(self) -> float:
        """1: each slot is its own picture (a video's frames are near copies, so a clip
        shifts by sqrt(T); slots do not)."""
        return 1.0

    @property
    def loss_weight(self) -> float:
        """``cfg.loss_weight``, else 1: the loss is a mean over the slots being made."""
        return 1.0 if self.cfg.loss_weight is None else float(self.cfg.loss_weight)

    def positions(self) -> Tensor:
        s, _, hh, ww = self.shape
        return grid(s, hh // self.cfg.patch, ww // self.cfg.patch)

    def draw_known(self, total: int, generator, device) -> Tensor:
        """Training's partial roles: each sample draws a share, each *slot* is given with that
        chance (at least one slot is left to make). (total, n) bool, True = given."""
        share = torch.rand(total, 1, generator=generator, device=device)
        known = torch.rand(total, self.slots, generator=generator, device=device) < share
        last = torch.randint(0, self.slots, (total,), generator=generator, device=device)
        everything = known.all(1)
        known[everything, last[everything]] = False  # a fully given sample teaches nothing
        return known.repeat_interleave(self.tokens_per_slot, dim=1)

    def slot_mask(self, given: Sequence[int], n: int = 1) -> Tensor:
        """The data mask (n, S, C, H, W) of ``Generate(known=..., mask=...)`` that holds the
        slots ``given`` (indices) fixed; errors name a slot out of range."""
        s = self.slots
        bad = [i for i in given if not (isinstance(i, int) and 0 <= i < s)]
        if bad:
            raise ValueError(
                f"modality '{self.name}': slots {bad} out of range; it has {s} slots (0..{s - 1})"
            )
        mask = torch.zeros(n, *self.shape, dtype=torch.bool)
        mask[:, list(given)] = True
        return mask

    def write(self, out: Path, stem: str, x: Tensor) -> list[str]:
        """One PNG strip of slots per sample."""
        if x.shape[2] not in PIL_MODES:
            return []
        scale = display_scale(*x.shape[-2:], target=128)
        paths = []
        for i, slots in enumerate(x):
            paths.append(str(out / f"{stem}_{i:05d}.png"))
            PILImage.fromarray(image_grid(slots, nrow=len(slots), scale=scale)).save(paths[-1])
        return paths
