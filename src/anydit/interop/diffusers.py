"""Import and export diffusers' MM-DiTs: ``SD3Transformer2DModel`` (SD3, SD3.5) and
``FluxTransformer2DModel`` (Flux.1 dev and schnell).

An imported model is an ordinary anydit ``MMDiT`` with three or four modalities:

    image     image latents (C, H, W), generated; SD3: patch p, absolute position table;
              Flux: patch 2 over the unpacked latents, rotary (0, row, column) positions
    text      the text encoders' token embeddings (L, joint_attention_dim), a condition only
    pooled    the pooled text embedding (pooled_projection_dim,), added to the adaLN input
    guidance  Flux dev only: the distilled guidance scale (1,), embedded like a time

Conventions. anydit's time t is 0 at noise and 1 at data; diffusers' flow models use
sigma = 1 - t (their ``timestep`` is 1000 sigma for SD3, sigma for Flux) and predict
noise - data, the negative of anydit's velocity data - noise. An imported model embeds sigma
(``model.time_input = "sigma"``) and carries the sign in its output projection, so

    anydit(tokens, t)  ==  - diffusers(latents, timestep=1000 (1 - t))     (SD3)
    anydit(tokens, t)  ==  - diffusers(packed latents, timestep=1 - t)     (Flux)

within float rounding (tested at 1e-4 relative on diffusers' own test configurations).

Sources are an in-memory diffusers model or a local diffusers model folder (config.json +
safetensors, read without diffusers). A folder whose weights do not fit its config is refused
with every missing, unexpected and mis-shaped key listed; nothing is loaded partially.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anydit.interop.layouts import ARCHITECTURES
from anydit.interop.weights import (
    WeightsError,
    apply_links,
    check_keys,
    invert_links,
    read_folder,
    write_folder,
)
from anydit.model.lora import merged_state_dict

SD3_DEFAULTS: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 18,
    "attention_head_dim": 64,
    "num_attention_heads": 18,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1152,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 96,
    "dual_attention_layers": (),
    "qk_norm": None,
}
FLUX_DEFAULTS: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}
FAMILIES = {
    "sd3": ("SD3Transformer2DModel", SD3_DEFAULTS),
    "flux": ("FluxTransformer2DModel", FLUX_DEFAULTS),
}
NAMES = {"image": "image", "text": "text", "pooled": "pooled", "guidance": "guidance"}


def read_source(source, family: str) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """(config with defaults filled, state dict, a name for messages) of a diffusers model or
    a local model folder of ``family`` ("sd3" or "flux")."""
    cls_name, defaults = FAMILIES[family]
    if isinstance(source, str | Path):
        config, state = read_folder(source)
        where = str(source)
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        config, state = dict(source.config), dict(source.state_dict())
        where = type(source).__name__
    else:
        raise TypeError(
            f"import {family}: expected a diffusers {cls_name} or a folder, got {type(source)}"
        )
    found = config.get("_class_name")
    if found is not None and found != cls_name:
        raise WeightsError(f"{where}: config is for {found}, expected {cls_name}")
    public = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(public) - set(defaults))
    if unknown:
        raise WeightsError(
            f"{where}: config keys {unknown} are not understood for {cls_name}; "
            f"expected some of {sorted(defaults)}"
        )
    return {**defaults, **public}, {k: v.detach() for k, v in state.items()}, where


# --- import / export ----------------------------------------------------------------------


def import_diffusers(
    source,
    family: str,
    height: int | None = None,
    width: int | None = None,
    text_tokens: int | None = None,
    names: dict[str, str] | None = None,
    vae: str | Path | None = None,
):
    """Build an anydit ``MMDiT`` equal to a diffusers SD3 or Flux transformer.

    Args:
        source: a diffusers model object, or a local diffusers model folder.
        family: "sd3" or "flux".
        height, width: the latent image size the model will see (SD3: its sample_size by
            default; Flux: 128, the unpacked latents of a 1024-pixel image).
        text_tokens: length of the text-embedding sequence (SD3: 333 = 77 CLIP + 256 T5
            tokens, its pipeline's default; Flux: 512).
        names: rename the modalities ({"image": ..., "text": ..., "pooled": ...,
            "guidance": ...}).
        vae: a diffusers autoencoder folder to use as the image modality's codec (image
            files in, decoded pictures out); the latent size is still ``height`` x ``width``.
    """
    from anydit.model import MMDiT

    if family not in FAMILIES:
        raise ValueError(f"import: family must be one of {sorted(FAMILIES)}, got {family!r}")
    config, state, where = read_source(source, family)
    names = {**NAMES, **(names or {})}
    tokens = text_tokens or (333 if family == "sd3" else 512)
    build, mapping_of = ARCHITECTURES[family]
    mods, model_cfg = build(config, height, width, tokens, names)
    if vae:
        mods[0] = dataclasses.replace(mods[0], codec="vae", codec_path=str(vae))
    model = MMDiT(mods, model_cfg)
    mapping = mapping_of(model, config, names)
    expected = {k: tuple(v.shape) for k, v in invert_links(mapping, model.state_dict()).items()}
    check_keys(state, expected, where, f"{FAMILIES[family][0]}, {config['num_layers']} blocks")
    ours = apply_links(mapping, state, model.state_dict())
    model.load_state_dict({k: v.to(torch.float32) for k, v in ours.items()}, strict=True)
    return model


def export_diffusers(
    model, family: str, sample_size: int | None = None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(diffusers config, state dict) of an anydit model built by ``import_diffusers``
    (possibly fine-tuned; LoRA adapters are merged). SD3's ``sample_size`` (which only sets
    the default resolution) is the image modality's height unless given. The text stream's
    own time embedding, which diffusers has no place for, is folded into the pooled
    projection's bias at t = 1 (the text is always given). Models with streams beyond the
    imported ones are refused."""
    names = _imported_names(model, family)
    config = _config_of(model, family, names)
    if family == "sd3" and sample_size:
        config["sample_size"] = sample_size
    build, mapping_of = ARCHITECTURES[family]
    _check_architecture(model, family, build(config, None, None, 1, names)[1])
    mapping = mapping_of(model, config, names)
    state = merged_state_dict(model)
    mapped = {link.ours for link in mapping.links} | set(mapping.fill)
    if set(state) - mapped or mapped - set(state):
        raise WeightsError(
            f"export {family}: the model's weights do not fit the {FAMILIES[family][0]} layout "
            f"(weights with no place: {sorted(set(state) - mapped)[:8]}; missing: "
            f"{sorted(mapped - set(state))[:8]})"
        )
    emb = model.time_embed[names["text"]]  # the text is always given: a constant, in fp32
    weights = {k: v.float() for k, v in emb.state_dict().items()}
    with torch.no_grad():
        one = torch.ones(1, device=next(emb.parameters()).device)
        text_time = torch.func.functional_call(emb, weights, (one,))
    bias = f"pooled_embed.{names['pooled']}.2.bias"
    state[bias] = state[bias] + text_time[0].to(state[bias].dtype)
    cls_name = FAMILIES[family][0]
    return {"_class_name": cls_name, **config}, invert_links(mapping, state)


