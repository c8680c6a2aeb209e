"""Feature caches: reuse the transformer blocks' work across sampling steps.

Both replace ``MMDiT.run_blocks`` for the duration of one ``sample`` call and keep their state
per row of the batch -- so per sample, per guidance branch (branches are row groups) and per
stream (a dict of tensors):

* ``FirstBlockCache`` (ParaAttention's first-block cache, diffusers' ``FirstBlockCache``): run
  the first block; if its residual moved less than ``threshold`` (relative L2, per guidance
  branch, over all streams) since the last step that ran everything, add the cached residual of
  the other blocks instead of running them. Threshold 0 never skips: the samples are those of
  no cache, bit for bit. Safe where consecutive steps are close (many steps, a smooth path);
  it skips nothing useful at few steps, and a high threshold smooths fine detail away.
* ``TaylorCache`` (TaylorSeer): run every block on every ``interval``-th evaluation and keep the
  blocks' residual and its finite differences over the sampler's clock; in between, forecast
  the residual by a Taylor polynomial of ``order`` 1 or 2. Interval 1 never forecasts. Safe
  when the residual changes smoothly with time (mid-path); forecasts near the ends, where the
  path bends, cost most.

``stats`` counts evaluations and block runs, so the saving is measured, not assumed.

Ein notation: r rows of the batch (guidance branches x samples), n tokens, d width.
"""

from __future__ import annotations

import torch
from torch import Tensor

CACHES = ("", "first_block", "taylor", "taylor_attention", "region")
Streams = dict[str, Tensor]


class BlockCache:
    """Common parts: attaching to a model, the clock, row groups and the counts."""

    def __init__(self):
        self.model = None
        self.groups = 1
        self.clock = 0.0
        self.stats = {"evaluations": 0, "block_runs": 0, "blocks": 0}

    def attach(self, model, groups: int, generated=()) -> None:
        """Replace ``model.run_blocks`` (undone by ``detach``); ``groups`` guidance branches;
        ``generated``: the streams being generated (read by ``RegionCache``)."""
        if "run_blocks" in model.__dict__:
            raise ValueError(
                "sample: a cache cannot wrap blocks that are already wrapped (a control branch, "
                "model.control.controlled, or a shared reference, sampling.reference); sample "
                "with cache '' there"
            )
        self.model, self.groups = model, groups
        self.stats["blocks"] = len(model.all_blocks)
        model.run_blocks = self

    def detach(self) -> None:
        if self.model is not None and "run_blocks" in self.model.__dict__:
            del self.model.run_blocks
        self.model = None

    def tick(self, clock: float, static: dict[str, Tensor] | None = None) -> None:
        """The sampler's clock (0 -> 1) at the evaluation about to run (and, read by
        ``RegionCache``, each stream's tokens whose time does not move on it)."""
        self.clock = clock

    def blocks(
        self, x: Streams, c: Streams, rope, start: int = 0, stop: int | None = None, given=None
    ):
        """Run blocks ``start``-``stop`` for real, counting them per row."""
        rows = next(iter(x.values())).shape[0]
        count = len(self.model.all_blocks[start:stop])
        self.stats["block_runs"] += count * rows
        return type(self.model).run_blocks(self.model, x, c, rope, start, stop, given)

    def __call__(
        self, x: Streams, c: Streams, rope, start: int = 0, stop: int | None = None, given=None
    ):
        raise NotImplementedError


def _rows(x: Streams, index: Tensor) -> Streams:
    return {k: v[index] for k, v in x.items()}


class FirstBlockCache(BlockCache):
    """Skip blocks 2..L when block 1's residual barely moved (per guidance branch)."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.first: Streams | None = None  # block 1's residual at the last full run, per row
        self.rest: Streams | None = None  # blocks 2..L's residual then

    def __call__(
        self, x: Streams, c: Streams, rope, start: int = 0, stop: int | None = None, given=None
    ):
        rows = next(iter(x.values())).shape[0]
        self.stats["evaluations"] += rows
        x1 = self.blocks(x, c, rope, 0, 1, given)
        first = {k: x1[k] - x[k] for k in x}  # (r, n, d)
        run = torch.ones(rows, dtype=torch.bool)
        if self.first is not None and self.threshold > 0:
            size = rows // self.groups
            for g in range(self.groups):
                part = slice(g * size, (g + 1) * size)
                moved = sum(float((first[k][part] - self.first[k][part]).pow(2).sum()) for k in x)
                base = sum(float(self.first[k][part].pow(2).sum()) for k in x)
                run[part] = moved**0.5 >= self.threshold * max(base**0.5, 1e-12)
        if run.all():
            out = self.blocks(x1, c, rope, 1, None, given)
            self.first, self.rest = first, {k: out[k] - x1[k] for k in x}
            return out
        out = {k: x1[k] + self.rest[k] for k in x}
        if run.any():
            index = run.nonzero().flatten()
            part = None if given is None else given[index]
            fresh = self.blocks(_rows(x1, index), _rows(c, index), rope, 1, None, part)
            for k in x:
                out[k][index] = fresh[k]
                self.rest[k][index] = fresh[k] - x1[k][index]
                self.first[k][index] = first[k][index]
        return out


class TaylorCache(BlockCache):
    """Run every block every ``interval`` evaluations; forecast the blocks' residual between."""

    def __init__(self, interval: int, order: int = 1):
        super().__init__()
        self.interval, self.order = interval, order
        self.history: list[tuple[float, Streams]] = []  # (clock, residual), newest first
        self.count = 0

    def _forecast(self) -> Streams:
        """Newton's divided differences through the last order + 1 computed residuals,
        evaluated at the current clock."""
        points = self.history[: self.order + 1]
        ts = [t for t, _ in points]
        coef = [r for _, r in points]  # divided differences, built in place
        for level in range(1, len(points)):
            for i in range(len(points) - 1, level - 1, -1):
                gap = ts[i - level] - ts[i]
                gap = gap if abs(gap) > 1e-12 else 1e-12
                coef[i] = {k: (coef[i - 1][k] - coef[i][k]) / gap for k in coef[i]}
        out = {k: v.clone() for k, v in coef[0].items()}
        term = 1.0
        for level in range(1, len(points)):
            term = term * (self.clock - ts[level - 1])
            out = {k: out[k] + term * coef[level][k] for k in out}
        return out

    def __call__(
        self, x: Streams, c: Streams, rope, start: int = 0, stop: int | None = None, given=None
    ):
        rows = next(iter(x.values())).shape[0]
        self.stats["evaluations"] += rows
        due = self.count % self.interval == 0 or len(self.history) < self.order + 1
        self.count += 1
        if not due:
            residual = self._forecast()
            return {k: x[k] + residual[k].to(x[k].dtype) for k in x}
        out = self.blocks(x, c, rope, given=given)
        residual = {k: out[k] - x[k] for k in x}
        self.history = [(self.clock, residual), *self.history[: self.order]]
        return out


