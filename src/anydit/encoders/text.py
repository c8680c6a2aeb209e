"""Pretrained text encoders as conditions: a local Hugging Face ``transformers`` folder (a T5
encoder, CLIP's text tower, a small decoder LLM), read offline and frozen; or a student
distilled from one (``anydit distill-encoder``).

A ``sequence`` modality with ``codec: encoder`` and ``codec_path: FOLDER`` holds the encoder's
features of a text: (L, K * D) for L tokens (padded or cut to L; padding positions are zeros),
the last K hidden states (``codec_args: {layers: K}``, default 1: the last layer, what SD3 and
Flux read) of width D laid side by side. Texts become features when they are read (a manifest
cell, ``--given caption="..."``, ``anydit.sample(model, {"caption": "..."})``), so ``anydit
data encode`` stores the features once and training never runs the encoder. The model turns
them into its stream by a learned softmax-weighted pooling over the K layers (UniFusion's
layer-wise features) and a connector (``codec_args: {connector: N}``: N linear layers with GELU
between, EMMA's connector; 1 = one linear embedding), ``model.embeddings.EncoderConnector``.

``transformers`` is needed only here (``pip install 'anydit[encoders]'``); weights are read
from safetensors only: a folder with pickled (``.bin``, ``.pt``) weights alone is refused.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from anydit.encoders.student import STUDENT_FILE, StudentEncoder

PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_folder(folder: Path, what: str) -> None:
    """A readable model folder with safetensors weights; errors name the folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} '{folder}' is not a folder")
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir() if p.is_file())
        pickled = [f for f in found if f.endswith(PICKLED)]
        why = " (pickled weights are never read)" if pickled else ""
        raise ValueError(f"{what} '{folder}': expected weights as .safetensors{why}, found {found}")


class TextEncoder:
    """Texts -> features (b, L, K * D): a frozen local ``transformers`` model's last K hidden
    states (or a distilled student's output), zeros at padding."""

    def __init__(self, folder: str | Path, layers: int = 1):
        try:
            import transformers
        except ImportError:
            raise ImportError(
                "codec 'encoder' needs transformers: pip install 'anydit[encoders]'"
            ) from None
        folder = Path(folder)
        check_folder(folder, "encoder folder")
        self.folder, self.layers = folder, int(layers)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True
        )
        if self.tokenizer.pad_token is None:  # decoder LLMs: pad with their end token
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.student: StudentEncoder | None = None
        self.model = None
        if (folder / STUDENT_FILE).is_file():
            self.student = StudentEncoder.load(folder)
            self.width = self.student.config["out_dim"]
            self.depth = 0
            return
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        arch = (getattr(config, "architectures", None) or [""])[0]
        cls = getattr(transformers, arch, None) or transformers.AutoModel
        model = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # T5: the encoder alone
        elif hasattr(model, "text_model") and hasattr(model, "vision_model"):
            model = model.text_model  # CLIP: the text tower
        self.model = model.eval().requires_grad_(False)
        cfg = getattr(model, "config", config)
        cfg = getattr(cfg, "text_config", None) or cfg
        self.depth = int(cfg.num_hidden_layers)
        if self.layers > self.depth + 1:
            raise ValueError(
                f"encoder '{folder}' has {self.depth} layers (+ embeddings); codec_args.layers "
                f"{self.layers} asks for more"
            )
        self.width = int(cfg.hidden_size) * self.layers

    def tokenize(self, texts: list[str], length: int) -> tuple[Tensor, Tensor]:
        """(ids, mask) (b, L): padded or cut to ``length``."""
        got = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        return got["input_ids"], got["attention_mask"]

    @torch.no_grad()
    def encode(self, texts: list[str], length: int) -> Tensor:
        """Texts -> float32 features (b, L, K * D)."""
        ids, mask = self.tokenize(texts, length)
        if self.student is not None:
            return self.student(ids, mask).float()
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-self.layers :]  # K x (b, L, D)
        x = torch.cat([h.float() for h in hidden], dim=-1)  # (b, L, K D)
        return x * mask[..., None].float()


@lru_cache(maxsize=4)
def encoder_at(folder: str, layers: int) -> TextEncoder:
    """One loaded encoder per (folder, layers) per process."""
    return TextEncoder(folder, layers)
