"""Latent image codecs: a diffusers autoencoder (AutoencoderKL and kin) from a local folder.

An image modality with ``codec: vae`` and ``codec_path: FOLDER`` holds latents (C, h, w): image
files are read at (h f, w f) pixels (f = the autoencoder's downsampling factor), encoded, and
normalised with the autoencoder's own config, ``(z - shift_factor) * scaling_factor`` (what
SD3 and Flux pipelines do); samples are decoded back to pixels when written. The latent is the
mode of the encoder's distribution, so encoding is deterministic. Encoding once for a whole
dataset: ``anydit data encode`` (see ``encode_dataset``).

diffusers is needed only here (``pip install anydit[vae]``); the folder is read offline.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor


class LatentCodec:
    """Pixels (b, 3, H, W) in [-1, 1] <-> normalised latents (b, C, H / f, W / f)."""

    def __init__(self, folder: str | Path):
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ImportError("codec 'vae' needs diffusers: pip install 'anydit[vae]'") from None
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"codec_path '{folder}': expected a diffusers autoencoder folder with config.json"
            )
        self.vae = AutoencoderKL.from_pretrained(
            str(folder), local_files_only=True, low_cpu_mem_usage=False
        ).eval()
        self.vae.requires_grad_(False)
        cfg = self.vae.config
        self.scale = float(cfg.scaling_factor)
        self.shift = float(cfg.shift_factor or 0.0)
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.channels = int(cfg.latent_channels)
        self.folder = folder

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """(b, 3, H, W) in [-1, 1] -> (b, C, H / f, W / f) normalised latents."""
        z = self.vae.encode(pixels.float()).latent_dist.mode()
        return (z - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents (b, C, h, w) -> pixels (b, 3, h f, w f) in [-1, 1]."""
        x = self.vae.decode(latents.float() / self.scale + self.shift).sample
        return x.clamp(-1, 1)

    def pixel_shape(self, latent_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
        """The (3, H, W) pixel shape of a modality of latent ``shape`` (C, h, w)."""
        c, h, w = latent_shape
        if c != self.channels:
            raise ValueError(
                f"modality '{name}': shape has {c} channels but the autoencoder in "
                f"'{self.folder}' makes {self.channels}-channel latents"
            )
        return (3, h * self.factor, w * self.factor)


@lru_cache(maxsize=4)
def codec_at(folder: str) -> LatentCodec:
    """One loaded autoencoder per folder (per process)."""
    return LatentCodec(folder)


def encode_dataset(dataset, modalities, out: str | Path, log=print) -> Path:
    """Read every sample of ``dataset`` once and write it as an arrays folder (``NAME.npy``
    per modality; ``data.source: arrays``), so training never runs the encoder. Image files of
    ``codec: vae`` modalities are stored as latents; text and label names as strings."""
    import numpy as np

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
