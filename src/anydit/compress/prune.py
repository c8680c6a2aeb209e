"""Depth pruning (``anydit prune``), after PPCL: find the blocks whose removal changes the
model's predictions least, remove them, then recover by distilling from the full model.

Importance of a block: the mean squared change of every generated modality's prediction
(relative to the prediction's own mean square) when that block alone is skipped, measured on
training inputs (random roles, times and noise over real data). The blocks with the smallest
change go first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from anydit.config import FlowConfig
from anydit.flow.objective import make_inputs

# Recovery, chosen on the val split with the seed-0 demo model (one block of four removed, 3
# minutes): see docs/compress.md for each setting measured.
LR = 1e-3
LAYER_WEIGHT = 0.1


class _Skip(nn.Module):
    """A block that passes its input through."""

    def forward(self, x, c, rope, attend=None):
        return x


def _all_blocks(model) -> list[tuple[str, int]]:
    return [("blocks", i) for i in range(len(model.blocks))] + [
        ("single_blocks", i) for i in range(len(model.single_blocks))
    ]


@torch.no_grad()
def block_importance(model, batches: Iterator, rounds: int = 4, seed: int = 0) -> list[float]:
    """Per block (dual-stream first, then single-stream), the relative change of the model's
    predictions when it alone is skipped, averaged over ``rounds`` batches."""
    model = model.eval()
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(rounds):
        raw, present = next(batches)
        inputs.append(
            make_inputs(
                model.modalities, raw, FlowConfig(), model.cfg.per_token_time, present or None, gen
            )
        )
    full = [model(i.tokens, i.times) for i in inputs]
    scores = []
    for kind, index in _all_blocks(model):
        stack = getattr(model, kind)
        block = stack[index]
        stack[index] = _Skip()
        try:
            change = 0.0
            for i, ref in zip(inputs, full, strict=True):
                out = model(i.tokens, i.times)
                change += sum(
                    float(
                        (out[k].float() - ref[k].float()).pow(2).mean()
                        / ref[k].float().pow(2).mean().clamp(min=1e-12)
                    )
                    for k in ref
                ) / len(ref)
        finally:
            stack[index] = block
        scores.append(change / len(inputs))
    return scores


def remove_blocks(model, remove: list[int]):
    """A new model without the blocks at ``remove`` (indices over dual-stream then
    single-stream blocks), its other weights copied. With no blocks removed, it computes what
    ``model`` computes."""
    from anydit.model import MMDiT

    blocks = _all_blocks(model)
    bad = sorted(set(remove) - set(range(len(blocks))))
    if bad or len(set(remove)) >= len(blocks):
        raise ValueError(
            f"prune: the model has {len(blocks)} blocks; cannot remove {sorted(set(remove))} "
            "(at least one must stay)"
        )
    keep = [b for i, b in enumerate(blocks) if i not in set(remove)]
    kept_dual = [i for kind, i in keep if kind == "blocks"]
    kept_single = [i for kind, i in keep if kind == "single_blocks"]
    new_index = {old: new for new, old in enumerate(kept_dual)}
    cfg = dataclasses.replace(
        model.cfg,
        depth=len(kept_dual),
        single_depth=len(kept_single),
        dual_attention=tuple(new_index[i] for i in model.cfg.dual_attention if i in new_index),
    )
    pruned = MMDiT(model.modality_configs, cfg)
    state, own = {}, pruned.state_dict()
    renames = {f"blocks.{old}.": f"blocks.{new}." for new, old in enumerate(kept_dual)}
    renames |= {
        f"single_blocks.{old}.": f"single_blocks.{new}." for new, old in enumerate(kept_single)
    }
    for key, value in model.state_dict().items():
        head = ".".join(key.split(".")[:2]) + "."
        if key.startswith(("blocks.", "single_blocks.")):
            if head not in renames:
                continue  # a removed block
            key = renames[head] + key[len(head) :]
        if key not in own:
            continue  # the new last block's condition streams lend keys and values only
        if own[key].shape != value.shape:  # ... and their modulation keeps (shift, scale)
            value = value[: own[key].shape[0]]
        state[key] = value
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"prune: weights without a source: {missing[:8]}")
    pruned.load_state_dict(state, strict=True)
    return pruned


def prune(
    model,
    k: int,
    batches: Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]],
    steps: int | None = None,
    minutes: float | None = None,
    lr: float = LR,
    log=print,
    layer_weight: float = LAYER_WEIGHT,
    processes: int = 1,
    blocks: list[int] | None = None,
    precision: str = "auto",
    tasks: list[dict] | None = None,
    task_share: float = 0.5,
):
    """Remove the ``k`` least important blocks, then distill from ``model`` (outputs, and with
    ``layer_weight`` > 0 each kept block's hidden state against the same block in the full
    model, ``train.distill``). ``batches``: an iterator of (batch, present), or a picklable
    ``batches(rank, world)`` that opens one (``data.sources.RandomBatches``), needed to distill
    on ``processes`` > 1 local processes. ``blocks``: remove these (indices over dual-stream
    then single-stream blocks) instead of the ``k`` least important (``k`` is then their
    count). ``precision``: the distillation's arithmetic, ``"bf16"`` autocast, ``"fp32"`` or
    ``"auto"`` (bf16 where it is native: ``train.optim.resolve_precision``; on this project's
    AVX-512-bf16 CPU it takes 1.2x the steps of fp32 in the same minutes and recovered more).
    ``tasks``: role patterns (``train.distill.parse_task``) that a ``task_share`` of the
    distillation's rows take: the tasks the pruned model is for. Returns (the pruned model,
    the blocks removed, the importance scores, the distillation losses)."""
    if not lr > 0 or not layer_weight >= 0 or not 0 <= task_share <= 1:
        raise ValueError(
            f"prune: expected lr > 0, layer_weight >= 0 and task_share in [0, 1], got lr "
            f"{lr!r}, layer_weight {layer_weight!r}, task_share {task_share!r}"
        )
    n = len(_all_blocks(model))
    if blocks is not None:
        blocks = sorted(set(blocks))
        if not blocks or blocks[0] < 0 or blocks[-1] >= n or len(blocks) == n:
            raise ValueError(
                f"prune: blocks: expected indices in 0..{n - 1} (the model's blocks), leaving "
                f"at least one, got {blocks}"
            )
        k = len(blocks)
    if not isinstance(k, int) or k < 0 or k >= n:
        raise ValueError(f"prune: expected 0 <= remove < {n} (the model's blocks), got {k!r}")
    opener, batches = open_batches(batches, processes)
    scores = block_importance(model, batches)
    remove = sorted(range(n), key=lambda i: scores[i])[:k] if blocks is None else blocks
    pruned = remove_blocks(model, remove)
    kept = [i for i in range(n) if i not in remove]
    layers = dict(enumerate(kept))  # student block j follows teacher block kept[j]
    if log is not None:
        log(f"prune: importance {[round(s, 4) for s in scores]}; removing blocks {remove}")
    losses = []
    if k and (steps or minutes):
        losses = recover(
            pruned, model, batches, opener, processes,
            steps=steps, minutes=minutes, lr=lr, layers=layers, log=log, layer_weight=layer_weight,
            precision=precision, tasks=tasks, task_share=task_share,
        )  # fmt: skip
    return pruned, sorted(remove), scores, losses


def open_batches(batches, processes: int) -> tuple:
    """(the opener ``batches(rank, world)`` or None, an iterator of rank 0's batches) from an
    iterator or an opener; several processes need an opener."""
    opener = batches if callable(batches) else None
    if opener is None and processes != 1:
        raise ValueError("several processes need batches(rank, world), not an iterator")
    return opener, opener(0, 1) if opener else batches


def recover(student, teacher, batches: Iterator, opener, processes: int, precision="auto", **kw):
    """Distil ``student`` from ``teacher`` (``train.distill.distill_local``; ``kw`` its
    options): one process continues ``batches``, the iterator already read from; several open
    their own with ``opener``. ``precision``: ``train.optim.resolve_precision``'s choices."""
    from anydit.train.distill import distill_local
    from anydit.train.optim import resolve_precision

    one = processes == 1
    source = (lambda rank, world: batches) if one else opener
    return distill_local(
        student, teacher, source, processes, precision=resolve_precision(precision), **kw
    )
