"""Datasets by name, and the collate function that turns raw items into model-ready batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from anydit.config import DataConfig


def build_dataset(cfg: DataConfig, split: str = "train"):
    """The dataset a run trains on. Items are dicts {modality: raw value}."""
    if cfg.source == "digits":
        from anydit.data.digits import DigitsDataset

        return DigitsDataset(split, seed=cfg.seed)
    raise ValueError(f"data.source: unknown source {cfg.source!r}")


def make_collate(model) -> Callable[[list[dict]], dict[str, Tensor]]:
    """Items -> {modality: (b, *shape) tensor}: tensors stacked, text strings tokenised, label
    names mapped to ids. Every item must carry every modality of the model."""
    mods = model.modalities

    def collate(items: list[dict]) -> dict[str, Tensor]:
        batch = {}
        for name, m in mods.items():
            values = []
            for i, item in enumerate(items):
                if name not in item:
                    raise ValueError(
                        f"data: item {i} of the batch has no modality '{name}' (has {sorted(item)})"
                    )
                values.append(item[name])
            if isinstance(values[0], str):
                batch[name] = m.prepare(values)
            else:
                batch[name] = m.prepare(torch.stack([torch.as_tensor(v) for v in values]))
        return batch

    return collate
