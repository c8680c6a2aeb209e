"""Reference sharing at sampling, training-free (FreeCus, ConsiStory-style attention sharing):
the keys and values a reference value of one stream makes in every block are appended to the
attention of that stream's generated tokens, so they can copy what the reference looks like.

Ein notation: r rows of the batch (guidance branches x samples), b0 references, h heads,
N tokens of all streams, n the shared stream's tokens, e head dim.

    reference rows   the stream given (at ``time``; 1 = clean) and every other stream dropped
                     (one noise draw shared by all references, so a reference's keys depend
                     on its value alone), run once through the blocks; each block's keys and
                     values are kept
    at sampling      block i: k = [k_own (r, h, N, e) | k_ref[i] of the stream (r, h, n, e)],
                     v alike; the stream's queries read the reference keys with their logits
                     raised by log(weight), the other streams' queries do not read them

``weight`` 1 gives a reference token the pull of one of the sample's own tokens; 0 leaves the
sampler bit for bit as without it (nothing is appended). Every token of the stream reads the
reference (known tokens of an inpainting too), except given tokens of a model that isolates
them (``isolate_given``: they read given tokens only). The reference's keys carry its own
rotary positions (the stream's grid), so a token reads the reference at its own place most
easily. References tile over the samples as control maps do (``model.control.tile_rows``: 1,
one per sample, or a divisor), and the two do not combine (each replaces ``run_blocks``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import Tensor

from anydit.model.block import Masked, isolate, run_block
from anydit.model.control import tile_rows


class _Capture:
    """An ``Attend`` that keeps every block's keys and values and changes nothing."""

    def __init__(self):
        self.kv: list[tuple[Tensor, Tensor]] = []

    def __call__(self, k: Tensor, v: Tensor):
        self.kv.append((k, v))
        return k, v, None


class _Shared:
    """An ``Attend`` that appends the reference's keys and values of its next block."""

    def __init__(self, refs: list[tuple[Tensor, Tensor]], bias: Tensor, tile: int):
        self.refs, self.bias, self.tile, self.i = refs, bias, tile, 0

    def __call__(self, k: Tensor, v: Tensor):
        k_ref, v_ref = self.refs[self.i]  # (b0, h, n, e)
        self.i += 1
        k = torch.cat([k, k_ref.repeat(self.tile, 1, 1, 1).to(k.dtype)], 2)  # (r, h, N + n, e)
        v = torch.cat([v, v_ref.repeat(self.tile, 1, 1, 1).to(v.dtype)], 2)
        return k, v, self.bias  # float32: log(weight) unrounded (SDPA adds it in any dtype)


def _reference_kv(model, stream: str, value: Tensor, time: float, seed: int) -> list:
    """Each block's keys and values (b0, h, n, e) of the stream, for the reference rows."""
    mods = model.modalities
    device = next(model.parameters()).device
    b0 = value.shape[0]
    clean = mods[stream].tokenize(mods[stream].prepare(value, b0)).to(device).float()
    gen = torch.Generator(device).manual_seed(seed)
    tokens, times = {}, {}
    for name, m in mods.items():
        if m.discrete:
            drop = torch.full((b0, m.num_tokens), m.mask_id, dtype=torch.long, device=device)
        else:
            drop = torch.randn(1, m.num_tokens, m.token_dim, generator=gen, device=device)
            drop = drop.expand(b0, -1, -1)  # one draw for every reference
        tokens[name], times[name] = drop, torch.zeros(b0, device=device)
        if name == stream:
            tokens[name] = time * clean + (1 - time) * drop  # t = 0 noise, t = 1 data
            times[name] = torch.full((b0,), time, device=device)
        if model.cfg.per_token_time:
            times[name] = times[name][:, None].expand(-1, m.num_tokens).contiguous()
    capture = _Capture()
    with torch.no_grad():
        x, c, rope, given = model.prepare(tokens, times)
        mask = None if given is None else isolate(given)
        for block in model.all_blocks:
            attend = capture if mask is None else _Chain(Masked(mask), capture)
            x = run_block(block, x, c, rope, False, attend)
    lo = sum(model.stream_sizes[: model.streams.index(stream)])
    hi = lo + model.stream_sizes[model.streams.index(stream)]
    return [(k[:, :, lo:hi], v[:, :, lo:hi]) for k, v in capture.kv]


