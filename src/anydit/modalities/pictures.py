"""Pictures people look at: uint8 conversion, upscaling, grids and PNG files.

Pixels map linearly between ``[-1, 1]`` floats and ``0..255`` bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
GRID_MAX = 100  # at most this many samples in a ``NAME_grid.png``


def to_uint8_image(x: Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) in [-1, 1] -> uint8 (H, W) for one channel, else (H, W, C)."""
    arr = x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in PIL_MODES:
        raise ValueError(f"expected an image (C, H, W) with C in 1, 3, 4, got shape {arr.shape}")
    u8 = np.rint((np.clip(arr, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)  # (C, H, W)
    return u8[0] if u8.shape[0] == 1 else np.ascontiguousarray(u8.transpose(1, 2, 0))


def upscale(u8: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (H, W) or (H, W, C) by an integer ``scale``."""
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    return u8.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else u8


def display_scale(height: int, width: int, target: int = 256, cap: int = 8) -> int:
    """An integer upscale factor that makes small pictures visible (8 for <= 32 px)."""
    return max(1, min(cap, target // max(height, width)))


def write_png(path: str | Path, x: Tensor | np.ndarray, scale: int = 1) -> None:
    """Write an image (C, H, W) in [-1, 1] as PNG, upscaled ``scale`` times (nearest)."""
    Image.fromarray(upscale(to_uint8_image(x), scale)).save(path, format="PNG")


def image_grid(
    images: Tensor | np.ndarray, nrow: int, scale: int = 1, pad: int = 1, pad_value: int = 255
) -> np.ndarray:
    """Tile images (N, C, H, W) in [-1, 1], ``nrow`` per row, into one uint8 picture.

    Returns (H', W') for one channel, else (H', W', C); ``pad`` pixels of ``pad_value`` sit
    between and around the (upscaled) images.
    """
    if len(images) == 0:
        raise ValueError("image_grid: got no images")
    tiles = [upscale(to_uint8_image(img), scale) for img in images]
    h, w = tiles[0].shape[:2]
    cols = max(1, min(nrow, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    grid = np.full(
        (rows * (h + pad) + pad, cols * (w + pad) + pad, *tiles[0].shape[2:]),
        pad_value,
        dtype=np.uint8,
    )
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = tile
    return grid


def write_grid(
    path: str | Path, images: Tensor | np.ndarray, nrow: int, scale: int = 1, pad: int = 1
) -> None:
    """Write :func:`image_grid` as PNG."""
    Image.fromarray(image_grid(images, nrow, scale, pad)).save(path, format="PNG")


def write_images(out: Path, stem: str, x: Tensor) -> list[str]:
    """Per-sample PNGs ``STEM_00000.png`` and ``STEM_grid.png`` of images (N, C, H, W)."""
    scale = display_scale(*x.shape[-2:])
    paths = []
    for i, img in enumerate(x):
        paths.append(str(out / f"{stem}_{i:05d}.png"))
        write_png(paths[-1], img, scale)
    paths.append(str(out / f"{stem}_grid.png"))
    shown = x[:GRID_MAX]
    write_grid(paths[-1], shown, nrow=min(len(shown), 10), scale=scale)
    return paths
