"""Latent image codecs: a diffusers autoencoder (AutoencoderKL and kin) from a local folder.

An image modality with ``codec: vae`` and ``codec_path: FOLDER`` holds latents (C, h, w): image
files are read at (h f, w f) pixels (f = the autoencoder's downsampling factor), encoded, and
normalised with the autoencoder's own config, ``(z - shift_factor) * scaling_factor`` (what
SD3 and Flux pipelines do); samples are decoded back to pixels when written. The latent is the
mode of the encoder's distribution, so encoding is deterministic. Encoding once for a whole
dataset: ``anydit data encode``.

diffusers is needed only here (``pip install anydit[vae]``); the folder is read offline and
only from safetensors: a folder with pickled (``.bin``) weights alone is refused.
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
        if not any(folder.glob("*.safetensors")):
            found = sorted(p.name for p in folder.iterdir() if p.is_file())
            raise ValueError(
                f"codec_path '{folder}': expected the autoencoder's weights as .safetensors "
                f"(pickled .bin weights are never read), found {found}"
            )
        self.vae = AutoencoderKL.from_pretrained(
            str(folder), local_files_only=True, low_cpu_mem_usage=False, use_safetensors=True
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
