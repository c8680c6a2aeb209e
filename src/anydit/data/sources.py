"""Datasets by name, the order batches are read in, and the collate function that turns raw
items into model-ready batches."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from anydit.config import BUILT_IN, DataConfig, ModalityConfig
from anydit.errors import DataError, Failed


def build_dataset(cfg: DataConfig, split: str = "train", modalities=None):
    """The dataset a run trains on. Items are dicts {modality: raw value}; a modality missing
    from an item is dropped for that sample. Own data needs the run's ``modalities``."""
    if cfg.source == "digits":
        from anydit.data.digits import DigitsDataset

        return DigitsDataset(split, seed=cfg.seed, augment=cfg.augment and split == "train")
    if cfg.source == "digit-strings":
        from anydit.data.digit_strings import DigitStringsDataset, layout_for

        layout = layout_for(modalities, cfg.strings_lengths)
        size = cfg.strings_clips if split == "train" and cfg.strings_clips else None
        return DigitStringsDataset(split, seed=cfg.seed, layout=layout, size=size)
    if cfg.source == "digit-edits":
        from anydit.data.digit_edits import DigitEditsDataset

        return DigitEditsDataset(
            split, seed=cfg.seed, edit_weights=cfg.edit_weights if split == "train" else ()
        )
    if cfg.source == "digit-layouts":
        from anydit.data.digit_layouts import DigitLayoutsDataset

        return DigitLayoutsDataset(split, seed=cfg.seed)
    from anydit.data import own

    if modalities is None:
        raise ValueError(f"data.source '{cfg.source}' needs the run's modalities")
    if cfg.source == "arrays":
        return own.ArraysDataset(cfg.path, modalities)
    if cfg.source == "manifest":
        return own.ManifestDataset(
            cfg.path, modalities, cfg.image_fit, cfg.root or None, cfg.allow_outside
        )
    if cfg.source == "folder":
        return own.ImageFolderDataset(cfg.path, modalities, cfg.image_fit)
    if cfg.source == "shards":
        from anydit.data.shards import ShardStream

        return ShardStream(
            cfg.path, modalities, cfg.image_fit, seed=cfg.seed, on_error=cfg.on_error
        )
    raise ValueError(f"data.source: unknown source {cfg.source!r}")


def open_training_data(cfg: DataConfig, modalities: list[ModalityConfig], log=print):
    """The training dataset, ready for the loop: label classes filled from the data where
    the config declares none, and (``on_error: skip``) bad samples left out after one read of
    everything, each problem logged once and the totals reported.

    Returns (dataset, {problem kind: count}).
    """
    dataset = build_dataset(cfg, "train", modalities)
    if cfg.source in BUILT_IN:
        return dataset, {}
    from anydit.data import own

    filled = own.fill_label_classes(modalities, dataset)
    if filled:
        dataset = build_dataset(cfg, "train", modalities)  # readers see the filled classes
        for name in filled:
            cls = next(m.classes for m in modalities if m.name == name)
            log(f"data: label '{name}' has {len(cls)} classes from the data: {list(cls)[:10]}")
    counts: dict[str, int] = {}
    if cfg.source == "shards":  # streamed: bad samples are skipped (or not) as they come
        if not sum(dataset.counts.values()):
            raise DataError(f"{dataset.where}: no samples to train on", "empty dataset")
        _standardise(modalities, dataset, log)
        return dataset, dataset.skipped
    if cfg.on_error == "skip":
        report = own.scan(dataset)
        for _, message in report.problems:
            log(f"data: skipped: {message}")
        dataset.rows = report.good
        counts = report.counts
        if counts:
            log(f"data: skipped {len(report.problems)} samples: {counts}")
    if len(dataset) == 0:
        raise DataError(f"{dataset.where}: no samples to train on", "empty dataset")
    _standardise(modalities, dataset, log)
    return dataset, counts


def _standardise(modalities, dataset, log) -> None:
    from anydit.data import own

    for name in own.fill_vector_stats(modalities, dataset):
        log(f"data: vector '{name}' standardised with the training data's mean and std")


def make_collate(modalities) -> Collate:
    """Items -> (batch {modality: (b, *shape)}, present {modality: (b,) bool}): a ``Collate``."""
    return Collate(modalities)


