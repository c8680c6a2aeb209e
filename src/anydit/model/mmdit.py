"""The multimodal diffusion transformer (MM-DiT with one stream per modality).

Ein notation: b batch, m modalities, n tokens of one modality, N tokens of all modalities,
p features per continuous token, K vocabulary of a discrete modality, d stream width.

    tokens[name]   (b, n, p) float  or  (b, n) int ids (mask id = K)
    times[name]    (b,)  or  (b, n) with per_token_time            t = 0 noise, t = 1 data
    -> out[name]   (b, n, p) velocity v_pred  or  (b, n, K) logits of the clean token

Streams are kept in canonical (sorted-by-name) order, so the declared order of modalities
changes nothing. The model is single-device and knows nothing of distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from anydit.config import ModalityConfig, ModelConfig, check_architecture
from anydit.modalities import Modality, build_modalities, outputs_of
from anydit.model.block import (
    DualStreamBlock,
    Masked,
    SingleStreamBlock,
    isolate,
    modulate,
    run_block,
)
from anydit.model.embeddings import (
    BoxEmbedding,
    EncoderConnector,
    PositionTable,
    TimeEmbedder,
    TimeSummary,
)
from anydit.model.lora import add_lora
from anydit.model.mup import apply_mup, base_config, width_multiplier
from anydit.model.rotary import rotary_angles, rotary_table

_STREAM_DICTS = (
    "embed",
    "jump_embed",
    "pos_embed",
    "time_embed",
    "pooled_embed",
    "summary_proj",
    "pool_proj",
    "final",
    "streams",
    "mixer",
)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a zero-initialised projection to the stream's outputs."""

    def __init__(self, width: int, out_dim: int, out_scale: float = 1.0):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj = nn.Linear(width, out_dim)
        self.out_scale = out_scale  # μP's output multiplier (base width / width)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        out = self.proj(modulate(self.norm(x), shift, scale))
        return out if self.out_scale == 1.0 else out * self.out_scale


def expert_options(cfg: ModelConfig, streams: list[str]) -> dict[str, dict]:
    """{stream or "shared": ``Experts`` options} for the streams ``cfg`` gives experts."""
    if not cfg.experts:
        return {}
    unknown = sorted(set(cfg.expert_streams) - set(streams) - {"shared"})
    if unknown:
        raise ValueError(
            f"model.expert_streams: unknown streams {unknown}; expected some of {streams} "
            "or 'shared'"
        )
    options = dict(
        experts=cfg.experts,
        top_k=cfg.expert_top_k,
        shared=cfg.expert_shared,
        routing=cfg.expert_routing,
        capacity=cfg.expert_capacity,
        hidden_share=cfg.expert_hidden,
        scale=cfg.expert_scale,
    )
    names = cfg.expert_streams or (*streams, "shared")
    return {n: options for n in names}


