"""The transformer block: per-stream weights around one joint attention.

Ein notation: b batch, n tokens (of one stream), N tokens of all streams, d stream width,
h heads, e head dim, k modulation chunks.

A dual-stream block (SD3 MM-DiT, Mixture-of-Transformers) gives every modality its own
``StreamLayer``; a single-stream block (Flux) runs one shared ``StreamLayer`` over the packed
tokens of all modalities. Both are ``joint_block`` with a different grouping.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from torch import Tensor, nn

from anydit.model.rotary import apply_rotary

ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # name -> nn.GELU(approximate=...)


class Attend(Protocol):
    """What a block's queries attend to: given the keys (rotated) and values (b, h, N, e) of
    the tokens being computed, returns the keys and values to attend over (b, h, M, e) and a
    mask (b, 1, N, M) bool, a float bias like it, or None. ``MMDiT.run_blocks`` uses one to
    keep given tokens from reading noisy ones (``isolate_given``); a region cache
    (``sampling.region``) to add the kept keys and values of tokens it does not recompute;
    reference sharing (``sampling.reference``) to append a reference's."""

    def __call__(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]: ...


class Masked:
    """``Attend`` over the tokens' own keys and values under a mask (b, N, N) bool: query i
    may read key j where true."""

    def __init__(self, mask: Tensor):
        self.mask = mask.unsqueeze(1)  # (b, 1, N, N)

    def __call__(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return k, v, self.mask


def isolate(given: Tensor) -> Tensor:
    """``isolate_given``'s mask (b, N, N): a given token (time 1) reads only given tokens; the
    others read everything. given (b, N) bool."""
    return ~given[:, :, None] | given[:, None, :]


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention: q (b, h, Nq, e) over k, v (b, h, Nk, e); ``mask`` (b, 1,
    Nq, Nk) bool, true where a query may attend to a key (None: everywhere), or a float bias
    added to the logits (-inf: not at all).

    On a CPU, PyTorch's fused bfloat16 kernel is slow for short sequences (measured with torch
    2.13 on 2 cores, forward + backward at 6k tokens: N = 49 takes 60 ms in bf16 against 21 ms
    in fp32; they cross near N = 256), so short bf16 sequences are attended in float32 (with
    autocast off: it would cast them back).
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] < 256:
        if mask is not None and mask.dtype != torch.bool:  # an additive bias: float32 too
            mask = mask.float()
        with torch.autocast("cpu", enabled=False):
            o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        return o.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def split_linear(layer: nn.Linear, x: Tensor, sizes: list[int]) -> list[Tensor]:
    """``layer(x).split(sizes, -1)`` with each part copied into its own tensor: one matmul
    (the very numbers of ``layer(x)``), and backward keeps alive only the parts it needs. With
    views instead, QK norm's saved q would hold the whole fused qkv output, v's third too
    (+4% activation memory at the benchmarks' modest config)."""
    return [part.contiguous() for part in layer(x).split(sizes, dim=-1)]


