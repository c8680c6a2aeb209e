"""The network: embeddings, rotary positions, blocks and the MM-DiT."""

from anydit.model.mmdit import MMDiT
from anydit.model.presets import PRESETS, preset

__all__ = ["MMDiT", "PRESETS", "preset"]
