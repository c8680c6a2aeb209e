"""The network: embeddings, rotary positions, blocks, the MM-DiT and its file format."""

from anydit.model.file import load_model, save_model
from anydit.model.mmdit import MMDiT
from anydit.model.presets import PRESETS, preset

__all__ = ["MMDiT", "PRESETS", "load_model", "preset", "save_model"]
