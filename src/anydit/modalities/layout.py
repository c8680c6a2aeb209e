"""Layouts (N, 5): a set of up to N boxes on a canvas, each ``(x0, y0, x1, y1, class)``.

Coordinates are fractions of the canvas in [0, 1] (x to the right, y down; x0 <= x1, y0 <= y1);
``class`` is an id in [0, K) (names in ``classes``) or -1 for an empty row, so a layout may
hold fewer than N boxes. One token per box carries both what and where (CreatiLayout's layout
tokens): the coordinates mapped to [-1, 1] and the class as a one-hot over K + 1 (empty last)
in {-1, 1}, a continuous stream, so a layout is generated (argmax of the class part, corners
clamped and ordered) or given like any stream. The boxes are a set: every token has the same
rotary position, and attention treats them without order.

A command-line value is the boxes as text, ``"x0,y0,x1,y1,class; ..."`` (a class by name or
id), the rest of the N rows empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from anydit.modalities.base import Modality, check

COORDS = 4
RANGE_SLACK = 1e-6


class Layout(Modality):
    """(N, 5) boxes -> N tokens of 4 + K + 1 features (corners, one-hot class or empty)."""

    kind = "layout"
    rank = 2
    options = frozenset({"num_classes", "classes"})
    extensions = (".npy", ".json")

    @classmethod
    def check_kind(cls, cfg, where: str) -> None:
        check(
            cfg.shape[1] == 5,
            f"{where}.shape",
            "(N, 5): N boxes of x0, y0, x1, y1, class",
            cfg.shape,
        )
        check(cfg.num_classes >= 1, f"{where}.num_classes", "an integer >= 1", cfg.num_classes)
        check(
            not cfg.classes or len(cfg.classes) == cfg.num_classes,
            f"{where}.classes",
            f"{cfg.num_classes} names",
            cfg.classes,
        )

    @property
    def boxes(self) -> int:
        return self.shape[0]

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def token_dim(self) -> int:
        return COORDS + self.num_classes + 1

    def tokenize(self, x: Tensor) -> Tensor:
        corners = x[..., :COORDS] * 2 - 1  # (b, N, 4) in [-1, 1]
        ids = x[..., COORDS].round().long()
        ids = torch.where(ids < 0, self.num_classes, ids)  # empty: the last class
        onehot = torch.nn.functional.one_hot(ids, self.num_classes + 1).to(x.dtype) * 2 - 1
        return torch.cat([corners, onehot], dim=-1)  # (b, N, 4 + K + 1)

    def detokenize(self, tokens: Tensor) -> Tensor:
        corners = ((tokens[..., :COORDS] + 1) / 2).clamp(0, 1)
        x = torch.stack(
            [
                torch.minimum(corners[..., 0], corners[..., 2]),
                torch.minimum(corners[..., 1], corners[..., 3]),
                torch.maximum(corners[..., 0], corners[..., 2]),
                torch.maximum(corners[..., 1], corners[..., 3]),
            ],
            dim=-1,
        )
        ids = tokens[..., COORDS:].argmax(-1)
        ids = torch.where(ids == self.num_classes, -1, ids).to(x.dtype)
        return torch.cat([x, ids[..., None]], dim=-1)  # (b, N, 5)

    def positions(self) -> Tensor:
        return torch.zeros(self.boxes, 3)  # a set: no order among the boxes

    # --- values ----------------------------------------------------------------------------
    def prepare(self, value, n: int | None = None) -> Tensor:
        """Boxes (N, 5) or (b, N, 5), checked: corners in [0, 1] and ordered, classes in
        [-1, K); errors name the sample, the box and what was expected."""
        x = self.batch(self.check_dtype(torch.as_tensor(value)), n)
        ids = x[..., COORDS]
        for b, i in (ids != ids.round()).nonzero().tolist()[:1]:
            raise ValueError(
                f"modality '{self.name}': sample {b}, box {i}: class must be an integer id "
                f"(-1 = empty), got {float(ids[b, i])}"
            )
        for b, i in ((ids < -1) | (ids >= self.num_classes)).nonzero().tolist()[:1]:
            raise ValueError(
                f"modality '{self.name}': sample {b}, box {i}: class {int(ids[b, i])} out of "
                f"range; expected -1 (empty) or an id in [0, {self.num_classes})"
            )
        c = x[..., :COORDS]
        used = ids >= 0
        outside = ((c < -RANGE_SLACK) | (c > 1 + RANGE_SLACK)).any(-1) & used
        for b, i in outside.nonzero().tolist()[:1]:
            raise ValueError(
                f"modality '{self.name}': sample {b}, box {i} {c[b, i].tolist()} lies outside "
                "the canvas; expected x0, y0, x1, y1 as fractions in [0, 1]"
            )
        flipped = ((c[..., 2] < c[..., 0]) | (c[..., 3] < c[..., 1])) & used
        for b, i in flipped.nonzero().tolist()[:1]:
            raise ValueError(
                f"modality '{self.name}': sample {b}, box {i} {c[b, i].tolist()}: expected "
                "x0 <= x1 and y0 <= y1"
            )
        return x

    def class_id(self, text: str) -> int:
        names = self.cfg.classes
        if text in names:
            return names.index(text)
        if text.lstrip("-").isdigit() and -1 <= int(text) < self.num_classes:
            return int(text)
        raise ValueError(
            f"modality '{self.name}': unknown box class {text!r}; expected one of "
            f"{list(names) or f'ids 0..{self.num_classes - 1}'}"
        )

    def read_inline(self, value):
        """``"x0,y0,x1,y1,class; ..."`` (text) or a list of rows -> (N, 5), empty rows added."""
        if isinstance(value, str):
            rows = []
            for k, part in enumerate(p for p in value.split(";") if p.strip()):
                cells = [c.strip() for c in part.split(",")]
                if len(cells) != 5:
                    raise ValueError(
                        f"modality '{self.name}': box {k} {part.strip()!r}: expected "
                        "x0,y0,x1,y1,class"
                    )
                try:
                    corners = [float(c) for c in cells[:COORDS]]
                except ValueError:
                    raise ValueError(
                        f"modality '{self.name}': box {k}: corners must be numbers, got "
                        f"{cells[:COORDS]}"
                    ) from None
                rows.append([*corners, float(self.class_id(cells[COORDS]))])
            value = rows
        x = torch.as_tensor(value, dtype=torch.float32).reshape(-1, 5)
        if len(x) > self.boxes:
            raise ValueError(
                f"modality '{self.name}': {len(x)} boxes, more than the {self.boxes} declared"
            )
        empty = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1.0]]).expand(self.boxes - len(x), 5)
        return self.prepare(torch.cat([x, empty]), None)[0]

    def read_file(self, source, ext: str, fit: str, n: int | None):
        self.check_extension(source, ext)
        if ext == ".json":
            from anydit.modalities.base import file_bytes

            data = json.loads(file_bytes(source, f"layout file for modality '{self.name}'"))
            return self.read_inline(data)
        return self.read_npy(source, n)

    def decode(self, x: Tensor) -> list:
        """(b, N, 5) -> per sample the list of its boxes, ``{"box": [x0, y0, x1, y1],
        "class": name or id}``, empty rows left out."""
        names = self.cfg.classes
        out = []
        for sample in x.tolist():
            out.append(
                [
                    {"box": row[:COORDS], "class": names[int(row[4])] if names else int(row[4])}
                    for row in sample
                    if row[4] >= 0
                ]
            )
        return out

    def write(self, out: Path, stem: str, x: Tensor) -> list[str]:
        """``STEM.jsonl``: the boxes of each sample."""
        path = out / f"{stem}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i, boxes in enumerate(self.decode(x)):
                f.write(json.dumps({"index": i, "boxes": boxes}) + "\n")
        return [str(path)]
