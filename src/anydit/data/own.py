"""Users' own data: array files, manifests (JSONL, CSV, Parquet) and image folders.

Every source yields items ``{modality: raw value}`` holding only the modalities a sample has:
a modality missing from an item is dropped for that sample during training (partial pairing).
Values are read and checked when an item is fetched, by the modality's own readers (the same
ones ``anydit sample --given`` uses), so an error names the file, the row and the modality.
``scan`` reads everything once and collects every problem (``anydit data check``, and the
``skip`` policy).

    arrays    a ``.npz`` with one key per modality, or a folder of ``NAME.npy`` files;
              leading dimension = samples
    manifest  one row per sample, one column per modality: a media file (a path ending in
              .png .jpg .jpeg .webp .wav .flac .ogg .npy) or an inline value (label name or id,
              text, numbers for a vector). Files must lie under the manifest's folder (or
              ``data.root``) unless ``data.allow_outside`` is set.
    folder    ``root/CLASS/*.png|jpg|jpeg|webp`` -> the image modality + the label modality
"""

from __future__ import annotations

import csv
import json
import math
import os
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from anydit.config import ModalityConfig
from anydit.errors import DataError, problem_kind
from anydit.modalities import build_modalities
from anydit.modalities.base import IMAGE_EXTENSIONS

ID_COLUMNS = ("key", "id")  # manifest columns that name a sample and are not read


def is_missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def path_resolver(base: Path, root: Path | None = None, allow_outside: bool = False):
    """A function mapping a manifest's file cell to a path: relative to ``base``, and (unless
    ``allow_outside``) required to lie under ``root`` (default ``base``) -- so a manifest from
    elsewhere cannot make training, ``data pack`` or ``data check`` read other local files."""
    base = Path(base)
    fence = Path(os.path.realpath(root or base))

    def resolve(value: str) -> Path:
        path = Path(value)
        full = path if path.is_absolute() else base / path
        if not allow_outside:
            real = Path(os.path.realpath(full))
            if real != fence and fence not in real.parents:
                raise DataError(
                    f"file '{value}' lies outside the data folder '{fence}' (paths out of it, "
                    "by '..', an absolute path or a link, are refused; set data.allow_outside: "
                    "true for a manifest you trust)",
                    "file outside the data folder",
                )
        return full

    return resolve


class _Source(Dataset):
    """Common parts: the modalities, the item reader, and the list of kept rows."""

    where: str

    def __init__(self, modalities: list[ModalityConfig]):
        self.modality_configs = list(modalities)
        self.modalities = build_modalities(modalities)
        self.rows: list[int] = []  # positions in the underlying table that are served

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.read(self.rows[i])

    def read(self, row: int) -> dict:
        raise NotImplementedError

    def label_names(self, name: str) -> set[str]:
        """Every label value of modality ``name`` in the table (names as strings)."""
        raise NotImplementedError


class ManifestDataset(_Source):
    """Rows of a JSONL, CSV or Parquet manifest; files are relative to the manifest's folder."""

    def __init__(
        self,
        path: str | Path,
        modalities: list[ModalityConfig],
        fit: str = "crop",
        root: str | Path | None = None,
        allow_outside: bool = False,
    ):
        super().__init__(modalities)
        self.path, self.fit = Path(path), fit
        self.where = f"manifest '{self.path}'"
        self.resolve = path_resolver(self.path.parent, Path(root) if root else None, allow_outside)
        self.table = read_table(self.path)
        columns: set[str] = set()
        for row in self.table:
            columns |= set(row)
        unknown = sorted(columns - set(self.modalities) - set(ID_COLUMNS), key=str)
        if unknown:
            raise DataError(
                f"{self.where}: column(s) {unknown} match no modality; the modalities are "
                f"{sorted(self.modalities)} (columns {list(ID_COLUMNS)} are ignored)",
                "unknown column",
            )
        self.rows = list(range(len(self.table)))

    def read(self, row: int) -> dict:
        item = {}
        for name, value in self.table[row].items():
            if name in ID_COLUMNS or is_missing(value):
                continue
            try:
                item[name] = self.modalities[name].read_cell(value, self.resolve, self.fit)
            except (ValueError, FileNotFoundError) as err:
                raise DataError(
                    f"{self.where}, row {row + 1}, column '{name}': {err}", problem_kind(err)
                ) from err
        return item

    def label_names(self, name: str) -> set[str]:
        return {str(r[name]).strip() for r in self.table if not is_missing(r.get(name))}


