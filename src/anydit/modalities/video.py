"""Video (T, C, H, W): frames of pixels in [-1, 1], tokens of patch_t frames x patch x patch.

Ein notation: b batch, c channels, t frames (tokens along time), u frames inside a patch,
h/w patch rows/columns, p/q pixels inside a patch.
"""

from __future__ import annotations

import math
from pathlib import Path

from einops import rearrange
from PIL import Image as PILImage
from torch import Tensor

from anydit.modalities.base import Modality, check
from anydit.modalities.image import grid, pixels_from_array
from anydit.modalities.pictures import PIL_MODES, display_scale, image_grid


class Video(Modality):
    """(T, C, H, W) -> (T/u * H/p * W/p) tokens of u*p*p*C features; axes (time, row, col).
    Modalities naming the same ``clock`` share the time axis (audio-video sync)."""

    kind = "video"
    rank = 4
    options = frozenset({"patch", "patch_t", "clock", "rate"})

    @classmethod
    def check_kind(cls, cfg, where: str) -> None:
        check(cfg.patch >= 1, f"{where}.patch", "an integer >= 1", cfg.patch)
        check(cfg.patch_t >= 1, f"{where}.patch_t", "an integer >= 1", cfg.patch_t)
        frames = cfg.shape[0]
        check(
            frames % cfg.patch_t == 0,
            f"{where}.shape (T)",
            f"a multiple of patch_t={cfg.patch_t}",
            frames,
        )
        for axis, size in zip("HW", cfg.shape[2:], strict=True):
            check(
                size % cfg.patch == 0, f"{where}.shape ({axis})", f"a multiple of {cfg.patch}", size
            )

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

    @property
    def default_shift(self) -> float:
        """sqrt(T / patch_t): the frames of a clip are nearly copies of each other, so at any
        time t the noise hides T / patch_t times less of what the clip shows than of one frame
        (SD3's rule for more tokens of one picture, section 5.3.2). On moving digits (4 frames,
        ``benchmarks/video_learning.py``) shift 2 took label -> video from 31% to 43% of clips
        right at the same steps."""
        return math.sqrt(self.shape[0] / self.cfg.patch_t)

    @property
    def loss_weight(self) -> float:
        """``cfg.loss_weight``, else T / patch_t: a modality's loss is a mean over its tokens,
        so without it a clip of T frames would weigh as much as one picture. On moving digits
        (4 frames, ``benchmarks/video_learning.py``) weight 4 took label -> video from 31% to
        62% of clips right at the same steps."""
        if self.cfg.loss_weight is not None:
            return float(self.cfg.loss_weight)
        return float(self.shape[0] // self.cfg.patch_t)

    def positions(self) -> Tensor:
        tt, _, hh, ww = self.shape
        pos = grid(tt // self.cfg.patch_t, hh // self.cfg.patch, ww // self.cfg.patch)
        pos[:, 0] *= self.time_scale
        return pos

    def read_array(self, x: Tensor, n: int | None = None, one: bool = False) -> Tensor:
        if self.shape[1] in PIL_MODES:  # frames of pixels (other channel counts: free values)
            x = pixels_from_array(x, f"modality '{self.name}'")
        return super().read_array(x, n, one)

    def write(self, out: Path, stem: str, x: Tensor) -> list[str]:
        """One PNG strip of frames per sample."""
        if x.shape[2] not in PIL_MODES:
            return []
        scale = display_scale(*x.shape[-2:], target=128)
        paths = []
        for i, video in enumerate(x):
            paths.append(str(out / f"{stem}_{i:05d}.png"))
            PILImage.fromarray(image_grid(video, nrow=len(video), scale=scale)).save(paths[-1])
        return paths