def save_diffusers(model, folder: str | Path, family: str, sample_size: int | None = None) -> Path:
    """Write an imported (and fine-tuned) model as a diffusers model folder."""
    config, state = export_diffusers(model, family, sample_size)
    return write_folder(folder, config, state)


_ARCH_FIELDS = (
    "width", "depth", "single_depth", "heads", "head_dim", "mlp_ratio", "qk_norm", "activation",
    "time_dim", "pooled_cond", "conditioning", "time_input", "rope_axes",
    "single_block", "dual_attention", "rope_theta",
)  # fmt: skip


def _check_architecture(model, family: str, expected) -> None:
    """Refuse a model whose computation the diffusers layout cannot hold (adapters and
    checkpointing aside): its export would compute something else."""
    wrong = {
        f: (getattr(model.cfg, f), getattr(expected, f))
        for f in _ARCH_FIELDS
        if f != "rope_axes" or family == "flux"
        if getattr(model.cfg, f) != getattr(expected, f)
    }
    if wrong:
        raise WeightsError(
            f"export {family}: model settings differ from a {FAMILIES[family][0]} "
            f"(field: (this model, the layout)): {wrong}"
        )


def _imported_names(model, family: str) -> dict[str, str]:
    names = dict(NAMES)
    by_role = {}
    for n, m in model.modalities.items():
        c = m.cfg
        role = (
            "image"
            if c.kind == "image" and c.generate
            else "text"
            if c.kind == "sequence" and not c.generate
            else "guidance"
            if c.pooled == "time"
            else "pooled"
            if c.pooled == "mlp"
            else None
        )
        if role is None or role in by_role:
            raise WeightsError(
                f"export {family}: modality '{n}' has no place in a {FAMILIES[family][0]} "
                f"(it holds one image, one text sequence, one pooled vector); "
                f"modalities: {model.names}"
            )
        by_role[role] = n
    names.update(by_role)
    return names


def _config_of(model, family: str, names: dict) -> dict[str, Any]:
    cfg = model.cfg
    image = model.modalities[names["image"]].cfg
    text = model.modalities[names["text"]].cfg
    pooled = model.modalities[names["pooled"]].cfg
    common = {
        "num_layers": cfg.depth,
        "attention_head_dim": cfg.head_dim,
        "num_attention_heads": cfg.heads,
        "joint_attention_dim": text.shape[1],
        "pooled_projection_dim": pooled.shape[0],
    }
    if family == "sd3":
        return {
            "sample_size": image.shape[1],
            "patch_size": image.patch,
            "in_channels": image.shape[0],
            "out_channels": image.shape[0],
            "caption_projection_dim": cfg.width,
            "pos_embed_max_size": image.pos_table,
            "dual_attention_layers": list(cfg.dual_attention),
            "qk_norm": "rms_norm" if cfg.qk_norm else None,
            **common,
        }
    return {
        "patch_size": 1,
        "in_channels": image.shape[0] * 4,
        "out_channels": None,
        "num_single_layers": cfg.single_depth,
        "guidance_embeds": names["guidance"] in model.modalities,
        "axes_dims_rope": [2 * a for a in cfg.rope_axes],
        **common,
    }
