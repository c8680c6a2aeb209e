"""Pretrained encoders as frozen given streams: a local Hugging Face ``transformers`` text
encoder read offline (``text``), and the small students distilled from one (``student``). A
``sequence`` modality with ``codec: encoder`` reads its texts through them."""

from anydit.encoders.student import StudentEncoder
from anydit.encoders.text import TextEncoder, encoder_at

__all__ = ["StudentEncoder", "TextEncoder", "encoder_at"]
