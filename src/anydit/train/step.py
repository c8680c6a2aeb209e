"""One optimisation step and a minimal in-process training loop (library use and tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from anydit.config import FlowConfig
from anydit.flow.objective import training_loss


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast (never fp16: on CPU it is ~100x slower) or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision: expected 'bf16' or 'fp32', got {precision!r}")


def make_optimizer(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where PyTorch has it for the parameters' device
    (CPU and CUDA): ~5% of the demo's step on a 2-core CPU, same update rule."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def train_step(
    model,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    flow: FlowConfig | None = None,
    present: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    grad_clip: float = 1.0,
    precision: str = "fp32",
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Forward, backward, clip, step. Returns (loss, per-modality losses, grad norm)."""
    device = next(model.parameters()).device
    model.train()
    with autocast_for(device, precision):
        loss, parts = training_loss(model, batch, flow, present, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), grad_clip if grad_clip > 0 else float("inf")
    )
    optimizer.step()
    return loss.detach(), parts, grad_norm


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
        loss, _, _ = train_step(
            model, optimizer, next(batches), flow, None, gen, precision=precision
        )
        schedule.step()
        losses.append(loss.item())
    return losses