class Collate:
    """Items -> (batch {modality: (b, *shape)}, present {modality: (b,) bool}).

    Each modality collates its own values (text strings are tokenised, label names mapped to
    ids). A modality an item lacks gets a placeholder value and ``present = False`` (the
    objective drops it for that sample); ``present`` only lists modalities that some item lacks.
    A class, not a closure, so that DataLoader workers started by ``spawn`` (macOS, Python
    3.14's default) can take it.
    """

    def __init__(self, modalities):
        self.modalities = modalities

    def __call__(self, items: list[dict]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        batch, present = {}, {}
        for name, m in self.modalities.items():
            have = torch.tensor([name in item for item in items])
            if not have.any():
                batch[name] = m.placeholder(len(items))
                present[name] = have
                continue
            first = next(item[name] for item in items if name in item)
            batch[name] = m.collate([item.get(name, first) for item in items])  # stand-ins
            if not have.all():
                present[name] = have
        return batch, present


class _Catching(torch.utils.data.Dataset):
    """The dataset as a worker reads it: items asked for as (epoch, index), the dataset moved to
    that epoch first (epoch None: left where it is); a sample's error returned (``Failed``) for
    the main process to raise."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int | None, int]):
        epoch, i = key
        if (
            epoch is not None
            and hasattr(self.dataset, "set_epoch")
            and getattr(self.dataset, "epoch", None) != epoch
        ):
            self.dataset.set_epoch(epoch)
        try:
            return self.dataset[i]
        except (ValueError, FileNotFoundError) as err:
            return Failed(err)


class _Rows:
    """A batch sampler of (epoch, index) rows: ``rows`` of ``epoch``, then, with ``rows_of``,
    every later epoch's (``rows_of(e)``), for as long as the loader is read."""

    def __init__(self, epoch: int | None, rows: list[list[int]], rows_of=None):
        self.epoch, self.rows, self.rows_of = epoch, rows, rows_of
        self._later: dict[int, list[list[int]]] = {}  # later epochs' rows, as read

    def later(self, epoch: int) -> list[list[int]]:
        """The rows this sampler gives (or will give) for a later ``epoch``."""
        if epoch not in self._later:
            self._later = {e: r for e, r in self._later.items() if e >= epoch - 1}
            self._later[epoch] = _lists(self.rows_of(epoch))
        return self._later[epoch]

    def __iter__(self):
        yield from ([(self.epoch, i) for i in r] for r in self.rows)
        if self.rows_of is not None:
            for e in itertools.count(self.epoch + 1):
                yield from ([(e, i) for i in r] for r in self.later(e))


def _lists(rows) -> list[list[int]]:
    return [r.tolist() if isinstance(r, Tensor) else list(r) for r in rows]


def _checked(items, collate):
    for item in items:
        if isinstance(item, Failed):
            return item
    return collate(items)


class EpochReader:
    """Reads an indexed dataset's batches, epoch after epoch: ``reader(epoch, rows, start,
    rows_of)`` iterates (batch, present) over ``rows`` (lists of indices: the epoch's batches
    from number ``start`` on) in order, each item as of ``epoch`` (None: the dataset's epoch
    as it stands).

    With ``workers > 0`` DataLoader worker processes read, decode and collate the next batches
    while the model trains. Given ``rows_of`` (epoch -> that epoch's rows), the workers read on
    past the epoch's end into the next ones, and the next call for the following epoch (from
    its start, with the rows ``rows_of`` gave) carries on from them: one set of workers serves
    the whole run, and no epoch starts with an empty pipeline (a small dataset at a large batch
    used to start its workers again every few steps). Each item travels as (epoch, index) and
    a worker's copy of the dataset moves to that epoch (``set_epoch``) before reading it, so the
    items are those of ``workers=0``, and the order (so a resumed run) is the same either way.
    Any other call (another epoch, a part-read one, a resume, other rows) starts the workers
    afresh. Only the iterator of the latest call is read from the workers.
    """

    def __init__(self, dataset, collate, workers: int = 0):
        self.dataset, self.collate, self.workers = dataset, collate, workers
        self._items = None  # the workers' batches, read on across epochs
        self._sampler: _Rows | None = None  # what they read
        self._next = None  # (epoch, start) they are at, once an epoch is read whole

    def __call__(
        self, epoch: int | None, rows: list, start: int = 0, rows_of=None
    ) -> Iterator[tuple[dict[str, Tensor], dict]]:
        rows = _lists(rows)
        if self.workers == 0:
            if epoch is not None and hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            return (self.collate([self.dataset[i] for i in r]) for r in rows)
        carry_on = (
            self._items is not None
            and self._next == (epoch, start)
            and self._sampler.later(epoch) == rows
        )
        if not carry_on:
            more = rows_of if epoch is not None else None
            self._sampler = _Rows(epoch, rows, more)
            loader = torch.utils.data.DataLoader(
                _Catching(self.dataset),
                batch_sampler=self._sampler,
                collate_fn=functools.partial(_checked, collate=self.collate),
                num_workers=self.workers,
            )
            self._items = iter(loader)
        self._next = None
        return self._epoch(self._items, epoch, len(rows), self._sampler.rows_of is not None)

    def _epoch(self, items, epoch: int | None, n: int, more: bool):
        for _ in range(n):
            if items is not self._items:
                raise RuntimeError("EpochReader: a later call took over this epoch's workers")
            out = next(items)
            if isinstance(out, Failed):
                self._items = None
                out.raise_()
            yield out
        if items is self._items:
            if more:
                self._next = (epoch + 1, 0)
            else:
                self._items = None  # nothing was asked past this epoch: let the workers go


def epoch_loader(
    dataset, batches: list[Tensor], collate, workers: int = 0, epoch: int | None = None
):
    """Iterate (batch, present) over ``batches`` (lists of dataset indices) in order: one epoch
    of an ``EpochReader`` (``epoch`` None: the dataset's as it stands)."""
    return EpochReader(dataset, collate, workers)(epoch, batches)


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """The global index batches of one epoch: a permutation from (seed, epoch), the last
    partial batch dropped."""
    if n < batch_size:
        raise ValueError(f"dataset has {n} samples, fewer than train.batch_size = {batch_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def epoch_batches(
    dataset,
    epoch: int,
    start: int,
    rank: int,
    world: int,
    batch_size: int,
    seed: int,
    reader: EpochReader,
) -> tuple[Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]], int]:
    """This rank's (batch, present) pairs of ``epoch`` from batch ``start`` on, and the number of
    batches the epoch has. ``batch_size`` is the global batch; each rank reads its share. A
    streamed dataset's epoch may end sooner than that number (skipped samples): it ends when
    the stream does. ``reader``: an ``EpochReader`` of this dataset (its collate and workers
    serve a stream too), kept across epochs so that its workers read on into the next ones."""
    from anydit.data.shards import ShardStream, stream_batches

    local = batch_size // world
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    if isinstance(dataset, ShardStream):  # streamed: each rank reads its own shards
        dataset.rank, dataset.world = rank, world
        n = dataset.batches_per_epoch(local)
        if n == 0:
            raise ValueError(f"{dataset.where}: too few samples per rank for a batch of {local}")
        return stream_batches(dataset, local, reader.collate, reader.workers, start), n

    def rows_of(e: int) -> list[Tensor]:  # this rank's share of epoch e's batches
        batches = batch_order(size, batch_size, seed, e)
        return [b[rank * local : (rank + 1) * local] for b in batches]

    size = len(dataset)
    mine = rows_of(epoch)
    return reader(epoch, mine[start:], start, rows_of), len(mine)


