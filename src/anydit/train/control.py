"""Training a control branch (``model.control``) on a frozen model: the branch alone learns,
by the model's own objective (velocity MSE on the controlled stream), to steer the stream
towards the data its control map was made from."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from anydit.config import FlowConfig
from anydit.flow.objective import make_inputs, scored_counts, training_objective
from anydit.flow.roles import Role
from anydit.model.control import ControlBranch, controlled
from anydit.train.distill import cosine_factor
from anydit.train.optim import autocast_for, make_optimizer


def control_roles(model, stream: str, others: str, b: int, device) -> dict[str, Tensor]:
    """(b,) role codes per modality: ``stream`` generated; the others dropped (``others``
    "drop": the control alone steers) or drawn as in training ("draw": -1)."""
    if others not in ("drop", "draw"):
        raise ValueError(f"control: others must be 'drop' or 'draw', got {others!r}")
    code = -1 if others == "draw" else int(Role.DROP)
    roles = {n: torch.full((b,), code, device=device) for n in model.modalities}
    roles[stream] = torch.full((b,), int(Role.GENERATE), device=device)
    return roles


def train_control(
    model,
    branch: ControlBranch,
    batches: Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]],
    control_of: Callable[[Tensor], Tensor],
    steps: int | None = None,
    minutes: float | None = None,
    lr: float = 1e-3,
    others: str = "drop",
    precision: str = "fp32",
    seed: int = 0,
    log=print,
) -> list[float]:
    """Train ``branch`` (``model`` frozen: left in eval mode with ``requires_grad`` off, so
    no gradient reaches it) for ``steps`` or ``minutes``
    of wall time, AdamW with cosine decay to 0, on raw ``batches`` (batch, present);
    ``control_of`` maps the stream's raw values (b, c, H, W) to the control (b, c', H, W).
    Returns the losses."""
    if steps is None and minutes is None:
        raise ValueError("train_control: give steps or minutes")
    if not lr > 0:
        raise ValueError(f"train_control: expected lr > 0, got {lr!r}")
    stream = branch.cfg.stream
    device = next(model.parameters()).device
    branch.to(device).train()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    optimizer = make_optimizer(list(branch.parameters()), lr)
    gen = torch.Generator(device).manual_seed(seed)
    flow = FlowConfig()
    losses: list[float] = []
    start = time.perf_counter()

    def done() -> float:
        by_time = 0.0 if minutes is None else (time.perf_counter() - start) / (60 * minutes)
        by_steps = 0.0 if steps is None else len(losses) / steps
        return max(by_time, by_steps)

    while done() < 1.0:
        raw, present = next(batches)
        raw = {k: v.to(device) for k, v in raw.items()}
        b = raw[stream].shape[0]
        roles = control_roles(model, stream, others, b, device)
        inputs = make_inputs(
            model.modalities, raw, flow, model.cfg.per_token_time, present or None, gen,
            roles=roles,
        )  # fmt: skip
        with controlled(model, branch, control_of(raw[stream])), autocast_for(device, precision):
            preds = model(inputs.tokens, inputs.times)
            loss = training_objective(
                model.modalities, preds, inputs, scored_counts(model.modalities, [inputs])
            ).total
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_factor(done())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(branch.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if log and len(losses) % 50 == 0:
            log(f"control: step {len(losses)}, loss {loss.item():.4f}")
    return losses
