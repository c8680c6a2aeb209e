"""Users' own data: array files, manifests (JSONL, CSV, Parquet) and image folders.

Every source yields items ``{modality: raw value}`` holding only the modalities a sample has:
a modality missing from an item is dropped for that sample during training (partial pairing).
Values are read and checked when an item is fetched, through the same readers as
``anydit sample --given`` (``anydit.data.files``), so an error names the file, the row and the
modality. ``scan`` reads everything once and collects every problem (``anydit data check``, and
the ``skip`` policy).

    arrays    a ``.npz`` with one key per modality, or a folder of ``NAME.npy`` files;
              leading dimension = samples
    manifest  one row per sample, one column per modality: a file path (relative to the
              manifest) or an inline value (label name or id, text, numbers for a vector)
    folder    ``root/CLASS/*.png|jpg|webp`` -> the image modality + the label modality
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from anydit.config import ModalityConfig
from anydit.data.files import IMAGE_EXTENSIONS, read_image_for, read_value

ID_COLUMNS = ("key", "id")  # manifest columns that name a sample and are not read


class DataError(ValueError):
    """A problem with one sample or one file; ``kind`` groups problems in reports."""

    def __init__(self, message: str, kind: str = "invalid value"):
        super().__init__(message)
        self.kind = kind


def problem_kind(err: Exception) -> str:
    """A short category for a reading error: the rows of ``anydit data check``'s counts."""
    if isinstance(err, DataError):
        return err.kind
    if isinstance(err, FileNotFoundError):
        return "missing file"
    text = str(err)
    for needle, kind in (
        ("NaN or inf", "not finite"),
        ("unknown label", "unknown label"),
        ("more than the maximum length", "over-long text"),
        ("cannot read", "unreadable file"),
        ("not a readable", "unreadable file"),
        ("holds no samples", "unreadable file"),
        ("expected shape", "wrong shape"),
        ("pixels", "wrong shape"),
        ("channels", "wrong shape"),
    ):
        if needle in text:
            return kind
    return "invalid value"


def _is_missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


class _Source(Dataset):
    """Common parts: the modalities, the item reader, and the list of kept rows."""

    where: str

    def __init__(self, modalities: list[ModalityConfig]):
        from anydit.modalities import build_modalities

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


def _read_cell(modality, value, base: Path, fit: str):
    """One manifest cell -> a raw value ``prepare`` accepts (a file is read and checked)."""
    cfg = modality.cfg
    if cfg.kind == "label":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise DataError(f"expected a label name or an integer id, got {value!r}")
        if cfg.num_classes:  # declared (or already filled from the data): check it now
            modality.prepare(value)
        return value
    if cfg.kind == "text":
        if not isinstance(value, str):
            raise DataError(f"expected a string, got {value!r}")
        length = len(modality.tokenizer.encode(value))
        if length > cfg.shape[0]:
            raise DataError(
                f"text has {length} tokens, more than the maximum length {cfg.shape[0]}: "
                f"{value[:40]!r}",
                "over-long text",
            )
        return value
    if isinstance(value, list):  # inline numbers: a vector, or any small tensor
        try:
            x = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise DataError(f"expected numbers, got {value!r} ({err})") from None
        modality.prepare(x)
        return x
    if not isinstance(value, str):
        raise DataError(f"expected a file path or a list of numbers, got {value!r}")
    if cfg.kind == "vector" and _numbers(value):
        x = read_value(modality, value)  # "0.5, 1, 2": comma-separated numbers
    else:
        path = Path(value)
        path = path if path.is_absolute() else base / path
        if path.suffix.lower() in IMAGE_EXTENSIONS and cfg.kind == "image":
            if not path.is_file():
                raise FileNotFoundError(f"file '{path}' does not exist")
            return read_image_for(cfg, path, fit)
        x = read_value(modality, str(path))
    modality.prepare(x)
    return x


