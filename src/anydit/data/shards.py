"""WebDataset-style tar shards: ``pack`` a manifest into them, stream them in training.

A shard ``shard-000000.tar`` holds, per sample ``KEY`` (8 digits), one member per modality it
has: ``KEY.NAME.EXT`` with a media file's bytes (``.png``, ``.wav``, ``.npy``, ...), or an
inline value as ``KEY.NAME.txt`` (a string) or ``KEY.NAME.json`` (numbers, lists). Cells are
classified by the manifest reader's own rule (``Modality.names_file``), so packing and reading
the manifest directly give the same samples. Members are data, never paths. An index
``shards.json`` lists the shards (names inside the folder) and their sample counts; counts are
checked against what each shard holds as it is read.

Streaming reads one shard at a time, member by member into memory (each member's declared size
is checked first; nothing is extracted to disk), so a dataset never has to fit in memory or on
local disk at once. Shards are split across ranks (``shards[rank::world]`` of an order shuffled
per epoch) and then across each rank's DataLoader workers: no sample is read twice, none lost.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import torch
from torch.utils.data import IterableDataset

from anydit.config import ModalityConfig
from anydit.data.own import ID_COLUMNS, is_missing, path_resolver, read_table
from anydit.errors import DataError, Failed, problem_kind
from anydit.modalities import build_modalities
from anydit.modalities.base import MAX_FILE_BYTES, file_bytes

INDEX = "shards.json"
MAX_SAMPLE_BYTES = 4 * MAX_FILE_BYTES  # all members of one sample together


def pack(
    manifest: str | Path,
    out_dir: str | Path,
    modalities: list[ModalityConfig],
    shard_size: int = 1000,
    root: str | Path | None = None,
    allow_outside: bool = False,
) -> list[Path]:
    """Write the rows of ``manifest`` (JSONL, CSV or Parquet) into tar shards in ``out_dir``.

    A cell the manifest reader would read as a file (``Modality.names_file``; under the
    manifest's folder or ``root`` unless ``allow_outside``) is stored as that file's bytes; any
    other cell is stored inline. Missing cells are left out (the modality is absent); a column
    that names no modality is an error. Returns the shard paths.
    """
    mods = build_modalities(modalities)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"data pack: shard size must be an integer >= 1, got {shard_size!r}")
    manifest = Path(manifest)
    rows = read_table(manifest)
    if not rows:
        raise DataError(f"manifest '{manifest}': no rows to pack", "empty dataset")
    resolve = path_resolver(manifest.parent, Path(root) if root else None, allow_outside)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, counts = [], []
    for start in range(0, len(rows), shard_size):
        path = out / f"shard-{len(shards):06d}.tar"
        chunk = rows[start : start + shard_size]
        with tarfile.open(path, "w") as tar:
            for i, row in enumerate(chunk, start):
                for name, value in row.items():
                    if name in ID_COLUMNS or is_missing(value):
                        continue
                    if name not in mods:
                        raise DataError(
                            f"manifest '{manifest}', row {i + 1}: column {name!r} matches no "
                            f"modality; the modalities are {sorted(mods)}",
                            "unknown column",
                        )
                    try:
                        member, data = _member(mods[name], resolve, f"{i:08d}", name, value)
                    except (ValueError, FileNotFoundError) as err:
                        raise DataError(
                            f"manifest '{manifest}', row {i + 1}, column '{name}': {err}",
                            problem_kind(err),
                        ) from err
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(path)
        counts.append(len(chunk))
    index = {"shards": [p.name for p in shards], "counts": counts}
    (out / INDEX).write_text(json.dumps(index, indent=2))
    return shards


def _member(m, resolve, key: str, name: str, value) -> tuple[str, bytes]:
    if m.names_file(value):
        path = resolve(value)
        return f"{key}.{name}{path.suffix.lower()}", file_bytes(path, f"file '{value}'")
    if isinstance(value, str):
        return f"{key}.{name}.txt", value.encode("utf-8")
    return f"{key}.{name}.json", json.dumps(value).encode("utf-8")


def read_index(root: Path) -> tuple[list[Path], dict[str, int]]:
    """The shards listed in ``root/shards.json`` and their sample counts, checked: names of
    files inside ``root``, one count (an integer >= 0) per shard."""
    where = f"shards '{root}'"
    index_path = root / INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"{where}: no {INDEX} (write shards with anydit data pack)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{index_path}: not valid JSON ({err})", "unreadable file") from None
    names, counts = (
        index.get(k) if isinstance(index, dict) else None for k in ("shards", "counts")
    )
    if not isinstance(names, list) or not isinstance(counts, list) or len(names) != len(counts):
        raise DataError(
            f"{index_path}: expected 'shards' (file names) and 'counts' (one per shard) lists",
            "unreadable file",
        )
    for name, count in zip(names, counts, strict=True):
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise DataError(
                f"{index_path}: shard {name!r} is not a file name inside {root} (paths are "
                "refused)",
                "file outside the data folder",
            )
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise DataError(
                f"{index_path}: count of '{name}' must be an integer >= 0, got {count!r}"
            )
    return [root / n for n in names], dict(zip(names, counts, strict=True))


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
        self.root = Path(path)
        self.where = f"shards '{self.root}'"
        self.shards, self.counts = read_index(self.root)
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
        """Batches every rank can fill this epoch by the index's counts (the smallest rank's
        share decides); the stream may end sooner if samples are skipped."""
        least = min(sum(self.counts[p.name] for p in self.shards_of(r)) for r in range(self.world))
        return least // local_batch

    def label_names(self, name: str) -> set[str]:
        names = set()
        for shard in self.shards:
            for files in self._samples(shard):
                if name in files:
                    data, ext = files[name]
                    if ext in (".txt", ".json"):
                        text = data.decode("utf-8", errors="replace")
                        names.add(str(json.loads(text) if ext == ".json" else text).strip())
        return names

    def __iter__(self):
        mine = self.shards_of(self.rank)
        info = torch.utils.data.get_worker_info()
        if info is None:
            for shard in mine:
                yield from self._read_shard(shard)
            return
        try:  # in a loader worker: a bad shard travels to the training process as one line
            for shard in mine[info.id :: info.num_workers]:
                yield from self._read_shard(shard)
        except (ValueError, FileNotFoundError) as err:
            yield Failed(err)

    def _samples(self, shard: Path):
        """{modality: (bytes, extension)} per sample of one shard, one sample in memory at a
        time (a sample's members are together, as ``pack`` writes them); the sample count is
        checked against the index at the end of the shard."""
        seen: set[str] = set()
        try:
            with tarfile.open(shard) as tar:
                key, files, size = None, {}, 0
                for member in tar:
                    k, name, ext = _split(member.name, shard)
                    if not member.isfile():
                        raise DataError(
                            f"shard '{shard}': member '{member.name}' is not a file",
                            "unreadable file",
                        )
                    if k != key:
                        if key is not None:
                            yield files | {"__key__": key}
                        if k in seen:
                            raise DataError(
                                f"shard '{shard}': the members of sample {k} are not together "
                                "(write shards with anydit data pack)",
                                "unreadable file",
                            )
                        seen.add(k)
                        key, files, size = k, {}, 0
                    size += member.size
                    if member.size > MAX_FILE_BYTES or size > MAX_SAMPLE_BYTES:
                        raise DataError(
                            f"shard '{shard}': sample {k} is too large at member '{member.name}' "
                            f"({member.size} bytes; at most {MAX_FILE_BYTES} a member and "
                            f"{MAX_SAMPLE_BYTES} a sample)",
                            "too large",
                        )
                    files[name] = (tar.extractfile(member).read(), ext)
                if key is not None:
                    yield files | {"__key__": key}
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(
                f"shard '{shard}': not a readable tar ({err})", "unreadable file"
            ) from None
        expected = self.counts[shard.name]
        if len(seen) != expected:
            raise DataError(
                f"{self.where}: {INDEX} says shard '{shard.name}' holds {expected} samples, it "
                f"holds {len(seen)}; rewrite the index (anydit data pack)",
                "index does not match",
            )

    def _read_shard(self, shard: Path):
        for files in self._samples(shard):
            key = files.pop("__key__")
            try:
                yield self._item(files)
            except (ValueError, FileNotFoundError) as err:
                message = f"{self.where}, shard '{shard.name}', sample {key}: {err}"
                kind = problem_kind(err)
                if self.on_error != "skip":
                    raise DataError(message, kind) from None
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                print(f"data: skipped: {message}")

    def _item(self, files: dict[str, tuple[bytes, str]]) -> dict:
        item = {}
        for name, (data, ext) in files.items():
            m = self.modalities.get(name)
            if m is None:
                raise DataError(
                    f"member '{name}{ext}' matches no modality "
                    f"(modalities: {sorted(self.modalities)})",
                    "unknown column",
                )
            item[name] = m.read_member(data, ext, self.fit)
        return item


def _split(member: str, shard: Path) -> tuple[str, str, str]:
    """``KEY.NAME.EXT`` -> (key, name, ext)."""
    parts = member.split(".")
    if len(parts) != 3 or not all(parts) or "/" in member:
        raise DataError(
            f"shard '{shard}': member '{member}' is not named KEY.MODALITY.EXT",
            "unreadable file",
        )
    return parts[0], parts[1], "." + parts[2].lower()


def stream_batches(stream: ShardStream, local_batch: int, collate, workers: int, start: int):
    """This rank's batches this epoch from batch ``start`` on, collated, until the stream ends
    (the first ``start`` are read and dropped: that is how a resumed run finds its place).
    Workers read and decode samples; batches are formed here, so with any number of workers a
    stream of N samples gives N // local_batch batches."""
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, collate_fn=_identity
    )
    items, index = [], 0
    for item in loader:
        if isinstance(item, Failed):
            item.raise_()
        items.append(item)
        if len(items) == local_batch:
            if index >= start:
                yield collate(items)
            items, index = [], index + 1


def _identity(item):
    return item
