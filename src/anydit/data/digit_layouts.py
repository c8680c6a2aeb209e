"""The built-in ``digit-layouts`` dataset: two or three digits placed in boxes on a canvas, and
the layout that says where each one is.

An item (a deterministic function of ``(seed, epoch, index)``, like ``digits``):

* ``image`` (1, 24, 24): a blank canvas (-1) with K real 8x8 digit images (K = 2 or 3) pasted
  at their boxes' corners; boxes never overlap;
* ``layout`` (3, 5): one row per digit, ``(x0, y0, x1, y1, digit)`` as fractions of the canvas,
  in reading order of their top-left corners; the rest of the rows empty (class -1).

Corners lie on a ``STRIDE``-pixel grid. Item ``index`` places the split's ``index``-th image
first; the other digits and every position are drawn per epoch. Splits are those of
``digits``: test images only in ``test``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from anydit.config import ModalityConfig
from anydit.data.digits import DIGIT_NAMES, _check_split, load_digit_images

CANVAS = 24
DIGIT = 8
BOXES = 3
STRIDE = 2
COUNTS = (2, 3)


def layout_corners() -> list[tuple[int, int]]:
    """Every (y, x) top-left corner a digit may take: the ``STRIDE`` grid inside the canvas."""
    last = CANVAS - DIGIT
    return [(y, x) for y in range(0, last + 1, STRIDE) for x in range(0, last + 1, STRIDE)]


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two DIGIT x DIGIT squares at top-left corners a and b overlap."""
    return abs(a[0] - b[0]) < DIGIT and abs(a[1] - b[1]) < DIGIT


def paste(images: Tensor, corners: list[tuple[int, int]]) -> Tensor:
    """(K, 1, 8, 8) digits at (y, x) corners on a blank (1, CANVAS, CANVAS) canvas."""
    canvas = torch.full((1, CANVAS, CANVAS), -1.0)
    for img, (y, x) in zip(images, corners, strict=True):
        canvas[:, y : y + DIGIT, x : x + DIGIT] = img
    return canvas


def layout_rows(digits: list[int], corners: list[tuple[int, int]]) -> Tensor:
    """(BOXES, 5) rows (x0, y0, x1, y1, digit) as fractions of the canvas, empty rows -1."""
    rows = torch.zeros(BOXES, 5)
    rows[:, 4] = -1
    for k, (d, (y, x)) in enumerate(zip(digits, corners, strict=True)):
        rows[k] = torch.tensor([x, y, x + DIGIT, y + DIGIT, 0]) / CANVAS
        rows[k, 4] = d
    return rows


def digit_layouts_modalities() -> list[ModalityConfig]:
    """The modalities of ``digit-layouts``: the canvas in 4x4 patches and the layout."""
    return [
        ModalityConfig("image", "image", (1, CANVAS, CANVAS), patch=4),
        ModalityConfig("layout", "layout", (BOXES, 5), num_classes=10, classes=tuple(DIGIT_NAMES)),
    ]


class DigitLayoutsDataset(Dataset):
    """Digits placed in boxes (see the module docstring): one item per image of the split,
    redrawn every epoch from ``(seed, epoch, index)``."""

    def __init__(self, split: str = "train", seed: int = 0) -> None:
        self.split = _check_split(split)
        self.seed = int(seed)
        self.epoch = 0
        self.images, self.labels = load_digit_images(split)  # (N, 1, 8, 8), (N,)
        self._corners = layout_corners()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def draw(self, index: int) -> tuple[list[int], list[tuple[int, int]]]:
        """(image indices, (y, x) corners) of an item this epoch, in reading order."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = np.random.default_rng([self.seed, self.epoch, index, 13])
        k = int(rng.choice(COUNTS))
        chosen = [index, *(int(i) for i in rng.integers(len(self), size=k - 1))]
        corners: list[tuple[int, int]] = []
        while len(corners) < k:  # rejection: two squares always leave a free corner
            c = self._corners[int(rng.integers(len(self._corners)))]
            if not any(overlaps(c, o) for o in corners):
                corners.append(c)
        order = sorted(range(k), key=lambda i: corners[i])
        return [chosen[i] for i in order], [corners[i] for i in order]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if index < 0:
            index += len(self)
        chosen, corners = self.draw(index)
        digits = [int(self.labels[i]) for i in chosen]
        return {
            "image": paste(self.images[chosen], corners),
            "layout": layout_rows(digits, corners),
        }