def token_embedding(m, width: int) -> nn.Module:
    """A stream's input embedding: ids -> vectors (discrete kinds), a linear map of token
    features, or for a pretrained encoder's features (``codec: encoder``) layer pooling and a
    connector (``EncoderConnector``); layouts add Fourier features of their boxes
    (``BoxEmbedding``)."""
    if m.discrete:
        return nn.Embedding(m.token_dim + 1, width)
    if getattr(m.cfg, "codec", "") == "encoder":
        layers = m.encoder_layers
        depth = int(m.cfg.codec_args.get("connector", 1))
        if m.token_dim % layers:
            raise ValueError(
                f"modality '{m.name}': {m.token_dim} channels do not split into "
                f"codec_args.layers = {layers} layers"
            )
        return EncoderConnector(layers, m.token_dim // layers, width, depth)
    if m.kind == "layout":
        return BoxEmbedding(m.token_dim, width)
    return nn.Linear(m.token_dim, width)


class MMDiT(nn.Module):
    """Any-to-any diffusion transformer over the given modalities.

    Token streams (every modality but the pooled ones) meet in joint attention; pooled
    modalities only add to the adaLN input; only modalities with ``generate`` get an output.
    """

    def __init__(self, modalities: list[ModalityConfig], cfg: ModelConfig):
        super().__init__()
        check_architecture(list(modalities), cfg)
        self.cfg = cfg
        self.modality_configs = list(modalities)
        self.modalities: dict[str, Modality] = build_modalities(modalities)
        for m in self.modalities.values():
            if m.cfg.kind == "label" and m.cfg.num_classes < 2:
                raise ValueError(
                    f"modality '{m.name}': no classes; declare classes or num_classes, or train "
                    "on data that names them (anydit train fills them from the data)"
                )
        names = list(self.modalities)
        streams = [n for n in names if not self.modalities[n].cfg.pooled]
        widths = {n: self.modalities[n].cfg.width or cfg.width for n in streams}
        reverse = cfg.time_input == "sigma"
        self.embed = nn.ModuleDict(
            {n: token_embedding(m, widths[n]) for n, m in self.modalities.items() if n in widths}
        )
        self.pos_embed = nn.ModuleDict(
            {
                n: PositionTable(
                    m.cfg.pos_table, widths[n], *(s // m.cfg.patch for s in m.cfg.shape[1:])
                )
                for n, m in self.modalities.items()
                if m.cfg.pos_table
            }
        )
        self.time_embed = nn.ModuleDict(
            {n: TimeEmbedder(cfg.time_dim, widths[n], reverse) for n in streams}
        )
        self.jump_embed = (  # flow maps: the step s - t to the target time, per stream
            nn.ModuleDict({n: TimeEmbedder(cfg.time_dim, widths[n]) for n in streams})
            if cfg.flow_map
            else None
        )
        self.pooled_embed = nn.ModuleDict(
            {
                n: TimeEmbedder(cfg.time_dim, cfg.width)
                if m.cfg.pooled == "time"
                else nn.Sequential(
                    nn.Linear(m.token_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width)
                )
                for n, m in self.modalities.items()
                if m.cfg.pooled
            }
        )
        summary = cfg.conditioning == "summary"
        self.time_summary = (
            TimeSummary(len(names), cfg.time_dim, cfg.width, reverse) if summary else None
        )
        self.summary_proj = (
            nn.ModuleDict({n: nn.Linear(cfg.width, widths[n]) for n in streams})
            if summary
            else None
        )
        self.pool_proj = (
            nn.ModuleDict({n: nn.Linear(widths[n], cfg.width) for n in streams})
            if cfg.pooled_cond
            else None
        )
        block_args = (cfg.heads, cfg.head_dim, cfg.mlp_ratio, cfg.qk_norm, cfg.activation)
        self.mixer = nn.ModuleDict(  # per stream, over its own tokens, before the backbone
            {
                n: nn.ModuleList(
                    [DualStreamBlock({n: widths[n]}, *block_args) for _ in range(cfg.mixer_depth)]
                )
                for n in streams
                if cfg.mixer_depth and self.modalities[n].cfg.token_drop > 0
            }
        )
        outputs = outputs_of(self.modalities)
        conditions = tuple(n for n in streams if n not in outputs)
        moe = expert_options(cfg, streams)
        self.blocks = nn.ModuleList(
            [
                DualStreamBlock(
                    widths,
                    *block_args,
                    pre_only=conditions if i == cfg.depth - 1 and not cfg.single_depth else (),
                    self_attention=tuple(outputs) if i in cfg.dual_attention else (),
                    moe={n: v for n, v in moe.items() if n != "shared"},
                    dynamic=cfg.dynamic_width,
                )
                for i in range(cfg.depth)
            ]
        )
        parallel = cfg.single_block == "parallel"
        self.single_blocks = nn.ModuleList(
            [
                SingleStreamBlock(
                    widths[streams[0]],
                    *block_args,
                    parallel=parallel,
                    moe=moe.get("shared"),
                    dynamic=cfg.dynamic_width,
                )
                for _ in range(cfg.single_depth)
            ]
        )
        out_scale = 1.0 / width_multiplier(cfg)
        self.final = nn.ModuleDict(
            {n: FinalLayer(widths[n], self.modalities[n].token_dim, out_scale) for n in outputs}
        )
        positions = [
            m.positions() if m.cfg.rope else torch.zeros(m.num_tokens, 3)
            for n, m in self.modalities.items()
            if n in widths
        ]
        angles = rotary_angles(
            torch.cat(positions), cfg.head_dim, cfg.rope_theta, cfg.rope_axes
        )  # (N, e/2)
        self.register_buffer("rope", rotary_table(angles), persistent=False)  # (N, e/2, 2)
        self.positionless = bool((angles == 0).all())  # no rotation anywhere: skip it (SD3)
        self.initialize_weights()
        self.lr_scales: dict[str, float] = {}  # per parameter name; empty: all 1 (no μP)
        if cfg.mup_base_width and cfg.mup_base_width != cfg.width:
            with torch.random.fork_rng():  # this model's own draws stay those without μP
                base = MMDiT(modalities, base_config(cfg))
            self.lr_scales = apply_mup(self, base, width_multiplier(cfg))
        if cfg.lora_rank:
            add_lora(self, self.stream_of, cfg.lora_streams, cfg.lora_rank, cfg.lora_alpha)

    @property
    def streams(self) -> list[str]:
        """Modalities with tokens in the joint attention (all but the pooled ones)."""
        return list(self.embed)

    @property
    def outputs(self) -> list[str]:
        """Modalities the model predicts (``generate`` true): the keys of ``forward``'s result."""
        return list(self.final)

    @property
    def names(self) -> list[str]:
        return list(self.modalities)

    def stream_of(self, parameter_name: str) -> str:
        """The stream a parameter belongs to (a modality name), or "shared" (time summary,
        single-stream blocks: weights every stream uses)."""
        parts = parameter_name.split(".")
        for i, part in enumerate(parts[1:], 1):
            if part in self.modalities and parts[i - 1] in _STREAM_DICTS:
                return part
        return "shared"

    def freeze(self, streams: list[str] | tuple[str, ...]) -> int:
        """Stop gradients to the weights of ``streams`` (modality names and/or "shared"); their
        LoRA adapters, if any, stay trainable. Returns how many parameters were frozen."""
        unknown = sorted(set(streams) - set(self.modalities) - {"shared"})
        if unknown:
            raise ValueError(
                f"freeze: unknown streams {unknown}; expected {self.names} or 'shared'"
            )
        frozen = 0
        for name, p in self.named_parameters():
            if self.stream_of(name) in streams and ".lora_" not in name:
                p.requires_grad_(False)
                frozen += p.numel()
        return frozen

    def initialize_weights(self) -> None:
        """DiT's recipe: Xavier linears, N(0, 0.02) embeddings and time MLPs, and zeros for every
        adaLN modulation and final projection, so each block starts as the identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:  # (expert routers have none)
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        embedders = [*self.time_embed.values(), *self.pooled_embed.values()]
        for emb in embedders + ([self.time_summary] if self.time_summary else []):
            for layer in getattr(emb, "mlp", emb):
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        blocks = [*self.blocks, *(b for stack in self.mixer.values() for b in stack)]
        layers = [layer for b in blocks for layer in b.streams.values()]
        layers += [b.layer for b in self.single_blocks]
        for mod in [layer.modulation[-1] for layer in layers] + [
            f.modulation[-1] for f in self.final.values()
        ]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
        for f in self.final.values():
            nn.init.zeros_(f.proj.weight)
            nn.init.zeros_(f.proj.bias)
        for emb in (self.jump_embed or {}).values():  # a new jump input starts unheard
            nn.init.zeros_(emb.mlp[-1].weight)
            nn.init.zeros_(emb.mlp[-1].bias)
        for layer in layers:  # width routers start with every group on
            if getattr(layer, "width_router", None) is not None:
                layer.width_router.reset()

    def _check_inputs(self, tokens: dict[str, Tensor], times: dict[str, Tensor]) -> None:
        for what, d in (("tokens", tokens), ("times", times)):
            if set(d) != set(self.modalities):
                raise ValueError(
                    f"MMDiT.forward: {what} must have exactly the modalities {self.names}, "
                    f"got {sorted(d)}"
                )
        for n, t in times.items():
            if t.dim() == 2 and not self.cfg.per_token_time:
                raise ValueError(
                    f"MMDiT.forward: times['{n}'] is per token {tuple(t.shape)} but the model "
                    "was built with per_token_time = false; pass one time per sample (b,)"
                )

    def conditioning(
        self,
        times: dict[str, Tensor],
        x: dict[str, Tensor],
        pooled: dict[str, Tensor],
        targets: dict[str, Tensor] | None = None,
        given: Tensor | None = None,
        reach: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-stream adaLN inputs (b, 1|n, d): the stream's own time embedding (per token if
        its times are) plus the shared part: with ``conditioning: summary`` a projected
        summary of all modalities' times, with ``sum`` the other streams' time embeddings; plus
        every pooled modality's embedding (scaled by its time: 1 given, 0 dropped) and, with
        ``pooled_cond``, the streams' mean token embeddings x (b, n, d). A flow map adds the
        embedding of each stream's step ``targets - times`` to its own. With ``given`` (b, N)
        (``isolate_given``), given tokens get their own time embedding and the pooled
        modalities' only: nothing that moves while they are held. ``reach`` (b, S, S) bool over
        the streams, from an attention ``mask``: stream i's pooled part sums only the streams
        j it may read (default all)."""
        own = {n: self.time_embed[n](times[n]) for n in self.streams}  # (b, d) or (b, n, d)
        parts = self._pooled_parts(times, pooled)  # (b, d) each: fixed while held
        c = self._conditioning(own, parts, times, x, targets, reach)
        if given is None:
            return c
        held = dict(zip(self.streams, given.split(self.stream_sizes, 1), strict=True))
        for n in self.streams:
            e = own[n] if own[n].dim() == 3 else own[n].unsqueeze(1)  # (b, 1|n, d)
            if self.jump_embed is not None:  # a held token takes no jump
                e = e + self.jump_embed[n](times[n] * 0).reshape(e.shape[0], -1, e.shape[-1])
            e = sum((p.unsqueeze(1) for p in parts), e)
            keep = held[n] if own[n].dim() == 3 else held[n][:, :1]  # (b, 1|n)
            c[n] = torch.where(keep[..., None], e, c[n])
        return c

    @property
    def stream_sizes(self) -> list[int]:
        """Tokens per stream, in the joint sequence's order."""
        return [self.modalities[n].num_tokens for n in self.streams]

    def _pooled_parts(self, times: dict[str, Tensor], pooled: dict[str, Tensor]) -> list[Tensor]:
        """Each pooled modality's embedding (b, d), scaled by its time (1 given, 0 dropped)."""
        parts = []
        for n in self.pooled_embed:
            dtype = next(self.pooled_embed[n].parameters()).dtype
            value = pooled[n].flatten(1).to(dtype)  # (b, D)
            kind = self.modalities[n].cfg.pooled
            e = self.pooled_embed[n](value[:, 0] if kind == "time" else value)
            parts.append(e * times[n].reshape(-1, 1).to(e.dtype))
        return parts

    def _conditioning(self, own, parts, times, x, targets, reach=None) -> dict[str, Tensor]:
        """``conditioning`` from the streams' own time embeddings and the pooled parts."""
        own = dict(own)
        if self.jump_embed is not None:
            for n in self.streams:
                step = (targets[n] - times[n]) if targets and n in targets else times[n] * 0
                own[n] = own[n] + self.jump_embed[n](step)
        extra = list(parts)  # (b, d) parts every stream receives
        if self.pool_proj is not None and reach is None:
            extra.append(sum(self.pool_proj[n](x[n].mean(1)) for n in self.streams))
        if self.pool_proj is not None and reach is not None:  # each stream's own sum
            means = [self.pool_proj[n](x[n].mean(1)) for n in self.streams]  # (b, d) each
            own_extra = {
                n: sum(
                    r[:, None].to(m.dtype) * m
                    for r, m in zip(reach[:, i].unbind(1), means, strict=True)
                )
                for i, n in enumerate(self.streams)
            }
            return self._combine(own, extra, times, own_extra)
        return self._combine(own, extra, times)

    def _combine(self, own, extra, times, own_extra=None) -> dict[str, Tensor]:
        """Each stream's adaLN input from its own embedding, the ``extra`` parts all streams
        share and its ``own_extra`` part, if any."""
        c = {}
        if self.time_summary is not None:
            mean_t = torch.stack(
                [times[n].reshape(times[n].shape[0], -1).float().mean(1) for n in self.names], 1
            )
            shared = sum(extra, self.time_summary(mean_t))  # (b, d)
            for n in self.streams:
                e = own[n] if own[n].dim() == 3 else own[n].unsqueeze(1)
                mine = shared if own_extra is None else shared + own_extra[n]
                c[n] = e + self.summary_proj[n](mine).unsqueeze(1)  # (b, 1|n, d)
            return c
        per_sample = {
            n: e if e.dim() == 2 else self.time_embed[n](times[n].float().mean(1))
            for n, e in own.items()
        }
        for n in self.streams:
            total = own[n]  # (b, d) or (b, n, d)
            mine = [] if own_extra is None else [own_extra[n]]
            for part in [*(per_sample[m] for m in self.streams if m != n), *extra, *mine]:
                total = total + (part if total.dim() == 2 else part.unsqueeze(1))
            c[n] = total if total.dim() == 3 else total.unsqueeze(1)
        return c

    def forward(
        self,
        tokens: dict[str, Tensor],
        times: dict[str, Tensor],
        targets: dict[str, Tensor] | None = None,
        mask: Tensor | None = None,
        keep: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Predict each generated modality's velocity (continuous) or clean-token logits
        (discrete): a dict over ``outputs``. A flow map (``cfg.flow_map``) takes ``targets``,
        each stream's target time s (like its times), and predicts the average velocity from t
        to s, ``(x_s - x_t) / (s - t)``; without targets (s = t) it is the velocity. ``mask``
        (b, N, N) bool over the joint sequence (streams in order): which tokens each token may
        attend to (a sampler's isolation branch; default all). ``keep`` {stream: (b, k) sorted
        token indices}: training with ``token_drop``: after the stream's mixer, only these
        tokens go on through the backbone, and its outputs are theirs (b, k, ...)."""
        x, c, rope, given = self.prepare(tokens, times, targets, mask)
        if keep:
            if mask is not None or given is not None:
                raise ValueError("MMDiT.forward: keep (token_drop) takes no attention mask")
            x, c, rope = self.kept(x, c, keep)
        more = {} if mask is None else {"mask": mask}  # (a cache's run_blocks takes no mask)
        x = self.run_blocks(x, c, rope, given=given, **more)
        return {n: self.final[n](x[n], c[n]) for n in self.outputs}

    def prepare(
        self,
        tokens: dict[str, Tensor],
        times: dict[str, Tensor],
        targets: dict[str, Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None, Tensor | None]:
        """What ``forward`` feeds the blocks: each stream's embedded (and mixed) tokens x
        (b, n, d), its conditioning c (b, 1|n, d), the rotary table (None without positions)
        and, with ``isolate_given``, the given tokens (b, N) (else None)."""
        self._check_inputs(tokens, times)
        if targets is not None and self.jump_embed is None:
            raise ValueError(
                "MMDiT.forward: targets need a model built with flow_map = true (anydit distill)"
            )
        x = {n: self.embed[n](tokens[n]) for n in self.streams}  # (b, n, d)
        for n, table in self.pos_embed.items():
            x[n] = table(x[n])
        pooled = {n: tokens[n] for n in self.pooled_embed}
        given = self.given_tokens(times) if self.cfg.isolate_given else None
        reach = None
        if mask is not None:  # which streams each stream reads: (b, S, S)
            rows = mask.split(self.stream_sizes, 1)
            reach = torch.stack(
                [
                    torch.stack([b.any((1, 2)) for b in r.split(self.stream_sizes, 2)], 1)
                    for r in rows
                ],
                1,
            )
        c = self.conditioning(times, x, pooled, targets, given, reach)
        rope = None if self.positionless else self.rope
        return self.mix(x, c), c, rope, given

    def stream_rope(self) -> dict[str, Tensor]:
        """Each stream's rows of the rotary table: (n, e/2, 2)."""
        return dict(zip(self.streams, self.rope.split(self.stream_sizes), strict=True))

    def mix(self, x: dict[str, Tensor], c: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each stream's mixer blocks (``mixer_depth``) over its own tokens."""
        if not len(self.mixer):
            return x
        x = dict(x)
        rope = self.stream_rope()
        for n, stack in self.mixer.items():
            for block in stack:
                one = None if self.positionless else rope[n]
                x[n] = block({n: x[n]}, {n: c[n]}, one)[n]
        return x

    def kept(self, x, c, keep) -> tuple[dict, dict, Tensor | None]:
        """The streams cut to their ``keep`` tokens, their per-token conditioning alike, and
        the rotary table of what is left, per row (b, 1, N', e/2, 2)."""
        x, c = dict(x), dict(c)
        rope = self.stream_rope()
        b = next(iter(x.values())).shape[0]
        rows = []
        for n in self.streams:
            table = rope[n].expand(b, -1, -1, -1)  # (b, n, e/2, 2)
            if n in keep:
                index = keep[n]  # (b, k)
                x[n] = x[n].gather(1, index[..., None].expand(-1, -1, x[n].shape[-1]))
                if c[n].shape[1] > 1:  # per-token times
                    c[n] = c[n].gather(1, index[..., None].expand(-1, -1, c[n].shape[-1]))
                table = table.gather(1, index[..., None, None].expand(-1, -1, *table.shape[2:]))
            rows.append(table)
        return x, c, None if self.positionless else torch.cat(rows, 1).unsqueeze(1)

    def given_tokens(self, times: dict[str, Tensor]) -> Tensor:
        """(b, N) bool over the joint sequence (streams in order): the tokens at time 1."""
        parts = []
        for n in self.streams:
            t = times[n]
            t = t[:, None].expand(-1, self.modalities[n].num_tokens) if t.dim() == 1 else t
            parts.append(t >= 1)
        return torch.cat(parts, 1)

    def run_blocks(
        self,
        x: dict[str, Tensor],
        c: dict[str, Tensor],
        rope: Tensor | None,
        start: int = 0,
        stop: int | None = None,
        given: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Transformer blocks ``start`` to ``stop`` (dual-stream, then single-stream):
        x (b, n, d) per stream -> x. ``given`` (b, N) bool, with ``isolate_given``: the
        tokens that attend only to each other. ``mask`` (b, N, N): which keys each query may
        attend to (``forward``). The hook a sampling cache replaces (``sampling.cache``); the
        model itself keeps no cache state."""
        if given is not None:
            mask = isolate(given) if mask is None else mask & isolate(given)
        attend = None if mask is None else Masked(mask)
        for block in self.all_blocks[start:stop]:
            x = run_block(block, x, c, rope, self.cfg.checkpointing and self.training, attend)
        return x

    @property
    def all_blocks(self) -> list[nn.Module]:
        """Dual-stream blocks, then single-stream blocks, in the order they run."""
        return [*self.blocks, *self.single_blocks]
