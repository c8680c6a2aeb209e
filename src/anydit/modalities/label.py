"""Class labels: one categorical token of K classes (absorbing-state masked diffusion: id K is
the mask token).

Values are class ids or class names, and the two always agree. Strings are names (or, with no
integer-like names, decimal ids). Integers in training data are names when the class names are
integer-like ('1', '2', '3', taken from data that stores integers: 1 is class '1'), else ids.
Integers and tensors given in Python (``sample``'s inputs, and its outputs fed back) are ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from anydit.modalities.base import Modality, check, file_bytes


def _is_integer(name: str) -> bool:
    return name.lstrip("-").isdigit()


class Label(Modality):
    """One categorical token; values are class ids or class names (``cfg.classes``)."""

    kind = "label"
    discrete = True
    rank = 0
    options = frozenset({"num_classes", "classes"})
    extensions = (".npy", ".txt")

    @classmethod
    def check_kind(cls, cfg, where: str) -> None:
        check(
            cfg.num_classes >= 2 or cfg.num_classes == 0,
            f"{where}.num_classes",
            "an integer >= 2 (or 0: the classes the training data names)",
            cfg.num_classes,
        )
        check(
            not cfg.classes or len(cfg.classes) == cfg.num_classes,
            f"{where}.classes",
            f"{cfg.num_classes} names",
            cfg.classes,
        )
        dup = sorted({c for c in cfg.classes if cfg.classes.count(c) > 1})
        check(not dup, f"{where}.classes", "distinct names", dup)

    @property
    def token_dim(self) -> int:
        return self.cfg.num_classes

    @property
    def integer_names(self) -> bool:
        """Class names that are all integers: integer values are then looked up as names."""
        return bool(self.cfg.classes) and all(_is_integer(c) for c in self.cfg.classes)

    def tokenize(self, x: Tensor) -> Tensor:
        return x.reshape(-1, 1).long()  # (b,) -> (b, 1)

    def detokenize(self, tokens: Tensor) -> Tensor:
        return tokens.reshape(-1)

    def positions(self) -> Tensor:
        return torch.zeros(1, 3)

    def class_id(self, value: str | int) -> int:
        """A class name, or an integer (a name when the names are integers, else an id), or
        its decimal string -> the class id."""
        classes = self.cfg.classes
        text = str(value)
        if text in classes:
            return classes.index(text)
        if not self.integer_names and _is_integer(text) and 0 <= int(text) < self.cfg.num_classes:
            return int(text)
        known = list(classes) or f"ids 0..{self.cfg.num_classes - 1}"
        raise ValueError(
            f"modality '{self.name}': unknown label {value!r}; expected one of {known}"
        )

    def prepare(self, value, n: int | None = None) -> Tensor:
        """Names (strings) or ids (integers, tensors) -> ids (b,)."""
        if isinstance(value, str):
            value = self.class_id(value)
        elif isinstance(value, list | tuple) and value and isinstance(value[0], str):
            value = [self.class_id(v) for v in value]
        x = self.batch(self.check_dtype(torch.as_tensor(value)), n)
        return self.check_ids(x, self.cfg.num_classes, "class")

    def collate(self, values: list) -> Tensor:
        """Values read from training data (names, integers or 0-d integer tensors, one per
        sample; integers are names where the names are integer-like) -> ids (b,)."""
        ids = [self.class_id(v.item() if isinstance(v, Tensor) else v) for v in values]
        return torch.tensor(ids, dtype=torch.long)

    def read_inline(self, value) -> str | int:
        """A label name or an integer (see ``class_id``), checked; returned as it came, so
        that ``prepare`` and ``collate`` map it once."""
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected a label name or an integer id, got {value!r}")
        value = value.strip() if isinstance(value, str) else value
        self.class_id(value)
        return value

    def read_array(self, x: Tensor, n: int | None = None, one: bool = False) -> Tensor:
        """One sample of training data (``one``): checked by the data's rule (``class_id``);
        arrays of ids (``.npy`` given on the command line): checked as ids."""
        if not one:
            return super().read_array(x, n, one)
        if x.numel() != 1 or x.dtype.is_floating_point:
            raise ValueError(
                f"modality '{self.name}': expected one integer label, got {x.tolist()}"
            )
        self.class_id(int(x.reshape(())))
        return x.reshape(()).long()

    def read_file(self, source, ext: str, fit: str, n: int | None):
        self.check_extension(source, ext)
        if ext == ".txt":
            data = file_bytes(source, f"label file for modality '{self.name}'")
            return self.read_inline(data.decode("utf-8", errors="replace").strip())
        return self.read_npy(source, n)

    def decode(self, x: Tensor) -> list:
        ids = x.reshape(-1).tolist()
        return [self.cfg.classes[i] if self.cfg.classes else i for i in ids]

    def write(self, out: Path, stem: str, x: Tensor) -> list[str]:
        """``STEM.jsonl``: index, id and name of each sample."""
        ids, names = x.reshape(-1).tolist(), self.decode(x)
        rows = [
            {"index": i, "id": k, "name": str(v)}
            for i, (k, v) in enumerate(zip(ids, names, strict=True))
        ]
        return write_jsonl(out / f"{stem}.jsonl", rows)


def write_jsonl(path: Path, rows: list[dict]) -> list[str]:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return [str(path)]
