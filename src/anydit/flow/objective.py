"""The any-to-any training objective.

Per sample and per modality a role is drawn: ``given`` (t = 1, the clean value, a condition),
``dropped`` (t = 0, pure noise or all masks, marginalised out) or ``generate`` (t from the
modality's time sampler). A modality missing from a sample is dropped for it. With per-token
times, a generated modality may also have a random share of its tokens given (t = 1 on those
tokens): that trains inpainting and continuation.

Losses, summed with each modality's ``loss_weight`` over the tokens being generated:
continuous, velocity MSE ``|v_pred - (x1 - x0)|^2``; discrete, cross-entropy of the clean token
at masked positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anydit.config import FlowConfig
from anydit.flow.paths import reveal_mask, sample_path
from anydit.flow.times import sample_times

GENERATE, GIVEN, DROPPED = 0, 1, 2


@dataclass
class TrainingInputs:
    """What the network sees and what it is scored on. Per modality name:
    tokens (b, n, p) or (b, n) ids; times (b,) or (b, n); targets like tokens (velocity or clean
    ids); scored (b, n) bool, the tokens that count in the loss; roles (b,) ints; and
    scored_total, the number of scored tokens in the whole (global) batch."""

    tokens: dict[str, Tensor]
    times: dict[str, Tensor]
    targets: dict[str, Tensor]
    scored: dict[str, Tensor]
    roles: dict[str, Tensor]


def draw_roles(
    model, batch_size: int, generator: torch.Generator | None, device
) -> dict[str, Tensor]:
    """(b,) role per modality from its p_given / p_drop (a condition-only modality is given
    unless dropped)."""
    roles = {}
    for name, m in model.modalities.items():
        u = torch.rand(batch_size, generator=generator, device=device)
        role = torch.full((batch_size,), GENERATE, dtype=torch.long, device=device)
        if not m.cfg.generate:  # a condition only: given, or dropped with p_drop
            role[:] = GIVEN
            role[u < m.cfg.p_drop] = DROPPED
        else:
            role[u < m.cfg.p_given] = GIVEN
            role[(u >= m.cfg.p_given) & (u < m.cfg.p_given + m.cfg.p_drop)] = DROPPED
        roles[name] = role
    return roles


def make_inputs(
    model,
    batch: dict[str, Tensor],
    flow: FlowConfig,
    present: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    rows: slice | None = None,
    global_batch: int | None = None,
) -> TrainingInputs:
    """Noise a batch of raw data (name -> (b, *shape)) into network inputs and targets.

    Every random draw (roles, times, masks, noise) is made for the ``global_batch`` and then
    cut to ``rows``: a process holding rows r0:r1 of a global batch sees exactly what a single
    process would see for those rows, so data-parallel training reproduces single-process
    training. By default the batch is the whole global batch.
    """
    missing = [n for n in model.names if n not in batch]
    if missing:
        raise ValueError(f"training batch lacks modalities {missing} (has {sorted(batch)})")
    b = next(iter(batch.values())).shape[0]
    total = b if global_batch is None else global_batch
    rows = slice(0, b) if rows is None else rows
    if rows.stop - rows.start != b:
        raise ValueError(f"rows {rows} do not match the local batch of {b}")
    device = next(iter(batch.values())).device
    g_roles = draw_roles(model, total, generator, device)
    per_token = model.cfg.per_token_time
    out = TrainingInputs({}, {}, {}, {}, {})
    for name, m in model.modalities.items():
        n_tok = m.num_tokens
        t = sample_times(
            m.cfg.time_sampler,
            total,
            m.cfg.shift,
            flow.logit_mean,
            flow.logit_std,
            generator,
            device,
        ).clamp(flow.eps, 1 - flow.eps)
        role = g_roles[name]
        if present is not None and name in present:  # absent here: dropped for that sample
            local = role[rows].clone()
            local[~present[name].to(device).bool()] = DROPPED
            role = role.clone()
            role[rows] = local
        t = torch.where(role == GIVEN, 1.0, torch.where(role == DROPPED, 0.0, t))  # (B,)
        scored = (role == GENERATE)[:, None].expand(total, n_tok).clone()  # (B, n)
        if per_token:
            t = t[:, None].expand(total, n_tok).clone()  # (B, n)
            if m.cfg.p_partial > 0:
                partial = torch.rand(total, generator=generator, device=device) < m.cfg.p_partial
                share = torch.rand(total, 1, generator=generator, device=device)  # share given
                known = torch.rand(total, n_tok, generator=generator, device=device) < share
                known &= partial[:, None] & scored
                t = torch.where(known, 1.0, t)
                scored &= ~known
        clean = m.tokenize(batch[name].to(device))  # (b, n, p) or (b, n)
        if m.discrete:
            keep = reveal_mask((total, n_tok), t, generator)
            scored &= ~keep  # only masked tokens carry a loss
            keep = keep[rows]
            noisy = torch.where(keep, clean, torch.full_like(clean, m.mask_id))
            out.targets[name] = clean
        else:
            x0 = torch.randn((total, *clean.shape[1:]), generator=generator, device=device)
            path = sample_path(clean, t[rows], x0[rows].to(clean.dtype))
            noisy = path.x_t
            out.targets[name] = path.velocity
        out.tokens[name], out.times[name] = noisy, t[rows]
        out.scored[name], out.roles[name] = scored[rows], role[rows]
    return out


def scored_loss_sum(pred: Tensor, target: Tensor, scored: Tensor, discrete: bool) -> Tensor:
    """Loss summed over the scored tokens (b, n): cross-entropy of the clean token (discrete)
    or squared velocity error averaged over features (continuous)."""
    if discrete:
        per_token = F.cross_entropy(
            pred.float().transpose(1, 2), target, reduction="none"
        )  # (b, n)
    else:
        per_token = (pred.float() - target.float()).pow(2).mean(-1)  # (b, n)
    return (per_token * scored.to(per_token.dtype)).sum()


def combine_losses(
    model, sums: dict[str, Tensor], counts: dict[str, Tensor], scale: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-modality means sum/count (0 where nothing is scored) and their weighted total,
    times ``scale`` (data parallel: the world size, so that averaging gradients over processes
    gives the gradient of the global mean)."""
    total = torch.zeros((), device=next(iter(sums.values())).device)
    parts = {}
    for name in model.outputs:
        m = model.modalities[name]
        loss = sums[name] / counts[name].to(sums[name].dtype).clamp(min=1.0)
        total = total + m.cfg.loss_weight * loss
        parts[name] = loss.detach()
    return total * scale, parts


def training_loss(
    model,
    batch: dict[str, Tensor],
    flow: FlowConfig | None = None,
    present: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One any-to-any training loss: (weighted total, {modality: mean loss} for logging)."""
    inputs = make_inputs(model, batch, flow or FlowConfig(), present, generator)
    preds = model(inputs.tokens, inputs.times)
    sums = {
        n: scored_loss_sum(
            preds[n], inputs.targets[n], inputs.scored[n], model.modalities[n].discrete
        )
        for n in model.outputs
    }
    return combine_losses(model, sums, {n: inputs.scored[n].sum() for n in sums})
