"""Modalities: each kind of data in its own file -- its config rules, raw values <-> tokens and
positions, and the files it reads and writes. Codecs (log-mel, VAE latents) sit here too."""

from __future__ import annotations

from anydit.modalities.base import Modality
from anydit.modalities.image import Image
from anydit.modalities.label import Label
from anydit.modalities.layout import Layout
from anydit.modalities.sequence import Sequence
from anydit.modalities.slots import Slots
from anydit.modalities.text import ByteTokenizer, HFTokenizer, Text
from anydit.modalities.vector import Vector
from anydit.modalities.video import Video

KIND_CLASSES: dict[str, type[Modality]] = {
    cls.kind: cls for cls in (Image, Video, Slots, Sequence, Vector, Label, Layout, Text)
}
KINDS = tuple(KIND_CLASSES)


def build_modality(cfg) -> Modality:
    """The Modality object for a ``ModalityConfig``."""
    return KIND_CLASSES[cfg.kind](cfg)


def build_modalities(cfgs) -> dict[str, Modality]:
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
    spans: dict[str, list[tuple[str, float]]] = {}
    for m in mods.values():
        if m.cfg.clock:
            m.time_scale = clocks[m.cfg.clock] / m.cfg.rate
            steps = m.positions()[:, 0].unique().numel()  # tokens along time
            spans.setdefault(m.cfg.clock, []).append((m.name, steps / m.cfg.rate))
    for clock, rows in spans.items():
        if max(s for _, s in rows) - min(s for _, s in rows) > 1e-6:
            said = ", ".join(f"'{n}' {s:g}" for n, s in rows)
            raise ValueError(
                f"modalities sharing clock '{clock}' must last as long: {said} units of the "
                "clock (time tokens / rate); change a shape or rate, or give them different "
                "clocks"
            )
    return mods


def outputs_of(modalities: dict[str, Modality]) -> list[str]:
    """The modalities a model predicts: those that can be generated (not condition-only or
    pooled), in canonical order."""
    return [n for n, m in modalities.items() if m.cfg.generate]


__all__ = [
    "KINDS",
    "KIND_CLASSES",
    "ByteTokenizer",
    "HFTokenizer",
    "Image",
    "Label",
    "Layout",
    "Modality",
    "Sequence",
    "Slots",
    "Text",
    "Vector",
    "Video",
    "build_modalities",
    "build_modality",
    "outputs_of",
]