def _heads(qk: Tensor, v: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(b, n, 2 h e) and (b, n, h e) -> q, k, v each (b, h, n, e)."""
    q, k = rearrange(qk, "b n (two h e) -> two b h n e", two=2, h=heads)
    return q, k, rearrange(v, "b n (h e) -> b h n e", h=heads)


def _rotate(x: Tensor, rope: Tensor | None) -> Tensor:
    """Rotary positions, or none when the model has no positions at all (``rope`` None)."""
    return x if rope is None else apply_rotary(x, rope)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift; shift/scale broadcast over tokens when (b, 1, d)."""
    return x * (1 + scale) + shift


class QKNorm(nn.RMSNorm):
    """RMSNorm over the head dim, with its weight cast to the input's dtype so bf16 autocast
    keeps the fused kernel (a float32 weight on a bf16 input falls back to a slow path)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


def qk_norms(head_dim: int, on: bool) -> tuple[nn.Module, nn.Module]:
    """The (q, k) RMSNorms over the head dim, or identities when QK norm is off."""
    if not on:
        return nn.Identity(), nn.Identity()
    return QKNorm(head_dim, eps=1e-6), QKNorm(head_dim, eps=1e-6)


def _mlp(width: int, hidden: int, activation: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, hidden),
        nn.GELU(approximate=ACTIVATIONS[activation]),
        nn.Linear(hidden, width),
    )


class SelfAttention(nn.Module):
    """Attention of one stream's tokens to themselves (SD3.5's second attention, MMDiT-X)."""

    def __init__(self, width: int, heads: int, head_dim: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * heads * head_dim)
        self.q_norm, self.k_norm = qk_norms(head_dim, qk_norm)
        self.out = nn.Linear(heads * head_dim, width)

    def forward(self, h: Tensor, rope: Tensor | None) -> Tensor:
        """(b, n, d) modulated input, rotary table (n, e/2, 2) or None -> (b, n, d)."""
        inner = self.qkv.out_features // 3
        q, k, v = _heads(*split_linear(self.qkv, h, [2 * inner, inner]), self.heads)
        q, k = _rotate(self.q_norm(q), rope), _rotate(self.k_norm(k), rope)
        return self.out(rearrange(attention(q, k, v), "b h n e -> b n (h e)"))


class StreamLayer(nn.Module):
    """One stream's weights in a block: adaLN-Zero modulation, fused qkv, QK RMSNorm, output
    projection and MLP. Attention itself is joint, so it lives in ``joint_block``.

    Modulation chunks (each of the stream's width): shift, scale, gate before attention;
    shift, scale, gate before the MLP; with ``self_attention`` a third (shift, scale, gate) for
    the stream's own attention. A ``pre_only`` layer (a condition stream in the last block,
    SD3's context_pre_only) only lends keys and values: chunks shift, scale; no output.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        head_dim: int,
        mlp_ratio: float,
        qk_norm: bool,
        activation: str = "gelu",
        pre_only: bool = False,
        self_attention: bool = False,
        moe: dict | None = None,
        dynamic: int = 0,
    ):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.pre_only = pre_only
        chunks = 2 if pre_only else 9 if self_attention else 6
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, chunks * width))
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * inner)  # one fused projection: one matmul, not three
        self.q_norm, self.k_norm = qk_norms(head_dim, qk_norm)
        if not pre_only:
            self.out = nn.Linear(inner, width)
            self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            hidden = int(width * mlp_ratio)
            if moe:  # experts behind a router (anydit.model.experts)
                from anydit.model.experts import Experts

                self.mlp = Experts(width, hidden, activation, **moe)
            else:
                self.mlp = _mlp(width, hidden, activation)
        self.width_router = None  # timestep-dynamic width (anydit.model.dynamic)
        if dynamic and not pre_only:
            from anydit.model.dynamic import WidthRouter

            self.width_router = WidthRouter(width, hidden, dynamic)
        self.attn2 = SelfAttention(width, heads, head_dim, qk_norm) if self_attention else None

    def begin(self, x: Tensor, mod: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(b, n, d) -> q, k, v each (b, h, n, e), q and k normalised; and the normed input."""
        normed = self.norm1(x)
        inner = self.qkv.out_features // 3
        h = modulate(normed, mod[0], mod[1])
        q, k, v = _heads(*split_linear(self.qkv, h, [2 * inner, inner]), self.heads)
        return self.q_norm(q), self.k_norm(k), v, normed

    def finish(
        self, x: Tensor, attn: Tensor, mod: tuple[Tensor, ...], normed: Tensor, rope: Tensor
    ) -> Tensor:
        """Residual updates after attention; attn (b, n, h e) -> x (b, n, d)."""
        if self.pre_only:
            return x
        return self.after_attention(x, self.out(attn), mod, normed, rope)

    def after_attention(
        self, x: Tensor, a: Tensor, mod: tuple[Tensor, ...], normed: Tensor | None, rope
    ) -> Tensor:
        """The residual updates from the projected attention output a (b, n, d) on: the
        gated attention residual, the second attention (if any) and the MLP."""
        _, _, gate1, shift2, scale2, gate2 = mod[:6]
        out = x + gate1 * a
        if self.attn2 is not None:
            out = out + mod[8] * self.attn2(modulate(normed, mod[6], mod[7]), rope)
        h = modulate(self.norm2(out), shift2, scale2)
        if self.width_router is not None:  # only the groups on for this time
            return out + gate2 * self.width_router(self.mlp, h, scale2)
        if isinstance(self.mlp, nn.Sequential):
            return out + gate2 * self.mlp(h)
        return out + gate2 * self.mlp(h, scale2)  # experts: the router also sees the time


class ParallelLayer(nn.Module):
    """Flux's single-stream layer: attention and MLP side by side from one modulated input,
    one output projection over both. Modulation chunks: shift, scale, gate."""

    def __init__(
        self,
        width: int,
        heads: int,
        head_dim: int,
        mlp_ratio: float,
        qk_norm: bool,
        activation: str = "gelu",
    ):
        super().__init__()
        self.inner, self.hidden = heads * head_dim, int(width * mlp_ratio)
        self.heads = heads
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv_mlp = nn.Linear(width, 3 * self.inner + self.hidden)  # one matmul for both
        self.q_norm, self.k_norm = qk_norms(head_dim, qk_norm)
        self.act = nn.GELU(approximate=ACTIVATIONS[activation])
        self.out = nn.Linear(self.inner + self.hidden, width)

    def begin(self, x: Tensor, mod: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(b, n, d) -> q, k, v (b, h, n, e) and the MLP's hidden activation (b, n, hidden)."""
        h = modulate(self.norm1(x), mod[0], mod[1])
        qk, v, hidden = split_linear(self.qkv_mlp, h, [2 * self.inner, self.inner, self.hidden])
        q, k, v = _heads(qk, v, self.heads)
        return self.q_norm(q), self.k_norm(k), v, self.act(hidden)

    def finish(
        self, x: Tensor, attn: Tensor, mod: tuple[Tensor, ...], hidden: Tensor, rope: Tensor
    ) -> Tensor:
        return x + mod[2] * self.out(torch.cat([attn, hidden], dim=-1))


def joint_block(
    layers: list[nn.Module],
    xs: list[Tensor],
    mods: list[Tensor],
    rope: Tensor | None,
    attend: Attend | None = None,
) -> list[Tensor]:
    """Run ``layers[i]`` on ``xs[i]`` (b, n_i, d) with modulation ``mods[i]`` (b, 1|n_i, k d),
    attending jointly over all tokens (rotary table ``rope`` (N, e/2, 2), or (b, 1, N, e/2, 2)
    per row; None: no positions, as in SD3). ``attend``: what the queries attend to instead of
    these tokens' own keys and values alone (``Attend``). Returns the xs."""
    chunks = [m.chunk(m.shape[-1] // x.shape[-1], dim=-1) for m, x in zip(mods, xs, strict=True)]
    qs, ks, vs, carry = zip(
        *[layer.begin(x, c) for layer, x, c in zip(layers, xs, chunks, strict=True)], strict=True
    )
    q, ps = pack(list(qs), "b h * e")  # (b, h, N, e)
    k, _ = pack(list(ks), "b h * e")
    v, _ = pack(list(vs), "b h * e")
    q, k = _rotate(q, rope), _rotate(k, rope)
    mask = None
    if attend is not None:
        k, v, mask = attend(k, v)
    o = attention(q, k, v, mask)  # (b, h, N, e)
    outs = unpack(o, ps, "b h * e")
    sizes = [x.shape[1] for x in xs]
    ropes = [None] * len(xs) if rope is None else rope.split(sizes, -3)  # each stream's rows
    return [
        layer.finish(x, rearrange(o_i, "b h n e -> b n (h e)"), c, extra, r)
        for layer, x, o_i, c, extra, r in zip(layers, xs, outs, chunks, carry, ropes, strict=True)
    ]


class DualStreamBlock(nn.Module):
    """One ``StreamLayer`` per modality, one joint attention. ``pre_only`` and
    ``self_attention`` name the streams whose layer has that form."""

    def __init__(
        self,
        widths: dict[str, int],
        *layer_args,
        pre_only: tuple[str, ...] = (),
        self_attention: tuple[str, ...] = (),
        moe: dict[str, dict] | None = None,
        dynamic: int = 0,
    ):
        super().__init__()
        moe = moe or {}
        self.streams = nn.ModuleDict(
            {
                name: StreamLayer(
                    w,
                    *layer_args,
                    pre_only=name in pre_only,
                    self_attention=name in self_attention,
                    moe=moe.get(name),
                    dynamic=dynamic,
                )
                for name, w in widths.items()
            }
        )

    def forward(
        self, x: dict[str, Tensor], c: dict[str, Tensor], rope: Tensor, attend: Attend | None = None
    ) -> dict[str, Tensor]:
        names = list(x)
        layers = [self.streams[n] for n in names]
        mods = [self.streams[n].modulation(c[n]) for n in names]  # (b, 1|n, k d)
        out = joint_block(layers, [x[n] for n in names], mods, rope, attend)
        return dict(zip(names, out, strict=True))


class SingleStreamBlock(nn.Module):
    """One shared layer over all tokens (Flux's single-stream blocks): a ``StreamLayer``
    (``parallel`` false) or a ``ParallelLayer``. Each token is still modulated by its own
    stream's conditioning vector."""

    def __init__(
        self,
        width: int,
        *layer_args,
        parallel: bool = False,
        moe: dict | None = None,
        dynamic: int = 0,
    ):
        super().__init__()
        if parallel:  # (its MLP shares the attention's matmul: no dynamic width)
            self.layer = ParallelLayer(width, *layer_args)
        else:
            self.layer = StreamLayer(width, *layer_args, moe=moe, dynamic=dynamic)

    def forward(
        self, x: dict[str, Tensor], c: dict[str, Tensor], rope: Tensor, attend: Attend | None = None
    ) -> dict[str, Tensor]:
        names = list(x)
        mods = [self.layer.modulation(c[n]).expand(-1, x[n].shape[1], -1) for n in names]
        xs, ps = pack([x[n] for n in names], "b * d")  # (b, N, d)
        mod, _ = pack(mods, "b * d")  # (b, N, k d)
        (out,) = joint_block([self.layer], [xs], [mod], rope, attend)
        return dict(zip(names, unpack(out, ps, "b * d"), strict=True))


def attention_layers(block: nn.Module) -> dict[str, StreamLayer]:
    """The layers whose projected attention output ``forecast_block`` can stand in for: a
    dual-stream block's streams (by name) or a sequential single-stream block's one layer
    ("*"); none for Flux's parallel layer (its MLP shares the attention's input matmul) or a
    stream with a second, own attention (SD3.5)."""
    layers = dict(block.streams) if hasattr(block, "streams") else {"*": block.layer}
    if any(not isinstance(v, StreamLayer) or v.attn2 is not None for v in layers.values()):
        return {}
    return layers


def forecast_block(block: nn.Module, x: dict[str, Tensor], c: dict[str, Tensor], attn) -> dict:
    """A block run with each layer's projected attention output taken from ``attn`` ({stream
    or "*": (b, n, d)}, e.g. a forecast) instead of computed: the modulation, the gated
    residuals and the MLP still run; the qkv projection, attention and output projection do
    not. Equals the block's forward when ``attn`` holds what the forward computes."""
    layers = attention_layers(block)
    if "*" in layers:  # one shared layer over the packed tokens of all streams
        names = list(x)
        layer = layers["*"]
        mods = [layer.modulation(c[n]).expand(-1, x[n].shape[1], -1) for n in names]
        xs, ps = pack([x[n] for n in names], "b * d")  # (b, N, d)
        mod, _ = pack(mods, "b * d")  # (b, N, k d)
        out = layer.after_attention(xs, attn["*"], mod.chunk(6, dim=-1), None, None)
        return dict(zip(names, unpack(out, ps, "b * d"), strict=True))
    out = {}
    for n, h in x.items():
        layer = layers[n]
        if layer.pre_only:
            out[n] = h
            continue
        m = layer.modulation(c[n])  # (b, 1|n, k d)
        out[n] = layer.after_attention(h, attn[n], m.chunk(6, dim=-1), None, None)
    return out


def run_block(block: nn.Module, x, c, rope, checkpointing: bool, attend: Attend | None = None):
    """Call a block, recomputing its activations in backward when ``checkpointing``."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, c, rope, attend, use_reentrant=False)
    return block(x, c, rope, attend)
