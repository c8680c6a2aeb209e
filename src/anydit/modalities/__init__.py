"""Modalities: how each kind of data becomes tokens (and positions) and back."""

from anydit.config import ModalityConfig
from anydit.modalities.base import POSITION_AXES, Modality
from anydit.modalities.continuous import Image, Sequence, Vector, Video
from anydit.modalities.discrete import ByteTokenizer, HFTokenizer, Label, Text

KIND_CLASSES: dict[str, type[Modality]] = {
    "image": Image,
    "video": Video,
    "sequence": Sequence,
    "vector": Vector,
    "label": Label,
    "text": Text,
}


def build_modality(cfg: ModalityConfig) -> Modality:
    """The Modality object for a config."""
    return KIND_CLASSES[cfg.kind](cfg)


def build_modalities(cfgs: list[ModalityConfig]) -> dict[str, Modality]:
    """Modalities by name, in canonical (sorted) order, with shared clocks resolved.

    Canonical order makes results independent of the order modalities were declared in.
    Modalities that share a clock put their time positions on one scale: the fastest stream
    (largest ``rate``) steps by 1 per token, slower ones by ``max_rate / rate``.
    """
    mods = {c.name: build_modality(c) for c in sorted(cfgs, key=lambda c: c.name)}
    clocks: dict[str, float] = {}
    for m in mods.values():
        if m.cfg.clock:
            clocks[m.cfg.clock] = max(clocks.get(m.cfg.clock, 0.0), m.cfg.rate)
    for m in mods.values():
        if m.cfg.clock:
            m.time_scale = clocks[m.cfg.clock] / m.cfg.rate
    return mods


__all__ = [
    "POSITION_AXES",
    "ByteTokenizer",
    "HFTokenizer",
    "Image",
    "KIND_CLASSES",
    "Label",
    "Modality",
    "Sequence",
    "Text",
    "Vector",
    "Video",
    "build_modalities",
    "build_modality",
]
