"""Text: a sequence of at most L token ids, right-padded with an explicit pad id that the model
learns to predict (so a generated text's length is sampled too). Masked discrete diffusion:
id ``vocab_size`` is the mask token.

Tokenizers: UTF-8 bytes (built in, no file), a tokenizer shipped with the package by name
(``BUILTIN_TOKENIZERS``; a model file that names one stays self-contained), or a
``tokenizers`` JSON file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from anydit.modalities.base import Modality, Source, file_bytes, source_name
from anydit.modalities.label import write_jsonl

# Tokenizers shipped with the package, by name -> JSON file under the package folder.
BUILTIN_TOKENIZERS = {
    "digits-words": "data/assets/digits_words.json",  # scripts/build_digits_tokenizer.py
}


def tokenizer_path(name: str) -> Path:
    """The JSON file of a tokenizer named in ``ModalityConfig.tokenizer``: a built-in name or
    a path."""
    if name in BUILTIN_TOKENIZERS:
        return Path(__file__).parents[1] / BUILTIN_TOKENIZERS[name]
    return Path(name)


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

    kind = "text"
    discrete = True
    rank = 1
    options = frozenset({"tokenizer"})
    extensions = (".npy", ".txt")
    free_text = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tokenizer = (
            ByteTokenizer()
            if cfg.tokenizer == "bytes"
            else HFTokenizer(tokenizer_path(cfg.tokenizer))
        )

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
        x = self.batch(self.check_dtype(torch.as_tensor(value)), n)
        return self.check_ids(x, self.token_dim, "token")

    def collate(self, values: list) -> Tensor:
        if all(isinstance(v, str) for v in values):
            return self.encode(values)
        return super().collate(values)

    def read_inline(self, value) -> str:
        """A string (checked to fit the maximum length)."""
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        length = len(self.tokenizer.encode(value))
        if length > self.shape[0]:
            raise ValueError(
                f"text has {length} tokens, more than the maximum length {self.shape[0]}: "
                f"{value[:40]!r}"
            )
        return value

    def read_file(self, source: Source, ext: str, fit: str, n: int | None):
        self.check_extension(source, ext)
        if ext == ".npy":
            return self.read_npy(source, n)
        data = file_bytes(source, f"text file for modality '{self.name}'")
        try:
            return self.read_inline(data.decode("utf-8").strip())
        except UnicodeDecodeError as err:
            raise ValueError(
                f"file {source_name(source)} for modality '{self.name}': expected UTF-8 "
                f"text ({err})"
            ) from err

    def decode(self, x: Tensor) -> list[str]:
        """(b, L) ids -> strings; pads (and stray mask ids) are dropped."""
        return [self.tokenizer.decode([i for i in row if i != self.pad_id]) for row in x.tolist()]

    def write(self, out: Path, stem: str, x: Tensor) -> list[str]:
        """``STEM.jsonl``: index and text of each sample."""
        rows = [{"index": i, "text": s} for i, s in enumerate(self.decode(x))]
        return write_jsonl(out / f"{stem}.jsonl", rows)
