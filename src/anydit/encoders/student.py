"""A small student text encoder (X2I): token embeddings over a teacher's tokenizer, a few
transformer layers and a linear head that reproduce the teacher's features; saved as
safetensors with its config (``anydit distill-encoder``, ``train/encoder.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

STUDENT_FILE = "anydit_encoder.json"  # marks a folder written by distill-encoder


class StudentEncoder(nn.Module):
    """A small transformer over a teacher's token ids that reproduces the teacher's features
    (b, L, out_dim): embeddings and learned positions, ``depth`` pre-norm encoder layers, a
    linear head (X2I: another encoder's conditioning, distilled)."""

    def __init__(self, vocab: int, length: int, out_dim: int, width: int = 128, depth: int = 2):
        super().__init__()
        self.config = {
            "vocab": vocab,
            "length": length,
            "out_dim": out_dim,
            "width": width,
            "depth": depth,
        }
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.zeros(length, width))
        layer = nn.TransformerEncoderLayer(
            width, max(1, width // 64), 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids, mask (b, L) -> features (b, L, out_dim), zeros where ``mask`` is 0."""
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        x = self.layers(x, src_key_padding_mask=~mask.bool())
        return self.head(self.norm(x)) * mask[..., None].to(x.dtype)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()},
            folder / "student.safetensors",
        )
        (folder / STUDENT_FILE).write_text(json.dumps(self.config, indent=2))

    @classmethod
    def load(cls, folder: Path) -> StudentEncoder:
        config = json.loads((folder / STUDENT_FILE).read_text())
        student = cls(**config)
        student.load_state_dict(load_file(folder / "student.safetensors"))
        return student.eval()
