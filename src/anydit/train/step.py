"""One training step, written once: split a batch into micro-batches, draw their inputs,
forward, loss, backward. The loop, ``train_step``/``fit`` (library use and the closed-form
tests), the demo's timing and the benchmarks all run it.

Exactness. Every random draw of a step (roles, times, masks, noise) is made for the whole global
batch from one generator that every process holds; each process, and each micro-batch, keeps
its own rows; losses are sums over scored tokens divided by the global count. So N processes,
or k micro-batches, compute the single-process step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from anydit.config import FlowConfig
from anydit.flow.objective import (
    Loss,
    TrainingInputs,
    make_inputs,
    scored_counts,
    training_objective,
)
from anydit.model.dynamic import width_loss
from anydit.model.experts import router_losses
from anydit.train import distributed as D
from anydit.train.optim import autocast_for, make_optimizer


def micro_inputs(
    model,
    raw: dict[str, Tensor],
    present: dict[str, Tensor],
    flow: FlowConfig,
    generator: torch.Generator | None,
    grad_accum: int = 1,
    rank: int = 0,
    global_batch: int | None = None,
) -> list[TrainingInputs]:
    """This process's ``grad_accum`` micro-batches of a raw batch (its rows of the global
    batch, which starts at row ``rank * len(raw)``), each with inputs cut from the same
    global draws."""
    local_b = next(iter(raw.values())).shape[0]
    micro_b = local_b // grad_accum
    if generator is None and grad_accum > 1:
        raise ValueError("micro-batches need a generator (they replay the same draws)")
    start = generator.get_state() if generator is not None else None
    out = []
    for j in range(grad_accum):
        if start is not None:
            generator.set_state(start)  # every micro-batch cuts its rows from the same draws
        lo = rank * local_b + j * micro_b
        cut = slice(j * micro_b, (j + 1) * micro_b)
        out.append(
            make_inputs(
                model.modalities,
                {k: v[cut] for k, v in raw.items()},
                flow,
                model.cfg.per_token_time,
                {k: v[cut] for k, v in present.items()} or None,
                generator,
                slice(lo, lo + micro_b),
                global_batch or local_b,
                drop_tokens=True,
            )
        )
    return out


def with_router_losses(model, loss: Loss, micro: int = 1) -> Loss:
    """``loss`` plus the routers' losses of the forward just run: the expert routers' weighted
    load-balancing and z-losses (``model.experts``), each logged per stream (``balance/NAME``,
    ``z/NAME``), and the width loss of dynamic width (``model.dynamic_width``:
    ``dynamic_weight x (kept - dynamic_keep)^2``, the share kept logged as ``width/kept``).
    Each of ``micro`` micro-batches adds its share. Not scaled by the world size: each
    process's router losses are means over its own tokens, and data parallel averages them."""
    aux = router_losses(model)
    weights = {"balance": model.cfg.expert_balance, "z": model.cfg.expert_z}
    extra = sum(weights[k.split("/")[0]] * v for k, v in aux.items())
    width = width_loss(model)
    if width is not None:
        extra = extra + width[0]
        aux["width/kept"] = width[1]
    if not aux:
        return loss
    parts = {**loss.parts, **{k: v.detach() / micro for k, v in aux.items()}}
    return Loss(loss.total + extra / micro, parts)


def forward_backward(
    net, model, micro: list[TrainingInputs], precision: str, world: int = 1
) -> Loss | None:
    """Forward and backward over the micro-batches (gradients accumulate; under DDP/FSDP only
    the last one synchronises). Returns this process's share of the loss, or None if any
    process saw a non-finite loss (then no gradient is left anywhere)."""
    device = next(model.parameters()).device
    net.zero_grad(set_to_none=True)
    counts = scored_counts(model.modalities, micro)
    counts = dict(zip(counts, D.all_sum(torch.stack(list(counts.values()))), strict=True))
    total, parts = None, None
    for j, inputs in enumerate(micro):
        sync = j == len(micro) - 1
        with D.no_sync(net, sync), autocast_for(device, precision):
            kept = {"keep": inputs.keep} if inputs.keep else {}  # token_drop
            preds = net(inputs.tokens, inputs.times, **kept)
            loss = training_objective(model.modalities, preds, inputs, counts, scale=float(world))
            loss = with_router_losses(model, loss, len(micro))
        bad = D.all_sum(torch.tensor([float(not torch.isfinite(loss.total))], device=device))
        if bad.item() > 0:
            net.zero_grad(set_to_none=True)
            return None
        with D.no_sync(net, sync):
            loss.total.backward()
        share = loss.total.detach() / world
        total = share if total is None else total + share
        parts = loss.parts if parts is None else {k: parts[k] + loss.parts[k] for k in parts}
    return Loss(total, parts)


def clip_and_step(net, optimizer, grad_clip: float) -> Tensor:
    """Clip the gradient norm (0 = no clipping), step; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(
        net.parameters(), grad_clip if grad_clip > 0 else float("inf")
    )
    optimizer.step()
    return norm


def train_step(
    model,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    flow: FlowConfig | None = None,
    present: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    grad_clip: float = 1.0,
    precision: str = "fp32",
) -> tuple[Loss | None, Tensor | None]:
    """One step of one process: forward, backward, clip, update. Returns (loss, grad norm);
    (None, None) when the loss was not finite (nothing is updated)."""
    model.train()
    micro = micro_inputs(model, batch, present or {}, flow or FlowConfig(), generator)
    loss = forward_backward(model, model, micro, precision)
    if loss is None:
        return None, None
    return loss, clip_and_step(model, optimizer, grad_clip)


def fit(
    model,
    batches: Iterator[dict[str, Tensor]],
    steps: int,
    lr: float = 1e-3,
    flow: FlowConfig | None = None,
    seed: int = 0,
    precision: str = "fp32",
) -> list[float]:
    """Train ``steps`` steps of AdamW (cosine decay) on an iterator of raw batches.

    Returns the losses."""
    optimizer = make_optimizer(model.parameters(), lr)
    # Cosine decay to zero: the last weights average out SGD noise, which matters for the
    # closed-form checks where bias in a conditional mean is what is measured.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    gen = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss, _ = train_step(model, optimizer, next(batches), flow, None, gen, precision=precision)
        schedule.step()
        losses.append(float("nan") if loss is None else loss.total.item())
    return losses