class RandomBatches:
    """``random_batches`` of a dataset, opened per process: ``RandomBatches(dataset, modalities,
    64)(rank, world)``. It pickles (the dataset and modalities go along), so several local
    processes (``distributed.run_local``) can each read their own share."""

    def __init__(self, dataset, modalities, batch_size: int, seed: int = 0):
        self.dataset, self.modalities = dataset, modalities
        self.batch_size, self.seed = batch_size, seed

    def __call__(self, rank: int = 0, world: int = 1):
        return random_batches(
            self.dataset, self.modalities, self.batch_size, self.seed, rank=rank, world=world
        )


def random_batches(
    dataset, modalities, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1
):
    """An endless iterator of (batch, present) from ``dataset``: epoch after epoch in the order
    of ``batch_order`` (indexed datasets) or as streamed. With ``world`` > 1, this rank's share
    (``batch_size // world`` samples) of each global batch of ``batch_size``."""
    reader = EpochReader(dataset, make_collate(modalities))
    epoch = 0
    while True:
        batches, _ = epoch_batches(dataset, epoch, 0, rank, world, batch_size, seed, reader)
        count = 0
        for item in batches:
            count += 1
            yield item
        if count == 0:
            raise DataError("the data gives no full batch", "empty dataset")
        epoch += 1
