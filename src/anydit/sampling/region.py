"""Region-adaptive sampling (RAS) and key-value reuse: per network evaluation, compute only
some tokens and carry the others.

A *kept* token does not run through the blocks: in every block the computed tokens attend to
its keys and values from the last evaluation that computed it, and its output is its input plus
the blocks' residual from then. Which tokens are computed on an evaluation:

* *dense* evaluations compute every token: the first (two with ``ratio`` < 1, so every token
  has a rate of change) and, with ``ratio`` < 1, every ``interval``-th after;
* ``reuse`` (``SampleConfig.kv_reuse``): tokens whose time does not move are kept: given
  tokens (t = 1), every token of a stream that holds between its own steps (asynchronous step
  counts) and discrete streams on a solver's second evaluation (their update reads the first).
  Exact for given tokens of a model trained with ``isolate_given`` (they read nothing that
  moves); otherwise an approximation, since given tokens read the noisy ones;
* ``ratio`` < 1 (``cache: region``): of each generated stream's moving tokens, that share with
  the largest expected change since they were last computed: the rate at which the token's
  residual changed between its last two computations, per unit of the sampler's clock, times
  the clock since. A token left alone gains priority, so none starves. RAS (Liu et al., 2025)
  ranks by the predicted noise and keeps a starvation count; the rate x age score does both.

Each row (sample x guidance branch) chooses its own tokens; every row of a stream computes the
same number (its busiest row's), so one gather serves the batch. ``ratio`` 1 without ``reuse``
computes every token every time: the samples of no cache, bit for bit.

Ein notation: r rows, n tokens of a stream, N of all streams, a computed tokens, h heads,
e head dim, d width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anydit.sampling.cache import BlockCache, Streams


class _Exchange:
    """``Attend`` for one block: write the computed tokens' keys and values (r, h, a, e) into
    the block's store (r, h, N, e) and attend over the whole store."""

    def __init__(self, store: list, index: Tensor | None, mask: Tensor | None):
        self.store, self.index, self.mask = store, index, mask

    def __call__(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.index is None:  # every token computed: keep them, attend as usual
            self.store[:] = [k, v]
            return k, v, self.mask
        keys, values = self.store
        where = self.index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        keys.scatter_(2, where, k.to(keys.dtype))
        values.scatter_(2, where, v.to(values.dtype))
        return keys, values, self.mask


class RegionCache(BlockCache):
    """Compute a share of the tokens per evaluation; keep the others (see the module)."""

    def __init__(self, ratio: float = 1.0, interval: int = 3, reuse: bool = False):
        super().__init__()
        self.ratio, self.interval, self.reuse = ratio, interval, reuse
        self.warmup = 1 if ratio >= 1 else 2
        self.count = 0
        self.static: dict[str, Tensor] = {}  # per stream (r, n) bool: time does not move
        self.generated: set[str] = set()
        self.kv: list[list[Tensor]] = []  # per block [keys, values] (r, h, N, e)
        self.residual: Streams = {}  # per stream (r, n, d): blocks' output - input
        self.rate: Streams = {}  # per stream (r, n): residual change per unit of clock
        self.seen: Streams = {}  # per stream (r, n): clock of the last computation
        self.ran: Streams = {}  # per stream (r, n): evaluation count then
        self.trace: list[Streams] = []  # per evaluation, per stream (r, n) bool: computed
        self.stats |= {"tokens": 0, "tokens_computed": 0}

    def attach(self, model, groups: int, generated=()) -> None:
        """As ``BlockCache.attach``; ``generated``: the streams whose tokens ``ratio`` ranks."""
        if any(getattr(b, "streams", {}) and any(
            layer.attn2 is not None for layer in b.streams.values()
        ) for b in model.blocks):  # fmt: skip
            raise ValueError(
                "sample.cache 'region' / kv_reuse: not for models whose streams have a second, "
                "own attention (model.dual_attention, SD3.5)"
            )
        super().attach(model, groups)
        self.generated = set(generated)
        self.kv = [[] for _ in model.all_blocks]

    def tick(self, clock: float, static: dict[str, Tensor] | None = None) -> None:
        """The clock of the evaluation about to run and, per stream, its tokens whose time
        does not move on it (r, n) bool."""
        self.clock = clock
        self.static = static or {}

    def _choose(self, name: str, n: int, part: slice) -> Tensor | None:
        """(rows of ``part``, a) sorted token indices to compute in stream ``name``, or None
        for all of them."""
        static = self.static.get(name) if self.reuse else None
        ranked = self.ratio < 1 and name in self.generated
        if static is None and not ranked:
            return None
        rate, seen, ran = (self.rate[name][part], self.seen[name][part], self.ran[name][part])
        moving = torch.ones_like(rate, dtype=torch.bool) if static is None else ~static[part]
        share = self.ratio if ranked else 1.0
        a = min(n, math.ceil(share * int(moving.sum(1).max())))
        if a == n:
            return None
        # expected change since the last computation; ties (a clock standing still) go to
        # the tokens left alone for the most evaluations
        score = rate * (self.clock - seen) + 1e-9 * (self.count - ran) if ranked else moving
        score = score.float().masked_fill(~moving, -math.inf)
        return score.topk(a, dim=1).indices.sort(dim=1).values

    def __call__(
        self, x: Streams, c: Streams, rope, start: int = 0, stop: int | None = None, given=None
    ):
        rows = next(iter(x.values())).shape[0]
        self.stats["evaluations"] += rows
        self.stats["blocks"] = len(self.model.all_blocks)
        dense = self.count < self.warmup or (self.ratio < 1 and self.count % self.interval == 0)
        self.count += 1
        # Guidance branches keep different tokens still (a dropped condition moves): with
        # reuse, each branch's rows choose and run on their own.
        size = rows // self.groups if self.reuse else rows
        parts = [slice(g * size, (g + 1) * size) for g in range(rows // size)]
        chosen = [{} if dense else {k: self._choose(k, v.shape[1], p) for k, v in x.items()}
                  for p in parts]  # fmt: skip
        dense = all(i is None for c_ in chosen for i in c_.values())  # every token: as plain
        computed = {k: torch.full((rows, v.shape[1]), dense) for k, v in x.items()}
        self.trace.append(computed)
        if dense:
            return self._run(x, c, rope, given, None, slice(None), computed)
        outs = [
            self._run(
                {k: v[p] for k, v in x.items()}, {k: v[p] for k, v in c.items()}, rope,
                None if given is None else given[p], ch, p, computed,
            )
            for p, ch in zip(parts, chosen, strict=True)
        ]  # fmt: skip
        return {k: torch.cat([o[k] for o in outs]) for k in x}

    def _run(self, x: Streams, c: Streams, rope, given, chosen, part: slice, computed) -> Streams:
        """Run the blocks over the chosen tokens ({stream: (r, a) indices or None for all})
        of the rows ``part``; every token of every row when ``chosen`` is None (a dense
        evaluation). Marks what ran in ``computed`` (per stream (rows, n) bool)."""
        names = list(x)
        sizes = [x[k].shape[1] for k in names]
        offsets = dict(zip(names, [sum(sizes[:i]) for i in range(len(sizes))], strict=True))
        rows = x[names[0]].shape[0]
        self.stats["tokens"] += rows * sum(sizes)
        stores = [[t[part] for t in store] for store in self.kv]  # views: written through
        if chosen is None:
            picks = {k: None for k in names}
            xs, cs, index, rope_a = x, c, None, rope
            mask = None if given is None else _isolation(given, given)
        else:
            every = {k: torch.arange(x[k].shape[1], device=x[k].device) for k in names}
            picks = {k: every[k].expand(rows, -1) if i is None else i for k, i in chosen.items()}
            picks = {k: i for k, i in picks.items() if i.shape[1] > 0}
            if not picks:  # nothing moves on this evaluation: every output is carried
                return {k: x[k] + self.residual[k][part].to(x[k].dtype) for k in names}
            xs = {k: _take(x[k], i) for k, i in picks.items()}
            cs = {k: c[k] if c[k].shape[1] == 1 else _take(c[k], i) for k, i in picks.items()}
            index = torch.cat([offsets[k] + i for k, i in picks.items()], 1)  # (r, a)
            rope_a = None if rope is None else rope[index].unsqueeze(1)  # (r, 1, a, e/2, 2)
            mask = None if given is None else _isolation(given.gather(1, index), given)
            for k, i in picks.items():
                computed[k][part] = computed[k][part].scatter(1, i.cpu(), True)
        out = dict(xs)
        for block, store in zip(self.model.all_blocks, stores, strict=True):
            out = block(out, cs, rope_a, _Exchange(store, index, mask))
        if chosen is None:
            self.kv = [[t.clone() for t in store] for store in stores]
        self.stats["block_runs"] += rows * len(self.kv)
        self.stats["tokens_computed"] += sum(int(v.shape[0] * v.shape[1]) for v in xs.values())
        result = {}
        for k in names:
            if chosen is None:
                self._note(k, None, out[k] - x[k], part)
                result[k] = out[k]
                continue
            result[k] = x[k] + self.residual[k][part].to(x[k].dtype)
            if k in picks:
                i = picks[k]
                self._note(k, i, out[k] - xs[k], part)
                where = i[..., None].expand(-1, -1, x[k].shape[-1])
                result[k].scatter_(1, where, out[k].to(result[k].dtype))
        return result

    def _note(self, name: str, index: Tensor | None, fresh: Tensor, part: slice) -> None:
        """Store the computed tokens' residual (r, a, d) of rows ``part`` and, for ranking,
        their rate of change and when they were computed."""
        if index is None:
            rows, n = fresh.shape[:2]
            index = torch.arange(n, device=fresh.device).expand(rows, -1)
            if name not in self.residual:
                self.residual[name] = fresh.clone()
                self.rate[name] = torch.zeros(rows, n, device=fresh.device)
                self.seen[name] = torch.full((rows, n), self.clock, device=fresh.device)
                self.ran[name] = torch.full((rows, n), self.count, device=fresh.device)
                return
        residual, seen = self.residual[name][part], self.seen[name][part]
        where = index[..., None].expand(-1, -1, fresh.shape[-1])
        gap = (self.clock - seen.gather(1, index)).clamp(min=1e-6)
        change = (fresh.float() - residual.gather(1, where).float()).norm(dim=-1) / gap  # (r, a)
        self.rate[name][part] = self.rate[name][part].scatter(1, index, change)
        self.seen[name][part] = seen.scatter(1, index, torch.full_like(gap, self.clock))
        self.ran[name][part] = self.ran[name][part].scatter(1, index, float(self.count))
        self.residual[name][part] = residual.scatter(1, where, fresh.to(residual.dtype))


def _take(x: Tensor, index: Tensor) -> Tensor:
    """Rows' own tokens: x (r, n, d), index (r, a) -> (r, a, d)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _isolation(given_q: Tensor, given_k: Tensor) -> Tensor:
    """``isolate_given``'s mask for queries given_q (r, a) over keys given_k (r, N)."""
    return (~given_q[:, :, None] | given_k[:, None, :]).unsqueeze(1)


__all__ = ["RegionCache"]