def _numbers(text: str) -> bool:
    try:
        [float(v) for v in text.split(",")]
    except ValueError:
        return False
    return True


class ManifestDataset(_Source):
    """Rows of a JSONL, CSV or Parquet manifest; paths are relative to the manifest's folder."""

    def __init__(self, path: str | Path, modalities: list[ModalityConfig], fit: str = "crop"):
        super().__init__(modalities)
        self.path, self.fit = Path(path), fit
        self.where = f"manifest '{self.path}'"
        self.table = read_table(self.path)
        columns: set[str] = set()
        for row in self.table:
            columns |= set(row)
        unknown = sorted(columns - set(self.modalities) - set(ID_COLUMNS))
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
            if name in ID_COLUMNS or _is_missing(value):
                continue
            try:
                item[name] = _read_cell(self.modalities[name], value, self.path.parent, self.fit)
            except (ValueError, FileNotFoundError) as err:
                kind = problem_kind(err)
                raise DataError(
                    f"{self.where}, row {row + 1}, column '{name}': {err}", kind
                ) from err
        return item

    def label_names(self, name: str) -> set[str]:
        return {str(r[name]) for r in self.table if not _is_missing(r.get(name))}


def read_table(path: Path) -> list[dict]:
    """A manifest as a list of row dicts (JSONL lines, CSV rows or Parquet rows)."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest '{path}' does not exist")
    ext = path.suffix.lower()
    if ext in (".jsonl", ".ndjson"):
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
    if ext == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(
                f"manifest '{path}': reading Parquet needs pyarrow (pip install pyarrow)"
            ) from None
        return pq.read_table(path).to_pylist()
    raise DataError(f"manifest '{path}': expected a .jsonl, .csv or .parquet file, got '{ext}'")


class ArraysDataset(_Source):
    """A ``.npz`` (one key per modality) or a folder of ``NAME.npy``; rows = leading index.

    A modality without an array is absent from every sample (dropped in training).
    """

    def __init__(self, path: str | Path, modalities: list[ModalityConfig]):
        super().__init__(modalities)
        self.path = Path(path)
        self.where = f"arrays '{self.path}'"
        if self.path.is_dir():
            files = {p.stem: p for p in sorted(self.path.glob("*.npy"))}
            self.arrays = {
                k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in files.items()
            }
        elif self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as npz:
                    self.arrays = {k: npz[k] for k in npz.files}
            except (ValueError, OSError) as err:
                raise DataError(
                    f"{self.where}: not a readable .npz ({err})", "unreadable file"
                ) from None
        else:
            raise FileNotFoundError(f"{self.where}: no such file or folder")
        unknown = sorted(set(self.arrays) - set(self.modalities))
        if unknown:
            raise DataError(
                f"{self.where}: array(s) {unknown} match no modality; the modalities are "
                f"{sorted(self.modalities)}",
                "unknown column",
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
                if m.cfg.kind in ("label", "text") and value.dtype.kind in "US":
                    item[name] = str(value)
                    if m.cfg.kind == "text" or m.cfg.num_classes:
                        m.prepare([item[name]])
                else:
                    item[name] = torch.from_numpy(np.array(value))
                    if m.cfg.kind != "label" or m.cfg.num_classes:
                        m.prepare(item[name])
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
        cfg = self.modalities[self.image_name].cfg
        try:
            image = read_image_for(cfg, path, self.fit)
        except ValueError as err:
            raise DataError(f"{self.where}, file '{path}': {err}", problem_kind(err)) from err
        return {self.image_name: image, self.label_name: label}

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


def scan(dataset: _Source) -> ScanReport:
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


def fill_label_classes(modalities: list[ModalityConfig], dataset: _Source) -> list[str]:
    """Give label modalities declared without classes the sorted names found in the data.

    The names then live in the run's config and the checkpoint, so sampling takes them.
    Returns the names of the modalities that were filled.
    """
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
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


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
