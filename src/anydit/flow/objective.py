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
from anydit.flow.paths import mask_tokens, sample_path
from anydit.flow.times import sample_times

GENERATE, GIVEN, DROPPED = 0, 1, 2


@dataclass
class TrainingInputs:
    """What the network sees and what it is scored on. Per modality name:
    tokens (b, n, p) or (b, n) ids; times (b,) or (b, n); targets like tokens (velocity or clean
    ids); scored (b, n) bool, the tokens that count in the loss; roles (b,) ints."""

    tokens: dict[str, Tensor]
    times: dict[str, Tensor]
    targets: dict[str, Tensor]
    scored: dict[str, Tensor]
    roles: dict[str, Tensor]


def draw_roles(
    model,
    batch_size: int,
    present: dict[str, Tensor] | None,
    generator: torch.Generator | None,
    device,
) -> dict[str, Tensor]:
    """(b,) role per modality from its p_given / p_drop; absent modalities are dropped."""
    roles = {}
    for name, m in model.modalities.items():
        u = torch.rand(batch_size, generator=generator, device=device)
        role = torch.full((batch_size,), GENERATE, dtype=torch.long, device=device)
        role[u < m.cfg.p_given] = GIVEN
        role[(u >= m.cfg.p_given) & (u < m.cfg.p_given + m.cfg.p_drop)] = DROPPED
        if present is not None and name in present:
            role[~present[name].to(device).bool()] = DROPPED
        roles[name] = role
    return roles


def make_inputs(
    model,
    batch: dict[str, Tensor],
    flow: FlowConfig,
    present: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> TrainingInputs:
    """Noise a batch of raw data (name -> (b, *shape)) into network inputs and targets."""
    missing = [n for n in model.names if n not in batch]
    if missing:
        raise ValueError(f"training batch lacks modalities {missing} (has {sorted(batch)})")
    b = next(iter(batch.values())).shape[0]
    device = next(iter(batch.values())).device
    roles = draw_roles(model, b, present, generator, device)
    per_token = model.cfg.per_token_time
    out = TrainingInputs({}, {}, {}, {}, roles)
    for name, m in model.modalities.items():
        clean = m.tokenize(batch[name].to(device))  # (b, n, p) or (b, n)
        n_tok = clean.shape[1]
        t = sample_times(
            m.cfg.time_sampler, b, m.cfg.shift, flow.logit_mean, flow.logit_std, generator, device
        ).clamp(flow.eps, 1 - flow.eps)
        role = roles[name]
        t = torch.where(role == GIVEN, 1.0, torch.where(role == DROPPED, 0.0, t))  # (b,)
        scored = (role == GENERATE)[:, None].expand(b, n_tok).clone()  # (b, n)
        if per_token:
            t = t[:, None].expand(b, n_tok).clone()  # (b, n)
            if m.cfg.p_partial > 0:
                partial = torch.rand(b, generator=generator, device=device) < m.cfg.p_partial
                share = torch.rand(
                    b, 1, generator=generator, device=device
                )  # share of tokens given
                known = (
                    torch.rand(b, n_tok, generator=generator, device=device) < share
                ) & partial[:, None]
                known &= scored
                t = torch.where(known, 1.0, t)
                scored &= ~known
        if m.discrete:
            noisy = mask_tokens(clean, t, m.mask_id, generator)
            scored &= noisy == m.mask_id  # only masked tokens carry a loss
            out.targets[name] = clean
        else:
            x0 = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
            path = sample_path(clean, t, x0)
            noisy = path.x_t
            out.targets[name] = path.velocity
        out.tokens[name], out.times[name], out.scored[name] = noisy, t, scored
    return out


def modality_loss(pred: Tensor, target: Tensor, scored: Tensor, discrete: bool) -> Tensor:
    """Mean loss over the scored tokens (0 with gradients intact if none is scored)."""
    scored_f = scored.to(pred.dtype if pred.dtype.is_floating_point else torch.float32)
    if discrete:
        ce = F.cross_entropy(pred.float().transpose(1, 2), target, reduction="none")  # (b, n)
        total = (ce * scored_f).sum()
    else:
        se = (pred.float() - target.float()).pow(2).mean(-1)  # (b, n)
        total = (se * scored_f).sum()
    return total / scored_f.sum().clamp(min=1.0)


def training_loss(
    model,
    batch: dict[str, Tensor],
    flow: FlowConfig | None = None,
    present: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One any-to-any training loss: (weighted total, {modality: loss} for logging)."""
    inputs = make_inputs(model, batch, flow or FlowConfig(), present, generator)
    preds = model(inputs.tokens, inputs.times)
    total = torch.zeros((), device=next(iter(preds.values())).device)
    parts = {}
    for name, m in model.modalities.items():
        loss = modality_loss(preds[name], inputs.targets[name], inputs.scored[name], m.discrete)
        total = total + m.cfg.loss_weight * loss
        parts[name] = loss.detach()
    return total, parts
