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

from anydit.config import ModalityConfig, ModelConfig
from anydit.interop.weights import (
    Link,
    Mapping,
    WeightsError,
    apply_links,
    check_keys,
    invert_links,
    read_folder,
    swap_halves,
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


# --- architectures ------------------------------------------------------------------------


def _text_modalities(config: dict, text_tokens: int, names: dict) -> list[ModalityConfig]:
    return [
        ModalityConfig(
            name=names["text"],
            kind="sequence",
            shape=(text_tokens, config["joint_attention_dim"]),
            generate=False,
            rope=False,
        ),
        ModalityConfig(
            name=names["pooled"],
            kind="vector",
            shape=(config["pooled_projection_dim"],),
            pooled="mlp",
        ),
    ]


def _model_config(config: dict, depth: int, single_depth: int, qk_norm: bool, **kw) -> ModelConfig:
    return ModelConfig(
        width=config["num_attention_heads"] * config["attention_head_dim"],
        depth=depth,
        single_depth=single_depth,
        heads=config["num_attention_heads"],
        head_dim=config["attention_head_dim"],
        mlp_ratio=4.0,
        qk_norm=qk_norm,
        activation="gelu_tanh",
        time_dim=256,
        pooled_cond=False,
        conditioning="sum",
        time_input="sigma",
        **kw,
    )


def sd3_architecture(
    config: dict, height: int | None, width: int | None, text_tokens: int, names: dict
) -> tuple[list[ModalityConfig], ModelConfig]:
    """The anydit modalities and model config equal to an SD3 transformer config."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    if config["caption_projection_dim"] != inner:
        raise WeightsError(
            f"SD3 config: caption_projection_dim {config['caption_projection_dim']} must equal "
            f"num_attention_heads * attention_head_dim = {inner}"
        )
    if config["out_channels"] not in (None, config["in_channels"]):
        raise WeightsError("SD3 config: out_channels must equal in_channels")
    if config["qk_norm"] not in (None, "rms_norm"):
        raise WeightsError(f"SD3 config: qk_norm {config['qk_norm']!r} is not supported")
    size = config["sample_size"]
    image = ModalityConfig(
        name=names["image"],
        kind="image",
        shape=(config["in_channels"], height or size, width or size),
        patch=config["patch_size"],
        rope=False,
        pos_table=config["pos_embed_max_size"],
        shift=3.0,  # the SD3 pipelines' flow-matching schedule shift
    )
    model = _model_config(
        config,
        config["num_layers"],
        0,
        config["qk_norm"] == "rms_norm",
        dual_attention=tuple(config["dual_attention_layers"]),
    )
    return [image, *_text_modalities(config, text_tokens, names)], model


def flux_architecture(
    config: dict, height: int | None, width: int | None, text_tokens: int, names: dict
) -> tuple[list[ModalityConfig], ModelConfig]:
    """The anydit modalities and model config equal to a Flux transformer config. ``height``
    and ``width`` are those of the unpacked latents (packing is 2 x 2 patches)."""
    if config["patch_size"] != 1 or config["in_channels"] % 4:
        raise WeightsError("Flux config: expected patch_size 1 and in_channels a multiple of 4")
    if config["out_channels"] not in (None, config["in_channels"]):
        raise WeightsError("Flux config: out_channels must equal in_channels")
    image = ModalityConfig(
        name=names["image"],
        kind="image",
        shape=(config["in_channels"] // 4, height or 128, width or 128),
        patch=2,
        shift=3.0,  # near Flux's resolution-dependent shift at 1024 pixels (e^1.15)
    )
    mods = [image, *_text_modalities(config, text_tokens, names)]
    if config["guidance_embeds"]:
        mods.append(
            ModalityConfig(name=names["guidance"], kind="vector", shape=(1,), pooled="time")
        )
    model = _model_config(
        config,
        config["num_layers"],
        config["num_single_layers"],
        True,
        single_block="parallel",
        rope_axes=tuple(a // 2 for a in config["axes_dims_rope"]),
    )
    return mods, model


# --- mappings -----------------------------------------------------------------------------


def _joint_block(m: Mapping, ours: str, theirs: str, image: str, text: str, inner: int, qk: bool):
    """One MM-DiT block: image stream (to_*), text stream (add_*_proj), shared attention."""
    sizes = [inner] * 3
    img, txt = f"{ours}.{image}", f"{ours}.{text}"
    m.cat(f"{img}.qkv", [f"{theirs}.attn.to_{x}" for x in "qkv"], sizes)
    m.cat(f"{txt}.qkv", [f"{theirs}.attn.add_{x}_proj" for x in "qkv"], sizes)
    if qk:
        for mine, key in ((img, "norm"), (txt, "norm_added")):
            m.copy(f"{mine}.q_norm", f"{theirs}.attn.{key}_q", ("weight",))
            m.copy(f"{mine}.k_norm", f"{theirs}.attn.{key}_k", ("weight",))
    m.copy(f"{img}.modulation.1", f"{theirs}.norm1.linear")
    m.copy(f"{img}.out", f"{theirs}.attn.to_out.0")
    m.copy(f"{img}.mlp.0", f"{theirs}.ff.net.0.proj")
    m.copy(f"{img}.mlp.2", f"{theirs}.ff.net.2")


def _text_tail(m: Mapping, ours: str, theirs: str, pre_only: bool) -> None:
    """The text stream's modulation and, unless ``pre_only`` (SD3's last block), its output."""
    if pre_only:
        for p in ("weight", "bias"):
            m.links.append(
                swap_halves(f"{ours}.modulation.1.{p}", f"{theirs}.norm1_context.linear.{p}")
            )
        return
    m.copy(f"{ours}.modulation.1", f"{theirs}.norm1_context.linear")
    m.copy(f"{ours}.out", f"{theirs}.attn.to_add_out")
    m.copy(f"{ours}.mlp.0", f"{theirs}.ff_context.net.0.proj")
    m.copy(f"{ours}.mlp.2", f"{theirs}.ff_context.net.2")


def _embedders(m: Mapping, model, names: dict, guidance: bool) -> None:
    image, text, pooled = names["image"], names["text"], names["pooled"]
    for i, j in ((0, 1), (2, 2)):
        m.copy(f"time_embed.{image}.mlp.{i}", f"time_text_embed.timestep_embedder.linear_{j}")
        m.copy(f"pooled_embed.{pooled}.{i}", f"time_text_embed.text_embedder.linear_{j}")
        if guidance:
            g = names["guidance"]
            m.copy(f"pooled_embed.{g}.mlp.{i}", f"time_text_embed.guidance_embedder.linear_{j}")
    m.copy(f"embed.{text}", "context_embedder")
    for key in model.state_dict():  # the text stream's own time embedding: zero (text is given)
        if key.startswith(f"time_embed.{text}."):
            m.fill[key] = torch.zeros_like
    for p in ("weight", "bias"):
        m.links.append(swap_halves(f"final.{image}.modulation.1.{p}", f"norm_out.linear.{p}"))


def sd3_mapping(model, config: dict, names: dict) -> Mapping:
    """anydit <-> diffusers SD3 keys for ``model`` (built by ``sd3_architecture``)."""
    m = Mapping()
    image, text = names["image"], names["text"]
    inner = model.cfg.heads * model.cfg.head_dim
    qk = model.cfg.qk_norm
    _embedders(m, model, names, guidance=False)
    m.links.append(
        Link(
            f"pos_embed.{image}.table",
            ("pos_embed.pos_embed",),
            lambda p: p[0][0],
            lambda t: [t[None]],
        )
    )
    c, p = config["in_channels"], config["patch_size"]
    m.links.append(
        Link(
            f"embed.{image}.weight",
            ("pos_embed.proj.weight",),
            lambda w: w[0].permute(0, 2, 3, 1).reshape(w[0].shape[0], -1),  # conv -> (p q c)
            lambda t: [t.reshape(t.shape[0], p, p, c).permute(0, 3, 1, 2)],
        )
    )
    m.copy(f"embed.{image}", "pos_embed.proj", ("bias",))
    for i in range(config["num_layers"]):
        ours, theirs = f"blocks.{i}.streams", f"transformer_blocks.{i}"
        _joint_block(m, ours, theirs, image, text, inner, qk)
        _text_tail(m, f"{ours}.{text}", theirs, pre_only=i == config["num_layers"] - 1)
        if i in config["dual_attention_layers"]:
            a2 = f"{ours}.{image}.attn2"
            m.cat(f"{a2}.qkv", [f"{theirs}.attn2.to_{x}" for x in "qkv"], [inner] * 3)
            m.copy(f"{a2}.out", f"{theirs}.attn2.to_out.0")
            if qk:
                m.copy(f"{a2}.q_norm", f"{theirs}.attn2.norm_q", ("weight",))
                m.copy(f"{a2}.k_norm", f"{theirs}.attn2.norm_k", ("weight",))
    for param in ("weight", "bias"):  # noise - data -> data - noise
        m.links.append(
            Link(
                f"final.{image}.proj.{param}",
                (f"proj_out.{param}",),
                lambda t: -t[0],
                lambda t: [-t],
            )
        )
    return m


def flux_mapping(model, config: dict, names: dict) -> Mapping:
    """anydit <-> diffusers Flux keys for ``model`` (built by ``flux_architecture``)."""
    m = Mapping()
    image, text = names["image"], names["text"]
    inner = model.cfg.heads * model.cfg.head_dim
    hidden = model.single_blocks[0].layer.hidden if model.single_blocks else 0
    c = config["in_channels"] // 4
    _embedders(m, model, names, guidance=config["guidance_embeds"])
    # Flux packs 2 x 2 latent patches with features in (c, p, q) order; anydit uses (p, q, c).
    m.links.append(
        Link(
            f"embed.{image}.weight",
            ("x_embedder.weight",),
            lambda w: w[0].view(-1, c, 2, 2).permute(0, 2, 3, 1).reshape(w[0].shape[0], -1),
            lambda t: [t.view(-1, 2, 2, c).permute(0, 3, 1, 2).reshape(t.shape[0], -1)],
        )
    )
    m.copy(f"embed.{image}", "x_embedder", ("bias",))
    for i in range(config["num_layers"]):
        ours, theirs = f"blocks.{i}.streams", f"transformer_blocks.{i}"
        _joint_block(m, ours, theirs, image, text, inner, True)
        _text_tail(m, f"{ours}.{text}", theirs, pre_only=False)
    for i in range(config["num_single_layers"]):
        ours, theirs = f"single_blocks.{i}.layer", f"single_transformer_blocks.{i}"
        m.copy(f"{ours}.modulation.1", f"{theirs}.norm.linear")
        parts = [f"{theirs}.attn.to_{x}" for x in "qkv"] + [f"{theirs}.proj_mlp"]
        m.cat(f"{ours}.qkv_mlp", parts, [inner] * 3 + [hidden])
        m.copy(f"{ours}.q_norm", f"{theirs}.attn.norm_q", ("weight",))
        m.copy(f"{ours}.k_norm", f"{theirs}.attn.norm_k", ("weight",))
        m.copy(f"{ours}.out", f"{theirs}.proj_out")
    m.links.append(
        Link(
            f"final.{image}.proj.weight",
            ("proj_out.weight",),
            lambda w: -w[0].view(c, 2, 2, -1).permute(1, 2, 0, 3).reshape(4 * c, -1),
            lambda t: [-t.view(2, 2, c, -1).permute(2, 0, 1, 3).reshape(4 * c, -1)],
        )
    )
    m.links.append(
        Link(
            f"final.{image}.proj.bias",
            ("proj_out.bias",),
            lambda b: -b[0].view(c, 2, 2).permute(1, 2, 0).reshape(-1),
            lambda t: [-t.view(2, 2, c).permute(2, 0, 1).reshape(-1)],
        )
    )
    return m


ARCHITECTURES = {"sd3": (sd3_architecture, sd3_mapping), "flux": (flux_architecture, flux_mapping)}


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
    _, mapping_of = ARCHITECTURES[family]
    mapping = mapping_of(model, config, names)
    state = merged_state_dict(model)
    text_time = model.time_embed[names["text"]](torch.ones(1))[0].detach()  # (d,)
    bias = f"pooled_embed.{names['pooled']}.2.bias"
    state[bias] = state[bias] + text_time
    cls_name = FAMILIES[family][0]
    return {"_class_name": cls_name, **config}, invert_links(mapping, state)


def save_diffusers(model, folder: str | Path, family: str, sample_size: int | None = None) -> Path:
    """Write an imported (and fine-tuned) model as a diffusers model folder."""
    config, state = export_diffusers(model, family, sample_size)
    return write_folder(folder, config, state)


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


def import_sd3(source, **kw):
    """``import_diffusers(source, "sd3", ...)``."""
    return import_diffusers(source, "sd3", **kw)


def import_flux(source, **kw):
    """``import_diffusers(source, "flux", ...)``."""
    return import_diffusers(source, "flux", **kw)
