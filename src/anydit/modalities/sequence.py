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

ENCODER_ARGS = ("layers", "connector")  # codec 'encoder': hidden states kept, connector depth


class Sequence(Modality):
    """(L, C) -> L/p tokens of p*C features; axis (time). Modalities naming the same
    ``clock`` share the time axis, each at its ``rate`` (tokens per unit of the clock)."""

    kind = "sequence"
    rank = 2
    options = frozenset({"patch", "codec", "codec_args", "codec_path", "clock", "rate"})

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
            cfg.codec in ("", "logmel", "encoder"),
            f"{where}.codec",
            "'', 'logmel' or 'encoder' for a sequence",
            cfg.codec,
        )
        check(
            not cfg.codec_args or cfg.codec in ("logmel", "encoder"),
            f"{where}.codec_args",
            "nothing unless codec is 'logmel' or 'encoder'",
            cfg.codec_args,
        )
        check(
            bool(cfg.codec_path) == (cfg.codec == "encoder"),
            f"{where}.codec_path",
            "a transformers folder for codec 'encoder' (and nothing otherwise)",
            cfg.codec_path,
        )
        if cfg.codec == "encoder":
            args = cfg.codec_args
            check(
                set(args) <= set(ENCODER_ARGS)
                and all(float(v) == int(v) and int(v) >= 1 for v in args.values()),
                f"{where}.codec_args",
                f"integers >= 1 for some of {ENCODER_ARGS}",
                args,
            )
            check(
                not cfg.generate,
                f"{where}.generate",
                "false for codec 'encoder' (its features are a condition only)",
                cfg.generate,
            )
            check(cfg.patch == 1, f"{where}.patch", "1 for codec 'encoder'", cfg.patch)
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
    def free_text(self) -> bool:  # type: ignore[override]
        """An encoder's values are texts, which may contain '/'."""
        return self.cfg.codec == "encoder"

    @property
    def encoder(self):
        """The loaded text encoder of a ``codec: encoder`` sequence, else None."""
        if self.cfg.codec != "encoder":
            return None
        from anydit.encoders.text import encoder_at

        enc = encoder_at(self.cfg.codec_path, self.encoder_layers)
        if enc.width != self.shape[1]:
            raise ValueError(
                f"modality '{self.name}': shape has {self.shape[1]} channels but the encoder in "
                f"'{self.cfg.codec_path}' gives {enc.width} ({self.encoder_layers} layer(s))"
            )
        return enc

    @property
    def encoder_layers(self) -> int:
        """K: the encoder's last hidden states kept (``codec_args.layers``, default 1)."""
        return int(self.cfg.codec_args.get("layers", 1))

    def encode_texts(self, texts: list[str]) -> Tensor:
        """Texts -> features (b, L, C) through the encoder."""
        return self.encoder.encode(texts, self.shape[0])

    def prepare(self, value, n: int | None = None) -> Tensor:
        """Texts (a string or a list of strings) are encoded first (``codec: encoder``)."""
        if self.cfg.codec == "encoder":
            if isinstance(value, str):
                value = self.encode_texts([value])[0]  # one sample
            elif isinstance(value, list | tuple) and value and isinstance(value[0], str):
                value = self.encode_texts(list(value))  # a batch
        return super().prepare(value, n)

    def collate(self, values: list) -> Tensor:
        """Texts (a built-in dataset's captions) are encoded as a batch (``codec: encoder``)."""
        if self.cfg.codec == "encoder" and values and isinstance(values[0], str):
            return self.prepare(list(values))
        return super().collate(values)

    def names_file(self, value) -> bool:
        """An encoder's cell is its text, unless it names stored features (``.npy``)."""
        if self.cfg.codec == "encoder":
            return isinstance(value, str) and value.lower().endswith(".npy")
        return super().names_file(value)

    def read_inline(self, value):
        if self.cfg.codec == "encoder" and isinstance(value, str):
            return self.encode_texts([value])[0]
        return super().read_inline(value)

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
