"""Grow a model: start a model with more streams (or adapters) from a smaller one's weights.

``load_matching`` copies every weight the two models share by name (shapes must agree) and
leaves the rest (new streams, LoRA adapters) as initialised; weights the new model has no
place for are an error, so an architecture change never silently drops trained weights. The
time summary, whose input grows with the number of modalities, keeps each old modality's
columns and starts the new ones at zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SUMMARY_IN = "time_summary.mlp.0.weight"


def load_matching(
    model, state: dict[str, Tensor], old_names: list[str], where: str
) -> dict[str, list[str]]:
    """Copy ``state`` (weights of a model over modalities ``old_names``) into ``model``.

    Returns {"loaded": keys copied, "new": keys of ``model`` left as initialised}. Raises a
    ``ValueError`` naming the keys that ``model`` lacks or whose shapes differ."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if state[k].shape != own[k].shape and k != _SUMMARY_IN
    ]
    if unexpected or shapes:
        parts = []
        if unexpected:
            parts.append(f"weights with no place in this model: {unexpected[:12]}")
        if shapes:
            parts.append(f"shape mismatches: {shapes[:12]}")
        raise ValueError(
            f"{where}: cannot initialise this model from it ({'; '.join(parts)}); the shared "
            "modalities and model settings must be the same"
        )
    merged = dict(own)
    for k, v in state.items():
        merged[k] = v.to(own[k].dtype)
    if _SUMMARY_IN in state and state[_SUMMARY_IN].shape != own[_SUMMARY_IN].shape:
        merged[_SUMMARY_IN] = _grow_summary(
            state[_SUMMARY_IN], own[_SUMMARY_IN], old_names, model.names
        )
    for k in set(own) - set(state):  # new time / pooled embedders start silent: they add
        if _is_embedder_output(k):  # to every old stream's adaLN input ('sum' conditioning)
            merged[k] = torch.zeros_like(own[k])
    model.load_state_dict(merged, strict=True)
    return {"loaded": sorted(state), "new": sorted(set(own) - set(state))}


def _is_embedder_output(key: str) -> bool:
    """The weight or bias of the last layer of a time embedder (``time_embed.N.mlp.2``) or
    pooled embedder (``pooled_embed.N.2`` or ``pooled_embed.N.mlp.2``) -- not a LoRA adapter's
    matrices on it: zeroing both of an adapter's matrices would leave it no gradient."""
    parts = key.split(".")
    return (
        parts[0] in ("time_embed", "pooled_embed")
        and parts[-2] == "2"
        and parts[-1] in ("weight", "bias")
    )


def _grow_summary(old: Tensor, new: Tensor, old_names: list[str], names: list[str]) -> Tensor:
    """(d, m_old f) -> (d, m f): each old modality's block of f columns moves to its place in
    the new canonical order; new modalities' blocks are zero (they start unheard)."""
    f = old.shape[1] // len(old_names)
    missing = sorted(set(old_names) - set(names))
    if missing or new.shape[1] != f * len(names):
        raise ValueError(
            f"time summary: the file's modalities {old_names} do not fit the model's {names}"
        )
    out = torch.zeros_like(new)
    for i, n in enumerate(old_names):
        j = names.index(n)
        out[:, j * f : (j + 1) * f] = old[:, i * f : (i + 1) * f]
    return out


def extend(model, modalities, **model_changes):
    """A new ``MMDiT`` with ``model``'s modalities plus ``modalities`` (ModalityConfigs), its
    shared weights copied from ``model``. ``model_changes`` override ``ModelConfig`` fields
    that add weights without changing the old ones (e.g. ``lora_rank``, ``lora_streams``)."""
    import dataclasses

    from anydit.model import MMDiT

    cfg = dataclasses.replace(model.cfg, **model_changes)
    grown = MMDiT([*model.modality_configs, *modalities], cfg)
    load_matching(grown, model.state_dict(), model.names, "extend")
    return grown


def init_from_file(model, path) -> dict[str, list[str]]:
    """Initialise ``model`` from an anydit model file (``train.init``): shared weights are
    copied, new streams and adapters keep their fresh initialisation. Into an expert model
    (``model.experts``) a dense file is upcycled: every expert a copy of its MLP, routers and
    shared experts at zero."""
    from safetensors.torch import load_file

    from anydit.model.file import architecture

    old, state = architecture(path), load_file(str(path))
    if model.cfg.experts and not old[1].experts:
        from anydit.model.experts import upcycle_state

        state = upcycle_state(state, model.state_dict(), model.cfg.experts)
    old_names = sorted(m.name for m in old[0])
    return load_matching(model, state, old_names, f"train.init {path}")
