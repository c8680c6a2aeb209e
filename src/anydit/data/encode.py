"""``anydit data encode``: read a dataset once into an arrays folder, so training never runs a
codec (VAE latents are stored instead of image files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def encode_dataset(dataset, modalities, out: str | Path, log=print) -> Path:
    """Read every sample of ``dataset`` once and write it as an arrays folder (``NAME.npy``
    per modality; ``data.source: arrays``). Image files of ``codec: vae`` modalities are stored
    as latents; text and label names as strings."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list] = {m.name: [] for m in modalities}
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        items = (dataset[i] for i in range(len(dataset)))
    else:  # streamed shards
        items = iter(dataset)
    for i, item in enumerate(items):
        lacking = sorted(set(columns) - set(item))
        if lacking:
            raise ValueError(
                f"sample {i} lacks modalities {lacking}; an arrays folder needs every "
                "modality in every sample"
            )
        for name in columns:
            columns[name].append(item[name])
        if log and (i + 1) % 1000 == 0:
            log(f"encode: {i + 1} samples")
    if not columns or not next(iter(columns.values())):
        raise ValueError("encode: the dataset has no samples")
    for name, values in columns.items():
        if isinstance(values[0], str):
            arr = np.array(values)
        else:
            arr = torch.stack([torch.as_tensor(v) for v in values]).numpy()
        np.save(out / f"{name}.npy", arr)
    return out