class AttentionTaylorCache(TaylorCache):
    """TaylorSeer as diffusers applies it: every ``interval``-th evaluation runs everything and
    records each layer's projected attention output; in between, those are forecast (Taylor,
    ``order``) and only the rest of each block runs on them (modulation, residuals, MLP:
    ``model.block.forecast_block``). A stream whose every token is still on the evaluation (a
    given condition: SD3's text) is forecast whole, block by block, as ``TaylorCache`` does,
    so its MLPs do not run either. Blocks it cannot split (Flux's parallel layers) run in
    full. Costs more than ``TaylorCache`` per forecast step, errs far less."""

    def __init__(self, interval: int, order: int = 1):
        super().__init__(interval, order)
        self.still: set[str] = set()

    def tick(self, clock: float, static: dict[str, Tensor] | None = None) -> None:
        self.clock = clock
        self.still = {n for n, m in (static or {}).items() if bool(m.all())}

    def __call__(
        self, x: Streams, c: Streams, rope, start: int = 0, stop: int | None = None, given=None
    ):
        from anydit.model.block import attention_layers, forecast_block

        rows = next(iter(x.values())).shape[0]
        self.stats["evaluations"] += rows
        blocks = self.model.all_blocks
        due = self.count % self.interval == 0 or len(self.history) < self.order + 1
        self.count += 1
        if not due:
            ahead = self._forecast()
            dtype = next(iter(x.values())).dtype
            for i, block in enumerate(blocks):
                layers = attention_layers(block)
                if not layers:
                    x = self.blocks(x, c, rope, i, i + 1, given)
                    continue
                whole = {n for n in x if n in self.still} if "*" not in layers else set()
                rest = {n: v for n, v in x.items() if n not in whole}
                own = {
                    n: ahead[f"{i}.{n}"].to(dtype)
                    for n, v in layers.items()
                    if not v.pre_only and n not in whole
                }
                out = forecast_block(block, rest, c, own) if rest else {}
                x = {n: x[n] + ahead[f"{i}.{n}.block"].to(dtype) if n in whole else out[n]
                     for n in x}  # fmt: skip
            return x
        seen: Streams = {}

        def keep_block(i: int):
            def hook(module, args, out):
                for n, v in out.items():
                    seen[f"{i}.{n}.block"] = (v - args[0][n]).float()

            return hook

        hooks = [
            layer.out.register_forward_hook(
                lambda m, a, out, key=f"{i}.{n}": seen.__setitem__(key, out.float())
            )
            for i, block in enumerate(blocks)
            for n, layer in attention_layers(block).items()
            if not layer.pre_only
        ]
        hooks += [
            block.register_forward_hook(keep_block(i))
            for i, block in enumerate(blocks)
            if hasattr(block, "streams")
        ]
        try:
            out = self.blocks(x, c, rope, given=given)
        finally:
            for h in hooks:
                h.remove()
        self.history = [(self.clock, seen), *self.history[: self.order]]
        return out


def make_cache(
    kind: str,
    threshold: float,
    interval: int,
    order: int,
    ratio: float = 1.0,
    reuse: bool = False,
) -> BlockCache | None:
    """The cache a ``SampleConfig`` asks for, or None. ``region`` and key-value ``reuse`` are
    one cache (``sampling.region``)."""
    if kind == "region" or reuse:
        from anydit.sampling.region import RegionCache

        return RegionCache(ratio if kind == "region" else 1.0, interval, reuse)
    if kind == "first_block":
        return FirstBlockCache(threshold)
    if kind == "taylor":
        return TaylorCache(interval, order)
    if kind == "taylor_attention":
        return AttentionTaylorCache(interval, order)
    return None


def clock_of(times: dict[str, Tensor], generated: list[str]) -> float:
    """The sampler's clock: the mean current time of the generated streams."""
    return float(sum(float(times[k]) for k in generated) / max(len(generated), 1))


__all__ = [
    "CACHES",
    "BlockCache",
    "FirstBlockCache",
    "TaylorCache",
    "AttentionTaylorCache",
    "clock_of",
    "make_cache",
]
