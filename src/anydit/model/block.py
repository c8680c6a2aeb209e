"""The transformer block: per-stream weights around one joint attention.

Ein notation: b batch, n tokens (of one stream), N tokens of all streams, d stream width,
h heads, e head dim, k modulation chunks.

A dual-stream block (SD3 MM-DiT, Mixture-of-Transformers) gives every modality its own
``StreamLayer``; a single-stream block (Flux) runs one shared ``StreamLayer`` over the packed
tokens of all modalities. Both are ``joint_block`` with a different grouping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from torch import Tensor, nn

from anydit.model.rotary import apply_rotary

ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # name -> nn.GELU(approximate=...)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention over (b, h, N, e).

    On a CPU, PyTorch's fused bfloat16 kernel is slow for short sequences (measured with torch
    2.13 on 2 cores, forward + backward at 6k tokens: N = 49 takes 60 ms in bf16 against 21 ms
    in fp32; they cross near N = 256), so short bf16 sequences are attended in float32 (with
    autocast off: it would cast them back).
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] < 256:
        with torch.autocast("cpu", enabled=False):
            o = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        return o.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift; shift/scale broadcast over tokens when (b, 1, d)."""
    return x * (1 + scale) + shift


class QKNorm(nn.RMSNorm):
    """RMSNorm over the head dim, with its weight cast to the input's dtype so bf16 autocast
    keeps the fused kernel (a float32 weight on a bf16 input falls back to a slow path)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class StreamLayer(nn.Module):
    """One stream's weights in a block: adaLN-Zero modulation, fused qkv, QK RMSNorm, output
    projection and MLP. Attention itself is joint, so it lives in ``joint_block``."""

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
        inner = heads * head_dim
        hidden = int(width * mlp_ratio)
        self.heads = heads
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * inner)  # one fused projection: one matmul, not three
        self.q_norm = QKNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.out = nn.Linear(inner, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(approximate=ACTIVATIONS[activation]),
            nn.Linear(hidden, width),
        )

    def qkv_heads(self, x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(b, n, d) -> q, k, v each (b, h, n, e), q and k normalised."""
        qkv = self.qkv(modulate(self.norm1(x), shift, scale))  # (b, n, 3 h e)
        q, k, v = rearrange(qkv, "b n (three h e) -> three b h n e", three=3, h=self.heads)
        return self.q_norm(q), self.k_norm(k), v

    def finish(self, x: Tensor, attn: Tensor, mod: tuple[Tensor, ...]) -> Tensor:
        """Residual updates after attention; attn (b, n, h e) -> x (b, n, d)."""
        _, _, gate1, shift2, scale2, gate2 = mod
        x = x + gate1 * self.out(attn)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


def joint_block(
    layers: list[StreamLayer], xs: list[Tensor], mods: list[Tensor], rope: Tensor
) -> list[Tensor]:
    """Run ``layers[i]`` on ``xs[i]`` (b, n_i, d) with modulation ``mods[i]`` (b, 1|n_i, 6d),
    attending jointly over all tokens (rotary table ``rope`` (N, e/2, 2)). Returns the xs."""
    chunks = [m.chunk(6, dim=-1) for m in mods]
    qs, ks, vs = zip(
        *[layer.qkv_heads(x, c[0], c[1]) for layer, x, c in zip(layers, xs, chunks, strict=True)],
        strict=True,
    )
    q, ps = pack(list(qs), "b h * e")  # (b, h, N, e)
    k, _ = pack(list(ks), "b h * e")
    v, _ = pack(list(vs), "b h * e")
    q, k = apply_rotary(q, rope), apply_rotary(k, rope)
    o = attention(q, k, v)  # (b, h, N, e)
    outs = unpack(o, ps, "b h * e")
    return [
        layer.finish(x, rearrange(o_i, "b h n e -> b n (h e)"), c)
        for layer, x, o_i, c in zip(layers, xs, outs, chunks, strict=True)
    ]


class DualStreamBlock(nn.Module):
    """One ``StreamLayer`` per modality, one joint attention."""

    def __init__(self, widths: dict[str, int], *layer_args):
        super().__init__()
        self.streams = nn.ModuleDict(
            {name: StreamLayer(w, *layer_args) for name, w in widths.items()}
        )

    def forward(
        self, x: dict[str, Tensor], c: dict[str, Tensor], rope: Tensor
    ) -> dict[str, Tensor]:
        names = list(x)
        layers = [self.streams[n] for n in names]
        mods = [self.streams[n].modulation(c[n]) for n in names]  # (b, 1|n, 6d)
        return dict(zip(names, joint_block(layers, [x[n] for n in names], mods, rope), strict=True))


class SingleStreamBlock(nn.Module):
    """One shared ``StreamLayer`` over all tokens (Flux's single-stream blocks). Each token is
    still modulated by its own stream's conditioning vector."""

    def __init__(self, width: int, *layer_args):
        super().__init__()
        self.layer = StreamLayer(width, *layer_args)

    def forward(
        self, x: dict[str, Tensor], c: dict[str, Tensor], rope: Tensor
    ) -> dict[str, Tensor]:
        names = list(x)
        mods = [self.layer.modulation(c[n]).expand(-1, x[n].shape[1], -1) for n in names]
        xs, ps = pack([x[n] for n in names], "b * d")  # (b, N, d)
        mod, _ = pack(mods, "b * d")  # (b, N, 6d)
        (out,) = joint_block([self.layer], [xs], [mod], rope)
        return dict(zip(names, unpack(out, ps, "b * d"), strict=True))


def run_block(block: nn.Module, x, c, rope, checkpointing: bool):
    """Call a block, recomputing its activations in backward when ``checkpointing``."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, c, rope, use_reentrant=False)
    return block(x, c, rope)
