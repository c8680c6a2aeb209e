"""WebDataset-style tar shards: ``pack`` a manifest into them, stream them in training.

A shard ``shard-000000.tar`` holds, per sample ``KEY`` (8 digits), one member per modality it
has: ``KEY.NAME.EXT`` with the original file's bytes (``.png``, ``.wav``, ``.npy``, ...), or an
inline value as ``KEY.NAME.txt`` (a string) or ``KEY.NAME.json`` (numbers, lists). An index
``shards.json`` lists the shards and their sample counts.

Streaming reads one shard at a time (extracted to a temporary folder, then read through the
same readers as a manifest), so a dataset never has to fit in memory or on local disk at once.
Shards are split across ranks (``shards[rank::world]`` of an order shuffled per epoch) and then
across each rank's DataLoader workers: no sample is read twice, none is lost.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

import torch
from torch.utils.data import IterableDataset

from anydit.config import ModalityConfig
from anydit.data.own import ID_COLUMNS, DataError, _is_missing, _read_cell, problem_kind, read_table

INDEX = "shards.json"


def pack(manifest: str | Path, out_dir: str | Path, shard_size: int = 1000) -> list[Path]:
    """Write the rows of ``manifest`` (JSONL, CSV or Parquet) into tar shards in ``out_dir``.

    A cell naming an existing file (relative to the manifest) is stored as that file's bytes;
    any other cell is stored inline. Missing cells are left out (the modality is absent).
    Returns the shard paths.
    """
    if shard_size < 1:
        raise ValueError(f"data pack: shard size must be >= 1, got {shard_size}")
    manifest = Path(manifest)
    rows = read_table(manifest)
    if not rows:
        raise DataError(f"manifest '{manifest}': no rows to pack", "empty dataset")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, counts = [], []
    for start in range(0, len(rows), shard_size):
        path = out / f"shard-{len(shards):06d}.tar"
        chunk = rows[start : start + shard_size]
        with tarfile.open(path, "w") as tar:
            for i, row in enumerate(chunk, start):
                for name, value in row.items():
                    if name in ID_COLUMNS or _is_missing(value):
                        continue
                    member, data = _member(manifest.parent, f"{i:08d}", name, value)
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(path)
        counts.append(len(chunk))
    index = {"shards": [p.name for p in shards], "counts": counts, "manifest": str(manifest)}
    (out / INDEX).write_text(json.dumps(index, indent=2))
    return shards


def _member(base: Path, key: str, name: str, value) -> tuple[str, bytes]:
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else base / value
        if path.suffix and path.is_file():
            return f"{key}.{name}{path.suffix.lower()}", path.read_bytes()
        return f"{key}.{name}.txt", value.encode("utf-8")
    return f"{key}.{name}.json", json.dumps(value).encode("utf-8")


class ShardStream(IterableDataset):
    """Items ``{modality: raw value}`` streamed from the shards listed in ``DIR/shards.json``.

    Call ``set_epoch`` before iterating: the shard order is shuffled from (seed, epoch), so every
    rank agrees on it without talking. Errors name the shard and the sample key.
    """

    def __init__(
        self,
        path: str | Path,
        modalities: list[ModalityConfig],
        fit: str = "crop",
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        on_error: str = "error",
    ):
        from anydit.modalities import build_modalities

        self.root = Path(path)
        self.where = f"shards '{self.root}'"
        index_path = self.root / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{self.where}: no {INDEX} (write shards with anydit data pack)"
            )
        index = json.loads(index_path.read_text())
        self.shards = [self.root / s for s in index["shards"]]
        self.counts = dict(zip(index["shards"], index["counts"], strict=True))
        self.modalities = build_modalities(modalities)
        self.fit, self.rank, self.world, self.seed = fit, rank, world, seed
        self.on_error, self.epoch = on_error, 0
        self.skipped: dict[str, int] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_of(self, rank: int) -> list[Path]:
        """The shards rank ``rank`` reads this epoch."""
        order = list(self.shards)
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order[rank :: self.world]

    def batches_per_epoch(self, local_batch: int) -> int:
        """Batches every rank can fill this epoch (the smallest rank's share decides)."""
        least = min(sum(self.counts[p.name] for p in self.shards_of(r)) for r in range(self.world))
        return least // local_batch

    def label_names(self, name: str) -> set[str]:
        names = set()
        for shard in self.shards:
            for item in self._read_shard(shard, raw_labels=name):
                if name in item:
                    names.add(str(item[name]))
        return names

    def __iter__(self):
        mine = self.shards_of(self.rank)
        info = torch.utils.data.get_worker_info()
        if info is not None:
            mine = mine[info.id :: info.num_workers]
        for shard in mine:
            yield from self._read_shard(shard)

    def _read_shard(self, shard: Path, raw_labels: str | None = None):
        tmp = Path(tempfile.mkdtemp(prefix="anydit-shard-"))
        try:
            try:
                with tarfile.open(shard) as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError) as err:
                message = f"shard '{shard}': not a readable tar ({err})"
                raise DataError(message, "unreadable file") from None
            samples: dict[str, dict[str, Path]] = {}
            for f in sorted(tmp.iterdir()):
                key, name, *_ = f.name.split(".")
                samples.setdefault(key, {})[name] = f
            for key, files in samples.items():
                if raw_labels is not None:  # only the label values: building a vocabulary
                    f = files.get(raw_labels)
                    yield {} if f is None else {raw_labels: _inline(f)}
                    continue
                try:
                    yield self._item(files, tmp)
                except (ValueError, FileNotFoundError) as err:
                    message = f"{self.where}, shard '{shard.name}', sample {key}: " + str(
                        err
                    ).replace(str(tmp), str(shard))
                    kind = problem_kind(err)
                    if self.on_error != "skip":
                        raise DataError(message, kind) from None
                    self.skipped[kind] = self.skipped.get(kind, 0) + 1
                    print(f"data: skipped: {message}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _item(self, files: dict[str, Path], base: Path) -> dict:
        item = {}
        for name, f in files.items():
            m = self.modalities.get(name)
            if m is None:
                known = sorted(self.modalities)
                raise DataError(
                    f"member '{f.name}' matches no modality (modalities: {known})",
                    "unknown column",
                )
            value = _inline(f) if f.suffix in (".txt", ".json") and m.cfg.kind != "text" else None
            if f.suffix == ".txt" and m.cfg.kind == "text":
                value = f.read_text(encoding="utf-8")
            item[name] = _read_cell(m, f.name if value is None else value, base, self.fit)
        return item


def _inline(f: Path):
    text = f.read_text(encoding="utf-8")
    return json.loads(text) if f.suffix == ".json" else text


def stream_batches(
    stream: ShardStream, local_batch: int, collate, workers: int, start: int, stop: int
):
    """Batches ``start .. stop - 1`` of this rank's stream this epoch, collated (the first
    ``start`` are read and dropped: that is how a resumed run finds its place)."""
    loader = torch.utils.data.DataLoader(
        stream, batch_size=local_batch, collate_fn=collate, num_workers=workers, drop_last=True
    )
    for i, batch in enumerate(loader):
        if i >= stop:
            break
        if i >= start:
            yield batch
