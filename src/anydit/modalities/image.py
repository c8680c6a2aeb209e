"""Images (C, H, W): pixels in [-1, 1]; or latents of an autoencoder, read from image files and
decoded for viewing through it (``codec: vae``), or given as arrays (``codec: latent``).

Ein notation: b batch, c channels, h/w patch rows/columns, p/q pixels inside a patch.

Files: PNG, JPEG and WebP, converted to the modality's channels (grey, RGB, RGBA) and, at
another size, centre-cropped (``crop``), resized (``stretch``) or refused (``exact``); ``.npy``
arrays, where uint8 values are pixels (mapped like a PNG's) and floats must lie in [-1, 1].
The declared size of an image file is checked before it is decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image as PILImage
from torch import Tensor

from anydit.modalities.base import (
    IMAGE_EXTENSIONS,
    Modality,
    Source,
    check,
    file_bytes,
    opened,
    source_name,
)
from anydit.modalities.pictures import PIL_MODES, write_images

IMAGE_FITS = ("exact", "crop", "stretch")
RANGE_SLACK = 1e-3  # float pixels may exceed [-1, 1] by rounding, not more
MIN_DECODE_PIXELS = 4096 * 4096  # a file may be this large whatever the modality's size


def grid(*sizes: int) -> Tensor:
    """All integer coordinates of a grid, row-major: (prod(sizes), len(sizes)) float."""
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in sizes], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=-1)


def pixels_from_array(x: Tensor, where: str) -> Tensor:
    """uint8 pixels -> [-1, 1] as a PNG's would be; other values must already be in [-1, 1]."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    if x.numel() and x.dtype != torch.bool:
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
            raise ValueError(
                f"{where}: pixel values must lie in [-1, 1] (or be uint8 0..255); found values "
                f"outside, from {lo:.4g} to {hi:.4g} (latents? declare codec: latent)"
            )
    return x


def read_image(
    source: Source, shape: tuple[int, ...], name: str = "image", fit: str = "exact"
) -> Tensor:
    """Read an image file (a path or its bytes) as float32 (C, H, W) in [-1, 1].

    The file is converted to C channels. ``fit`` says what to do when its size is not (H, W):
    ``exact`` refuses it, ``crop`` scales the shorter side to fit and centre-crops the rest,
    ``stretch`` resizes to (H, W). A file declaring more than ``max(256 H W, 4096^2)`` pixels is
    refused before decoding.

    Raises:
        ValueError: unreadable file, unsupported channel count, too large, or (``exact``)
            another size.
    """
    c, h, w = shape
    label = source_name(source)
    if fit not in IMAGE_FITS:
        raise ValueError(f"image fit: expected one of {IMAGE_FITS}, got {fit!r}")
    if c not in PIL_MODES:
        raise ValueError(
            f"file {label}: modality '{name}' has {c} channels; image files need 1, 3 or 4"
        )
    data = file_bytes(source, f"image file for modality '{name}'")
    limit = max(256 * h * w, MIN_DECODE_PIXELS)
    try:
        with PILImage.open(opened(data)) as img:
            size = img.width * img.height
            if size <= limit:
                img.load()
                img = img.convert(PIL_MODES[c])
    except PILImage.DecompressionBombError as err:
        raise ValueError(
            f"image file {label} for modality '{name}' is too large: it declares more pixels "
            f"than {limit} for a {h}x{w} modality ({err})"
        ) from None
    except Exception as err:  # Pillow raises many types for damaged or hostile files
        raise ValueError(
            f"cannot read image file {label} for modality '{name}': expected a PNG/JPEG/WebP "
            f"image of {h}x{w} pixels (H x W) ({err!r:.200})"
        ) from None
    if size > limit:
        raise ValueError(
            f"image file {label} for modality '{name}' is too large: it declares "
            f"{img.width}x{img.height} pixels, more than {limit} for a {h}x{w} modality"
        )
    if (img.height, img.width) != (h, w):
        if fit == "exact":
            raise ValueError(
                f"image file {label} for modality '{name}': expected {h}x{w} pixels (H x W), "
                f"found {img.height}x{img.width}"
            )
        if fit == "crop":
            scale = max(h / img.height, w / img.width)
            size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
            img = img.resize(size, PILImage.Resampling.BICUBIC)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            img = img.crop((left, top, left + w, top + h))
        else:
            img = img.resize((w, h), PILImage.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32).reshape(h, w, c)  # (H, W, C)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1).contiguous()  # (C, H, W)


