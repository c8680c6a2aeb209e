"""Quantized linear layers: int8 or int4 weights, and optionally int8 activations whose scale
depends on the time of the stream the layer serves (ViDiT-Q / Q-DiT: activation ranges drift
with the timestep, so one scale per time bucket).

A ``QuantLinear`` replaces an ``nn.Linear`` of a trained model (``compress.quantize`` makes
them, ``model.file`` loads them). Its weights are stored per output channel:
``w ~ weight_q * weight_scale`` with ``weight_q`` int8 in [-127, 127] (8 bits) or two signed
4-bit values per byte in [-7, 7] (4 bits, packed along the input features). With activation
quantization each sample's input is rounded to int8 with the scale of its time bucket:
``x ~ clamp(round(x / s_b), -127, 127) * s_b``; the product of the two integer tensors is then
computed exactly and rescaled: by PyTorch's int8 matmul (``torch._int_mm``, int32 sums) where
it is faster than a float32 matmul on this machine (measured once per process:
``int8_matmul_wins``; VNNI CPUs), else in float32 (which holds every partial sum of K <= 1024
such products exactly). Both give the same numbers.

Time buckets: ``buckets`` equal bins of t in [0, 1) plus one for t = 1 (a given condition).
The bucket of each sample is set before every forward by a pre-hook on the model
(``attach_time_buckets``), from the times of the stream the layer belongs to; layers every
stream shares (single-stream blocks, the time summary) use one scale for all times.

Ein notation: b batch, n tokens, k input features, o output features.
"""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCHEMES = ("w8", "w8a8", "w4a8")
INT8_MATMUL = os.environ.get("ANYDIT_INT8_MATMUL", "auto")  # auto | on | off


@functools.cache
def int8_matmul_wins() -> bool:
    """Whether ``torch._int_mm`` beats a float32 matmul here (a (2048, 256) @ (256, 256)
    product, best of 5 each; ``ANYDIT_INT8_MATMUL=on|off`` decides instead)."""
    if INT8_MATMUL in ("on", "off"):
        return INT8_MATMUL == "on"
    if not hasattr(torch, "_int_mm"):
        return False
    a = torch.randint(-127, 128, (2048, 256), dtype=torch.int8)
    b = torch.randint(-127, 128, (256, 256), dtype=torch.int8)
    af, bf = a.float(), b.float()

    def best(fn) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    try:
        return best(lambda: torch._int_mm(a, b)) < best(lambda: af @ bf)
    except RuntimeError:  # no int8 kernel for this build or CPU
        return False


def pack_int4(q: Tensor) -> Tensor:
    """int8 values in [-8, 7], (o, k) with k even -> uint8 (o, k / 2): two per byte."""
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)  # two's complement nibbles
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(p: Tensor) -> Tensor:
    """Inverse of ``pack_int4``: uint8 (o, k / 2) -> int8 (o, k)."""
    lo = (p & 0xF).to(torch.int8)
    hi = (p >> 4).to(torch.int8)
    lo = torch.where(lo > 7, lo - 16, lo)
    hi = torch.where(hi > 7, hi - 16, hi)
    return torch.stack([lo, hi], dim=-1).flatten(-2)


class TimeBuckets:
    """The time bucket of each sample, per stream, for the forward being run (shared state of
    one model's quantized layers; set by the model's pre-hook)."""

    def __init__(self, buckets: int):
        self.buckets = buckets
        self.of: dict[str, Tensor] = {}  # stream -> (b,) long

    def set(self, times: dict[str, Tensor]) -> None:
        for name, t in times.items():
            mean = t.reshape(t.shape[0], -1).float().mean(1)  # (b,)
            bucket = (mean * self.buckets).floor().clamp(0, self.buckets - 1).long()
            self.of[name] = torch.where(mean >= 1.0, self.buckets, bucket)


