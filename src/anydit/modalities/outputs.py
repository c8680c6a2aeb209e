"""The results of ``anydit.sample`` as files people can open, one writer per kind."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but takes any key (a modality may be called ``file``)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def _to_numpy(x: Tensor) -> np.ndarray:
    x = x.detach().cpu()
    if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.numpy()


def write_outputs(
    out_dir: str | Path, modalities: dict, samples: dict[str, Tensor], prefix: str = ""
) -> dict[str, list[str]]:
    """Write sampled raw values (name -> (N, *shape)) as files.

    image -> ``NAME_00000.png`` per sample (upscaled; 8x for images up to 32 px) and
    ``NAME_grid.png``; log-mel sequence -> ``NAME_00000.wav`` per sample and a spectrogram
    ``NAME_grid.png``; video -> a PNG strip per sample; label -> ``NAME.jsonl`` (index, id,
    name); text -> ``NAME.jsonl`` (index, text); vectors and other sequences -> only the
    arrays. Always ``samples.npz`` with every modality as a raw (N, *shape) array. Every file
    name starts with ``prefix``.

    Returns:
        {modality: [paths]} and ``"samples.npz": [path]``.

    Raises:
        ValueError: a sample names a modality that is not among ``modalities``.
        OSError: the folder cannot be created or written (the message names it).
    """
    unknown = sorted(set(samples) - set(modalities))
    if unknown:
        raise ValueError(f"samples name unknown modalities {unknown}; expected {list(modalities)}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        npz = out / f"{prefix}samples.npz"
        save_npz(npz, {k: _to_numpy(v) for k, v in samples.items()})
        written = {
            name: modalities[name].write(out, f"{prefix}{name}", x.detach().cpu())
            for name, x in samples.items()
        }
    except OSError as err:
        raise type(err)(f"cannot write outputs to folder '{out}': {err.strerror or err}") from err
    written["samples.npz"] = [str(npz)]
    return written
