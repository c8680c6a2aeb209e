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

from anydit.config import ModalityConfig, ModelConfig
from anydit.modalities import Modality, build_modalities
from anydit.model.block import DualStreamBlock, SingleStreamBlock, modulate, run_block
from anydit.model.embeddings import TimeEmbedder, TimeSummary
from anydit.model.rotary import rotary_angles, rotary_table

_STREAM_DICTS = ("embed", "time_embed", "summary_proj", "pool_proj", "final", "streams")


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a zero-initialised projection to the stream's outputs."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj = nn.Linear(width, out_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))


class MMDiT(nn.Module):
    """Any-to-any diffusion transformer over the given modalities."""

    def __init__(self, modalities: list[ModalityConfig], cfg: ModelConfig):
        super().__init__()
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
        widths = {n: m.cfg.width or cfg.width for n, m in self.modalities.items()}
        self.embed = nn.ModuleDict(
            {
                n: nn.Embedding(m.token_dim + 1, widths[n])
                if m.discrete
                else nn.Linear(m.token_dim, widths[n])
                for n, m in self.modalities.items()
            }
        )
        self.time_embed = nn.ModuleDict({n: TimeEmbedder(cfg.time_dim, widths[n]) for n in names})
        self.time_summary = TimeSummary(len(names), cfg.time_dim, cfg.width)
        self.summary_proj = nn.ModuleDict({n: nn.Linear(cfg.width, widths[n]) for n in names})
        self.pool_proj = (
            nn.ModuleDict({n: nn.Linear(widths[n], cfg.width) for n in names})
            if cfg.pooled_cond
            else None
        )
        block_args = (cfg.heads, cfg.head_dim, cfg.mlp_ratio, cfg.qk_norm, cfg.activation)
        self.blocks = nn.ModuleList(
            [DualStreamBlock(widths, *block_args) for _ in range(cfg.depth)]
        )
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(widths[names[0]], *block_args) for _ in range(cfg.single_depth)]
        )
        self.final = nn.ModuleDict(
            {n: FinalLayer(widths[n], m.token_dim) for n, m in self.modalities.items()}
        )
        angles = rotary_angles(
            torch.cat([m.positions() for m in self.modalities.values()]),
            cfg.head_dim,
            cfg.rope_theta,
        )  # (N, e/2)
        self.register_buffer("rope", rotary_table(angles), persistent=False)  # (N, e/2, 2)
        self.initialize_weights()

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
        """Stop gradients to the weights of ``streams`` (modality names and/or "shared").
        Returns how many parameters were frozen."""
        unknown = sorted(set(streams) - set(self.modalities) - {"shared"})
        if unknown:
            raise ValueError(
                f"freeze: unknown streams {unknown}; expected {self.names} or 'shared'"
            )
        frozen = 0
        for name, p in self.named_parameters():
            if self.stream_of(name) in streams:
                p.requires_grad_(False)
                frozen += p.numel()
        return frozen

    def initialize_weights(self) -> None:
        """DiT's recipe: Xavier linears, N(0, 0.02) embeddings and time MLPs, and zeros for every
        adaLN modulation and final projection, so each block starts as the identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for emb in [*self.time_embed.values(), self.time_summary]:
            for layer in emb.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        layers = [layer for b in self.blocks for layer in b.streams.values()]
        layers += [b.layer for b in self.single_blocks]
        for mod in [layer.modulation[-1] for layer in layers] + [
            f.modulation[-1] for f in self.final.values()
        ]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
        for f in self.final.values():
            nn.init.zeros_(f.proj.weight)
            nn.init.zeros_(f.proj.bias)

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

    def conditioning(self, times: dict[str, Tensor], x: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-stream conditioning vectors: own time (per token if given so) + a summary of all
        modalities' times (+ their mean token embeddings x (b, n, d), with ``pooled_cond``)."""
        mean_t = torch.stack(
            [times[n].reshape(times[n].shape[0], -1).float().mean(1) for n in self.names], 1
        )
        summary = self.time_summary(mean_t)  # (b, d)
        if self.pool_proj is not None:
            summary = summary + sum(self.pool_proj[n](x[n].mean(1)) for n in self.names)
        c = {}
        for n in self.names:
            own = self.time_embed[n](times[n])  # (b, d) or (b, n, d)
            own = own.unsqueeze(1) if own.dim() == 2 else own
            c[n] = own + self.summary_proj[n](summary).unsqueeze(1)  # (b, 1|n, d)
        return c

    def forward(self, tokens: dict[str, Tensor], times: dict[str, Tensor]) -> dict[str, Tensor]:
        """Predict each modality's velocity (continuous) or clean-token logits (discrete)."""
        self._check_inputs(tokens, times)
        x = {n: self.embed[n](tokens[n]) for n in self.names}  # (b, n, d)
        c = self.conditioning(times, x)
        for block in [*self.blocks, *self.single_blocks]:
            x = run_block(block, x, c, self.rope, self.cfg.checkpointing and self.training)
        return {n: self.final[n](x[n], c[n]) for n in self.names}