class QuantLinear(nn.Module):
    """A linear layer with quantized weights (and optionally activations)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        act_bits: int,
        stream: str,
        context: TimeBuckets | None,
        bias: bool = True,
    ):
        super().__init__()
        if bits not in (4, 8) or act_bits not in (0, 8):
            raise ValueError(
                "quantized linear: expected 4 or 8 weight bits and 0 or 8 activation bits, "
                f"got {bits} and {act_bits}"
            )
        if bits == 4 and in_features % 2:
            raise ValueError(f"4-bit weights need an even input width, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.act_bits, self.stream = bits, act_bits, stream
        self.context = context
        shape = (out_features, in_features // 2) if bits == 4 else (out_features, in_features)
        dtype = torch.uint8 if bits == 4 else torch.int8
        self.register_buffer("weight_q", torch.zeros(shape, dtype=dtype))
        self.register_buffer("weight_scale", torch.ones(out_features))
        buckets = context.buckets + 1 if context is not None else 1
        if act_bits:
            self.register_buffer("act_scale", torch.ones(buckets))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def int_weight(self) -> Tensor:
        """(o, k) int8 weight values."""
        return unpack_int4(self.weight_q) if self.bits == 4 else self.weight_q

    def dequantized_weight(self) -> Tensor:
        """(o, k) float weight ``weight_q * weight_scale``."""
        return self.int_weight().float() * self.weight_scale[:, None]

    def _act_scale(self, x: Tensor) -> Tensor:
        """The activation scale of each sample: (b, 1, ..., 1) or a scalar."""
        if self.stream == "shared" or self.context is None or self.stream not in self.context.of:
            return self.act_scale.max()
        bucket = self.context.of[self.stream].to(x.device)
        if bucket.shape[0] != x.shape[0]:
            return self.act_scale.max()
        return self.act_scale[bucket].reshape(-1, *([1] * (x.dim() - 1)))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        if not self.act_bits:
            return F.linear(x, self.dequantized_weight(), self.bias).to(dtype)
        s = self._act_scale(x)
        xq = (x / s).round().clamp(-127, 127)  # integer-valued
        if x.device.type == "cpu" and int8_matmul_wins():
            flat = xq.reshape(-1, xq.shape[-1]).to(torch.int8)  # (b n, k)
            y = torch._int_mm(flat, self.int_weight().t())  # (b n, o) int32, exact
            y = y.reshape(*xq.shape[:-1], -1).float()
        else:
            y = F.linear(xq, self.int_weight().float())  # exact integer products and sums
        y = y * (s * self.weight_scale)
        return (y if self.bias is None else y + self.bias).to(dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, w{self.bits}"
            + (f"a{self.act_bits}" if self.act_bits else "")
            + f", stream={self.stream}"
        )


def scheme_bits(scheme: str) -> tuple[int, int]:
    """(weight bits, activation bits) of a scheme name."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantization scheme: expected one of {SCHEMES}, got {scheme!r}")
    return {"w8": (8, 0), "w8a8": (8, 8), "w4a8": (4, 8)}[scheme]


def layer_bits(model: nn.Module, scheme: str) -> dict[str, tuple[int, int]]:
    """{layer name: (weight bits, activation bits)} for every ``nn.Linear`` of ``model`` under
    ``scheme`` (4-bit weights need an even input width; others keep 8 bits)."""
    bits, act_bits = scheme_bits(scheme)
    out = {}
    for name, m in model.named_modules():
        if type(m) is nn.Linear:
            out[name] = (bits if m.in_features % 2 == 0 else 8, act_bits)
    return out


def attach_time_buckets(model: nn.Module, buckets: int) -> TimeBuckets:
    """A ``TimeBuckets`` filled from the times of every forward of ``model``."""
    context = TimeBuckets(buckets)

    def hook(module, args, kwargs):
        times = kwargs.get("times", args[1] if len(args) > 1 else None)
        if times is not None:
            context.set(times)

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return context


def quantize_structure(
    model: nn.Module, layers: dict[str, tuple[int, int]], buckets: int
) -> TimeBuckets:
    """Replace the named ``nn.Linear`` layers of ``model`` by empty ``QuantLinear`` ones with
    the given (weight, activation) bits (their values come from a state dict) and attach the
    time buckets. Returns the bucket context."""
    context = attach_time_buckets(model, buckets)
    for name, (bits, act_bits) in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child, None)
        if type(old) is not nn.Linear:
            raise ValueError(f"quantization: layer '{name}' is not a linear layer of this model")
        stream = model.stream_of(f"{name}.weight") if hasattr(model, "stream_of") else "shared"
        new = QuantLinear(
            old.in_features, old.out_features, bits, act_bits, stream, context, old.bias is not None
        )
        setattr(parent, child, new)
    return context
