"""Sequences (L, C): audio frames, actions, embeddings. With ``codec: logmel`` the frames are
normalised log-mels of audio files (WAV/FLAC/OGG), written back as WAV (Griffin-Lim) plus a
spectrogram picture.

Ein notation: b batch, l tokens along the sequence, p frames inside a token, c channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from anydit.modalities.base import AUDIO_EXTENSIONS, Modality, Source, check
from anydit.modalities.logmel import (
    MelParams,
    logmel_image,
    params_from_args,
    read_logmel,
    write_logmel_wav,
)
from anydit.modalities.pictures import GRID_MAX, display_scale, write_grid


class Sequence(Modality):
    """(L, C) -> L/p tokens of p*C features; axis (time). Modalities naming the same
    ``clock`` share the time axis, each at its ``rate`` (tokens per unit of the clock)."""

    kind = "sequence"
    rank = 2
    options = frozenset({"patch", "codec", "codec_args", "clock", "rate"})

    @classmethod
    def check_kind(cls, cfg, where: str) -> None:
        check(cfg.patch >= 1, f"{where}.patch", "an integer >= 1", cfg.patch)
        check(
            cfg.shape[0] % cfg.patch == 0,
            f"{where}.shape (L)",
            f"a multiple of patch={cfg.patch}",
            cfg.shape[0],
        )
        check(
            cfg.codec in ("", "logmel"),
            f"{where}.codec",
            "'' or 'logmel' for a sequence",
            cfg.codec,
        )
        check(
            not cfg.codec_args or cfg.codec == "logmel",
            f"{where}.codec_args",
            "nothing unless codec is 'logmel'",
            cfg.codec_args,
        )
        if cfg.codec == "logmel":
            try:
                params = params_from_args(cfg.codec_args)
            except ValueError as err:
                check(False, f"{where}.codec_args", str(err).split(": ", 1)[-1], cfg.codec_args)
            check(
                cfg.shape[1] == params.n_mels,
                f"{where}.shape (C)",
                f"n_mels = {params.n_mels} channels for codec 'logmel'",
                cfg.shape[1],
            )

    @property
    def extensions(self) -> tuple[str, ...]:  # type: ignore[override]
        return (".npy", *AUDIO_EXTENSIONS) if self.cfg.codec == "logmel" else (".npy",)

    @property
    def mel(self) -> MelParams:
        """The log-mel parameters (codec 'logmel')."""
        return params_from_args(self.cfg.codec_args)

    @property
    def token_dim(self) -> int:
        return self.shape[1] * self.cfg.patch

    def tokenize(self, x: Tensor) -> Tensor:
        return rearrange(x, "b (l p) c -> b l (p c)", p=self.cfg.patch)

    def detokenize(self, tokens: Tensor) -> Tensor:
        return rearrange(tokens, "b l (p c) -> b (l p) c", p=self.cfg.patch)

    def positions(self) -> Tensor:
        n = self.shape[0] // self.cfg.patch
        pos = torch.zeros(n, 3)
        pos[:, 0] = torch.arange(n, dtype=torch.float32) * self.time_scale
        return pos

    def read_file(self, source: Source, ext: str, fit: str, n: int | None):
        self.check_extension(source, ext)
        if ext == ".npy":
            return self.read_npy(source, n)
        return read_logmel(source, self.mel, tuple(self.shape), self.name)

    def write(self, out: Path, stem: str, x: Tensor) -> list[str]:
        """Log-mels: per-sample WAVs and a spectrogram grid; other sequences: nothing."""
        if self.cfg.codec != "logmel":
            return []
        params, paths = self.mel, []
        for i, mel in enumerate(x):
            paths.append(str(out / f"{stem}_{i:05d}.wav"))
            write_logmel_wav(paths[-1], mel, params, seed=i)
        pictures = logmel_image(x[:GRID_MAX])  # (N, 1, mels, L)
        paths.append(str(out / f"{stem}_grid.png"))
        scale = display_scale(*pictures.shape[-2:], target=128)
        write_grid(paths[-1], pictures, nrow=min(len(pictures), 10), scale=scale)
        return paths
