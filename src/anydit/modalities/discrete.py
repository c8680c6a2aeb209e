"""Discrete kinds: a class label (one token of K classes) and text (a padded token sequence).

Both use absorbing-state masked diffusion: id ``token_dim`` is the mask token (t = 0 is all
masks, t = 1 none). Text pads with an explicit pad id that the model learns to predict, so a
generated text's length is part of what is sampled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from anydit.modalities.base import Modality


class Label(Modality):
    """One categorical token; values are class ids or class names (``cfg.classes``)."""

    discrete = True

    @property
    def token_dim(self) -> int:
        return self.cfg.num_classes

    def tokenize(self, x: Tensor) -> Tensor:
        return x.reshape(-1, 1).long()  # (b,) -> (b, 1)

    def detokenize(self, tokens: Tensor) -> Tensor:
        return tokens.reshape(-1)

    def positions(self) -> Tensor:
        return torch.zeros(1, 3)

    def prepare(self, value, n: int | None = None) -> Tensor:
        if isinstance(value, str):
            value = self.class_id(value)
        elif isinstance(value, list | tuple) and value and isinstance(value[0], str):
            value = [self.class_id(v) for v in value]
        x = self._batch(self._check_dtype(torch.as_tensor(value)), n)
        bad = (x < 0) | (x >= self.cfg.num_classes)
        if bad.any():
            raise ValueError(
                f"modality '{self.name}': expected class ids in [0, {self.cfg.num_classes}), "
                f"got {x[bad].unique()[:5].tolist()}"
            )
        return x

    def class_id(self, value: str) -> int:
        """A class name (or its decimal id as a string) -> its id."""
        if value in self.cfg.classes:
            return self.cfg.classes.index(value)
        if value.lstrip("-").isdigit() and 0 <= int(value) < self.cfg.num_classes:
            return int(value)
        known = list(self.cfg.classes) or f"ids 0..{self.cfg.num_classes - 1}"
        raise ValueError(
            f"modality '{self.name}': unknown label {value!r}; expected one of {known}"
        )

    def decode(self, x: Tensor) -> list:
        ids = x.reshape(-1).tolist()
        return [self.cfg.classes[i] if self.cfg.classes else i for i in ids]


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, pad = 256. Needs no file and covers every string."""

    vocab_size = 257
    pad_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizers` JSON file (the format of Hugging Face tokenizers). Its pad token is used
    when it has one ([PAD], <pad>); otherwise one id past its vocabulary is added as pad."""

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("text tokenizer files need `pip install tokenizers`") from e
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file {path} does not exist (expected a tokenizers JSON)"
            )
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"tokenizer file {path}: not a valid tokenizers JSON ({e})") from None
        self.tok.no_padding()
        self.tok.no_truncation()
        vocab = self.tok.get_vocab_size(with_added_tokens=True)
        pad = next(
            (
                self.tok.token_to_id(t)
                for t in ("[PAD]", "<pad>", "<|pad|>")
                if self.tok.token_to_id(t) is not None
            ),
            None,
        )
        self.pad_id = vocab if pad is None else pad
        self.vocab_size = vocab + (pad is None)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.pad_id and i < self.vocab_size])


class Text(Modality):
    """A sequence of at most L token ids, right-padded; axis (time)."""

    discrete = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tokenizer = ByteTokenizer() if cfg.tokenizer == "bytes" else HFTokenizer(cfg.tokenizer)

    @property
    def token_dim(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    def tokenize(self, x: Tensor) -> Tensor:
        return x.long()  # (b, L) ids are already tokens

    def detokenize(self, tokens: Tensor) -> Tensor:
        return tokens

    def positions(self) -> Tensor:
        pos = torch.zeros(self.shape[0], 3)
        pos[:, 0] = torch.arange(self.shape[0], dtype=torch.float32)
        return pos

    def encode(self, texts: list[str]) -> Tensor:
        """Strings -> (b, L) ids, right-padded. Longer texts are an error naming the sample."""
        max_len = self.shape[0]
        out = torch.full((len(texts), max_len), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(
                    f"modality '{self.name}': sample {i}: expected a string, got {text!r}"
                )
            ids = self.tokenizer.encode(text)
            if len(ids) > max_len:
                raise ValueError(
                    f"modality '{self.name}': sample {i} has {len(ids)} tokens, more than the "
                    f"maximum length {max_len}: {text[:40]!r}"
                )
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def prepare(self, value, n: int | None = None) -> Tensor:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            value = self.encode(list(value))
            if value.shape[0] == 1:
                value = value[0]
        x = self._batch(self._check_dtype(torch.as_tensor(value)), n)
        bad = (x < 0) | (x >= self.token_dim)
        if bad.any():
            raise ValueError(
                f"modality '{self.name}': expected token ids in [0, {self.token_dim}), "
                f"got {x[bad].unique()[:5].tolist()}"
            )
        return x

    def decode(self, x: Tensor) -> list[str]:
        """(b, L) ids -> strings; pads (and stray mask ids) are dropped."""
        return [self.tokenizer.decode([i for i in row if i != self.pad_id]) for row in x.tolist()]