class Image(Modality):
    """(C, H, W) -> (H/p * W/p) tokens of p*p*C features; rotary axes (row, column)."""

    kind = "image"
    rank = 3
    options = frozenset({"patch", "codec", "codec_path", "pos_table"})

    @property
    def extensions(self) -> tuple[str, ...]:  # type: ignore[override]
        return (".npy",) if self.cfg.codec == "latent" else (".npy", *IMAGE_EXTENSIONS)

    @property
    def pixels(self) -> bool:
        """Values are pixels in [-1, 1] (no codec; grey, RGB or RGBA)."""
        return not self.cfg.codec and self.shape[0] in PIL_MODES

    @classmethod
    def check_kind(cls, cfg, where: str) -> None:
        check(cfg.patch >= 1, f"{where}.patch", "an integer >= 1", cfg.patch)
        for axis, size in zip("HW", cfg.shape[1:], strict=True):
            check(
                size % cfg.patch == 0,
                f"{where}.shape ({axis})",
                f"a multiple of patch={cfg.patch}",
                size,
            )
        check(
            cfg.codec in ("", "vae", "latent"),
            f"{where}.codec",
            "'' (pixels), 'vae' or 'latent' for an image",
            cfg.codec,
        )
        check(
            cfg.codec != "vae" or bool(cfg.codec_path),
            f"{where}.codec_path",
            "the autoencoder folder for codec 'vae'",
            cfg.codec_path,
        )
        check(
            not cfg.codec_path or cfg.codec == "vae",
            f"{where}.codec_path",
            "empty unless codec is 'vae'",
            cfg.codec_path,
        )
        if cfg.pos_table:
            side = max(cfg.shape[1:]) // cfg.patch
            check(
                cfg.pos_table >= side,
                f"{where}.pos_table",
                f"a side >= the patch grid ({side})",
                cfg.pos_table,
            )

    @property
    def token_dim(self) -> int:
        c, _, _ = self.shape
        return c * self.cfg.patch**2

    def tokenize(self, x: Tensor) -> Tensor:
        p = self.cfg.patch
        return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def detokenize(self, tokens: Tensor) -> Tensor:
        c, hh, _ = self.shape
        p = self.cfg.patch
        return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=hh // p, p=p, q=p, c=c)

    def positions(self) -> Tensor:
        _, hh, ww = self.shape
        rc = grid(hh // self.cfg.patch, ww // self.cfg.patch)  # (n, 2)
        return torch.cat([torch.zeros(rc.shape[0], 1), rc], dim=-1)

    @property
    def codec(self):
        """The loaded autoencoder of a ``codec: vae`` image, else None."""
        if self.cfg.codec != "vae":
            return None
        from anydit.modalities.vae import codec_at

        return codec_at(self.cfg.codec_path)

    def read_file(self, source: Source, ext: str, fit: str, n: int | None):
        self.check_extension(source, ext)
        if ext == ".npy":
            return self.read_npy(source, n)
        codec = self.codec
        if codec is None:
            return read_image(source, tuple(self.shape), self.name, fit)
        pixels = read_image(source, codec.pixel_shape(self.shape, self.name), self.name, fit)
        return codec.encode(pixels[None])[0]

    def read_array(self, x: Tensor, n: int | None = None, one: bool = False) -> Tensor:
        if self.pixels:
            x = pixels_from_array(x, f"modality '{self.name}'")
        return super().read_array(x, n, one)

    def write(self, out: Path, stem: str, x: Tensor) -> list[str]:
        codec = self.codec
        if codec is not None:
            return write_images(out, stem, codec.decode(x))
        return write_images(out, stem, x) if self.pixels else []
