"""The layouts of diffusers' SD3 and Flux transformers: the anydit architecture equal to a
diffusers config, and the key-by-key ``Mapping`` between the two state dicts.

Key correspondences (per dual-stream block i; ``image``/``text`` are the stream names):

    transformer_blocks.i.attn.to_{q,k,v}        -> blocks.i.streams.image.qkv   (rows stacked)
    transformer_blocks.i.attn.add_{q,k,v}_proj  -> blocks.i.streams.text.qkv
    transformer_blocks.i.norm1(_context).linear -> ...modulation.1  (same chunk order; SD3's
                                                   last text layer: (scale, shift) swapped)
    transformer_blocks.i.ff(_context).net.{0.proj,2} -> ...mlp.{0,2}
    single_transformer_blocks.i.attn.to_{q,k,v} + proj_mlp -> single_blocks.i.layer.qkv_mlp
    norm_out.linear -> final.image.modulation.1 (swapped); proj_out -> final.image.proj (negated)
"""

from __future__ import annotations

import torch

from anydit.config import ModalityConfig, ModelConfig
from anydit.interop.weights import Link, Mapping, WeightsError, swap_halves

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
        codec="latent",  # latents of an autoencoder (import --vae names it: codec "vae")
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
    if config["num_single_layers"] < 1:
        raise WeightsError("Flux config: num_single_layers must be >= 1 (Flux text layers go on)")
    image = ModalityConfig(
        name=names["image"],
        kind="image",
        shape=(config["in_channels"] // 4, height or 128, width or 128),
        patch=2,
        shift=3.0,  # near Flux's resolution-dependent shift at 1024 pixels (e^1.15)
        codec="latent",
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
        if key.startswith(f"time_embed.{text}.") and ".lora_" not in key:
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