class _Chain:
    """A mask's ``Attend``, then a capture of the (unchanged) keys and values."""

    def __init__(self, masked, capture):
        self.masked, self.capture = masked, capture

    def __call__(self, k, v):
        k, v, mask = self.masked(k, v)
        self.capture(k, v)
        return k, v, mask


class _SharedBlocks:
    """``run_blocks`` with the reference appended (see the module docstring)."""

    def __init__(self, model, stream: str, refs, weight: float):
        self.model, self.stream, self.refs, self.weight = model, stream, refs, weight
        self.samples: int | None = None  # set by ``sample`` for its call: rows are (groups n)

    def __call__(self, x, c, rope, start=0, stop=None, given=None, mask=None):
        model = self.model
        if start != 0 or stop is not None:
            raise ValueError("reference: a model sharing a reference runs all its blocks at once")
        rows = next(iter(x.values())).shape[0]
        tile = tile_rows(self.refs[0][0].shape[0], rows, self.samples, "references")
        sizes, names = model.stream_sizes, model.streams
        total, n = sum(sizes), sizes[names.index(self.stream)]
        if x[self.stream].shape[1] != n:
            raise ValueError(f"reference: stream {self.stream!r} lacks tokens (no token_drop)")
        lo = sum(sizes[: names.index(self.stream)])
        device = next(iter(x.values())).device
        reads = torch.full((rows, total), float("-inf"), device=device)
        reads[:, lo : lo + n] = math.log(self.weight)  # the stream's queries read the reference
        if given is not None:  # isolate_given: a given token reads given tokens only
            reads = reads.masked_fill(given, float("-inf"))
            mask = isolate(given) if mask is None else mask & isolate(given)
        own = torch.zeros(rows, 1, total, total, device=device)
        if mask is not None:
            own = own.masked_fill(~mask[:, None], float("-inf"))
        ref = reads[:, None, :, None].expand(rows, 1, total, n)
        attend = _Shared(self.refs, torch.cat([own, ref], -1), tile)  # (r, 1, N, N + n)
        checkpointing = model.cfg.checkpointing and model.training
        for block in model.all_blocks:
            x = run_block(block, x, c, rope, checkpointing, attend)
        return x


@contextmanager
def shared_reference(
    model, stream: str, value: Tensor, weight: float = 1.0, time: float = 1.0, seed: int = 0
):
    """Within the scope, ``model``'s ``stream`` tokens also attend to a reference ``value``
    (b0, *the stream's raw shape), as a task would give it, made at ``time`` (1: the
    clean value; below 1, noised with ``seed``), their pull scaled by ``weight`` >= 0 (0: no
    effect). ``sample`` and everything else that calls the model see it unchanged."""
    if stream not in model.modalities or model.modalities[stream].discrete:
        have = [n for n, m in model.modalities.items() if not m.discrete]
        raise ValueError(f"reference: stream {stream!r} must be a continuous stream of {have}")
    if not (0 <= weight < math.inf) or not 0 <= time <= 1:
        raise ValueError(
            f"reference: expected a finite weight >= 0 and time in [0, 1], got {weight}, {time}"
        )
    if "run_blocks" in model.__dict__:
        raise ValueError("reference: the model's blocks are already wrapped (a cache or a branch)")
    if weight == 0:
        yield model
        return
    refs = _reference_kv(model, stream, value, time, seed)
    model.run_blocks = _SharedBlocks(model, stream, refs, float(weight))
    try:
        yield model
    finally:
        del model.run_blocks