def read_table(path: Path) -> list[dict]:
    """A manifest as a list of row dicts (JSONL lines, CSV rows or Parquet rows)."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest '{path}' does not exist")
    ext = path.suffix.lower()
    try:
        if ext in (".jsonl", ".ndjson"):
            return _read_jsonl(path)
        if ext == ".csv":
            return _read_csv(path)
    except UnicodeDecodeError as err:
        raise DataError(
            f"manifest '{path}': expected UTF-8 text ({err})", "unreadable file"
        ) from None
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(
                f"manifest '{path}': reading Parquet needs pyarrow (pip install pyarrow)"
            ) from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises its own error types for damaged files
            raise DataError(
                f"manifest '{path}': not a readable Parquet file ({err})", "unreadable file"
            ) from None
    raise DataError(f"manifest '{path}': expected a .jsonl, .csv or .parquet file, got '{ext}'")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"manifest '{path}', line {n}: not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise DataError(f"manifest '{path}', line {n}: expected a JSON object")
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = []
        for row in reader:
            if None in row:  # more cells than the header names
                raise DataError(
                    f"manifest '{path}', line {reader.line_num}: {len(row) - 1 + len(row[None])} "
                    f"cells, but the header names {len(reader.fieldnames or [])} columns"
                )
            rows.append(dict(row))
        return rows


class ArraysDataset(_Source):
    """A ``.npz`` (one key per modality) or a folder of ``NAME.npy``; rows = leading index.

    A modality without an array is absent from every sample (dropped in training).
    """

    def __init__(self, path: str | Path, modalities: list[ModalityConfig]):
        super().__init__(modalities)
        self.path = Path(path)
        self.where = f"arrays '{self.path}'"
        try:
            if self.path.is_dir():
                files = {p.stem: p for p in sorted(self.path.glob("*.npy"))}
                self.arrays = {
                    k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in files.items()
                }
            elif self.path.is_file():
                with np.load(self.path, allow_pickle=False) as npz:
                    self.arrays = {k: npz[k] for k in npz.files}
            else:
                raise FileNotFoundError(f"{self.where}: no such file or folder")
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise DataError(
                f"{self.where}: not a readable .npz or .npy ({err})", "unreadable file"
            ) from None
        unknown = sorted(set(self.arrays) - set(self.modalities))
        if unknown:
            raise DataError(
                f"{self.where}: array(s) {unknown} match no modality; the modalities are "
                f"{sorted(self.modalities)}",
                "unknown column",
            )
        for k, a in self.arrays.items():
            if a.ndim == 0 or a.dtype.kind not in "biufUS":
                raise DataError(
                    f"{self.where}: array '{k}' has dtype {a.dtype} and shape {a.shape}; expected "
                    "numbers or strings with the samples along the first axis",
                    "wrong shape",
                )
        lengths = {k: len(a) for k, a in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(
                f"{self.where}: arrays must have the same number of samples, got {lengths}",
                "wrong shape",
            )
        self.rows = list(range(next(iter(lengths.values()), 0)))

    def read(self, row: int) -> dict:
        item = {}
        for name, arr in self.arrays.items():
            value = arr[row]
            m = self.modalities[name]
            try:
                if value.dtype.kind in "US":
                    item[name] = m.read_inline(str(value))
                else:
                    item[name] = m.read_array(torch.from_numpy(np.array(value)), one=True)
            except ValueError as err:
                raise DataError(
                    f"{self.where}, sample {row}, modality '{name}': {err}", problem_kind(err)
                ) from err
        return item

    def label_names(self, name: str) -> set[str]:
        arr = self.arrays.get(name)
        return set() if arr is None else {str(v) for v in np.asarray(arr)}


class ImageFolderDataset(_Source):
    """``root/CLASS/*.png`` (also .jpg, .jpeg, .webp): the image and label modalities."""

    def __init__(self, root: str | Path, modalities: list[ModalityConfig], fit: str = "crop"):
        super().__init__(modalities)
        self.root, self.fit = Path(root), fit
        self.where = f"image folder '{self.root}'"
        kinds = {m.kind: m.name for m in modalities}
        if "image" not in kinds or "label" not in kinds:
            raise DataError(
                f"{self.where}: an image folder needs an image and a label modality, "
                f"the config has {sorted(kinds)}"
            )
        self.image_name, self.label_name = kinds["image"], kinds["label"]
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.where}: no such folder")
        self.files = [
            (p, d.name)
            for d in sorted(x for x in self.root.iterdir() if x.is_dir())
            for p in sorted(d.iterdir())
            if p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        self.rows = list(range(len(self.files)))

    def read(self, row: int) -> dict:
        path, label = self.files[row]
        image = self.modalities[self.image_name]
        try:
            value = image.read_file(path, path.suffix.lower(), self.fit, None)
        except ValueError as err:
            raise DataError(f"{self.where}, file '{path}': {err}", problem_kind(err)) from err
        return {self.image_name: value, self.label_name: label}

    def label_names(self, name: str) -> set[str]:
        return {label for _, label in self.files} if name == self.label_name else set()


@dataclass
class ScanReport:
    """What ``scan`` found: good rows, and every problem (message per row) by kind."""

    good: list[int] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(kind for kind, _ in self.problems))


def scan(dataset: _Source, progress: Callable[[int], None] | None = None) -> ScanReport:
    """Read every row of ``dataset`` once; collect the good rows and every problem."""
    report = ScanReport()
    for row in range(len(dataset.rows)):
        try:
            item = dataset.read(dataset.rows[row])
        except (ValueError, FileNotFoundError) as err:
            report.problems.append((problem_kind(err), str(err)))
            continue
        if not item:
            report.problems.append(("empty row", f"{dataset.where}, row {row + 1}: no values"))
            continue
        report.good.append(dataset.rows[row])
    return report


def fill_label_classes(modalities: list[ModalityConfig], dataset) -> list[str]:
    """Give label modalities declared without classes the names found in the data, sorted
    (integers by value). An integer in the data then means the class of that name, so ids and
    names agree (``modalities.label``). The names live in the run's config and the checkpoint.
    Returns the names of the modalities that were filled."""
    filled = []
    for cfg in modalities:
        if cfg.kind != "label" or cfg.classes or cfg.num_classes:
            continue
        names = sorted(dataset.label_names(cfg.name), key=_natural)
        if len(names) < 2:
            raise DataError(
                f"{dataset.where}: label modality '{cfg.name}' has no classes declared and the "
                f"data names {len(names)} ({names}); declare classes or give at least 2",
                "unknown label",
            )
        cfg.classes, cfg.num_classes = tuple(names), len(names)
        filled.append(cfg.name)
    return filled


def _natural(name: str):
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def fill_vector_stats(modalities: list[ModalityConfig], dataset) -> list[str]:
    """Store mean and std (per feature, over the training data) on vector modalities that ask
    to be standardised and have none yet. Returns the names filled."""
    want = [c for c in modalities if c.kind == "vector" and c.standardize and not c.mean]
    if not want:
        return []
    values: dict[str, list] = {c.name: [] for c in want}
    items = (
        iter(dataset) if not hasattr(dataset, "rows") else (dataset[i] for i in range(len(dataset)))
    )
    for item in items:
        for name, seen in values.items():
            if name in item:
                seen.append(torch.as_tensor(item[name], dtype=torch.float64))
    for cfg in want:
        if len(values[cfg.name]) < 2:
            raise DataError(
                f"{dataset.where}: vector '{cfg.name}' has standardize on but "
                f"{len(values[cfg.name])} values in the data; need at least 2"
            )
        x = torch.stack(values[cfg.name])  # (N, D)
        cfg.mean = tuple(x.mean(0).tolist())
        cfg.std = tuple(x.std(0).clamp(min=1e-6).tolist())
    return [c.name for c in want]
