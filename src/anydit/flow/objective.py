"""The any-to-any training objective.

Per sample and per modality a role is drawn (``flow.roles``): given (t = 1, the clean value, a
condition), dropped (t = 0, pure noise or all masks, marginalised out) or generate (t from the
modality's time sampler). A modality missing from a sample is dropped for it. With per-token
times, a generated modality may also have a random share of its tokens given (t = 1 on those
tokens): that trains inpainting and continuation.

Losses, summed with each modality's ``loss_weight`` over the tokens being generated:
continuous, velocity MSE ``|v_pred - (x1 - x0)|^2``; discrete, cross-entropy of the clean token
at masked positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from anydit.config import FlowConfig
from anydit.flow.paths import reveal_mask, sample_path
from anydit.flow.roles import Role, assemble
from anydit.flow.times import sample_times
from anydit.modalities import Modality, outputs_of


@dataclass
class TrainingInputs:
    """What the network sees and what it is scored on. Per modality name:
    tokens (b, n, p) or (b, n) ids; times (b,) or (b, n); targets like tokens (velocity or clean
    ids); scored (b, n) bool, the tokens that count in the loss; roles (b,) ``Role`` codes.
    keep: for streams that leave tokens out of the backbone (``token_drop``), the kept tokens'
    indices (b, k), sorted; their targets and scored are then those of the kept tokens only
    (b, k, ...), as the network's outputs are."""

    tokens: dict[str, Tensor]
    times: dict[str, Tensor]
    targets: dict[str, Tensor]
    scored: dict[str, Tensor]
    roles: dict[str, Tensor]
    keep: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Loss:
    """A training loss: ``total`` (the weighted sum backward sees) and ``parts``, each
    modality's mean loss over its scored tokens (detached, for logs)."""

    total: Tensor
    parts: dict[str, Tensor]


def draw_roles(
    modalities: dict[str, Modality], batch_size: int, generator: torch.Generator | None, device
) -> dict[str, Tensor]:
    """(b,) role per modality from its p_given / p_drop (a condition-only modality is given
    unless dropped)."""
    roles = {}
    for name, m in modalities.items():
        u = torch.rand(batch_size, generator=generator, device=device)
        role = torch.full((batch_size,), Role.GENERATE, dtype=torch.long, device=device)
        if not m.cfg.generate:  # a condition only: given, or dropped with p_drop
            role[:] = Role.GIVEN
            role[u < m.cfg.p_drop] = Role.DROP
        else:
            role[u < m.cfg.p_given] = Role.GIVEN
            role[(u >= m.cfg.p_given) & (u < m.cfg.p_given + m.cfg.p_drop)] = Role.DROP
        roles[name] = role
    return roles


def make_inputs(
    modalities: dict[str, Modality],
    batch: dict[str, Tensor],
    flow: FlowConfig,
    per_token: bool = False,
    present: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    rows: slice | None = None,
    global_batch: int | None = None,
    times: dict[str, Tensor] | None = None,
    drop_tokens: bool = False,
    roles: dict[str, Tensor] | None = None,
) -> TrainingInputs:
    """Noise a batch of raw data (name -> (b, *shape)) into network inputs and targets.

    Every random draw (roles, times, masks, noise) is made for the ``global_batch`` and then
    cut to ``rows``: a process holding rows r0:r1 of a global batch sees exactly what a single
    process would see for those rows, so data-parallel training reproduces single-process
    training. By default the batch is the whole global batch. ``per_token``: the model takes a
    time per token (then a share of tokens may be given, ``p_partial``). ``times`` ((B,) per
    modality) replace the drawn times of generated samples where they are not ``nan``
    (few-step distillation starts jumps on the sampler's grid). ``drop_tokens``: streams with
    a ``token_drop`` share keep a random subset of their tokens (``TrainingInputs.keep``), the
    same count in every row (training; distillation and evaluation see every token).
    ``roles`` {modality: (B,) ``Role`` codes, -1 = draw}: replace the drawn roles where given
    (distillation on chosen tasks, ``train.distill.task_roles``); the draws are made anyway,
    so the other random numbers do not move.
    """
    missing = [n for n in modalities if n not in batch]
    if missing:
        raise ValueError(f"training batch lacks modalities {missing} (has {sorted(batch)})")
    b = next(iter(batch.values())).shape[0]
    total = b if global_batch is None else global_batch
    rows = slice(0, b) if rows is None else rows
    if rows.stop - rows.start != b:
        raise ValueError(f"rows {rows} do not match the local batch of {b}")
    device = next(iter(batch.values())).device
    g_roles = draw_roles(modalities, total, generator, device)
    for name, chosen in (roles or {}).items():
        chosen = chosen.to(device)
        g_roles[name] = torch.where(chosen >= 0, chosen, g_roles[name])
    plan = times
    out = TrainingInputs({}, {}, {}, {}, {})
    for name, m in modalities.items():
        n_tok = m.num_tokens
        t = sample_times(
            m.cfg.time_sampler,
            total,
            m.time_shift,
            flow.logit_mean,
            flow.logit_std,
            generator,
            device,
        ).clamp(flow.eps, 1 - flow.eps)
        if plan is not None and name in plan:  # planned where a number, drawn where nan
            planned = plan[name].to(device)
            t = torch.where(planned.isnan(), t, planned)
        role = g_roles[name]
        if present is not None and name in present:  # absent here: dropped for that sample
            local = role[rows].clone()
            local[~present[name].to(device).bool()] = Role.DROP
            role = role.clone()
            role[rows] = local
        scored = (role == Role.GENERATE)[:, None].expand(total, n_tok).clone()  # (B, n)
        token_role = role
        if per_token and m.cfg.p_partial > 0:
            partial = torch.rand(total, generator=generator, device=device) < m.cfg.p_partial
            known = m.draw_known(total, generator, device) & partial[:, None] & scored
            token_role = torch.where(known, Role.GIVEN, role[:, None])  # (B, n)
            scored &= ~known
        tokens, times = assemble(token_role, t, t, None, None, n_tok, per_token)  # times only
        clean = m.tokenize(batch[name].to(device))  # (b, n, p) or (b, n)
        if m.discrete:
            keep = reveal_mask((total, n_tok), times, generator)
            scored &= ~keep  # only masked tokens carry a loss
            noisy = torch.where(keep[rows], clean, torch.full_like(clean, m.mask_id))
            out.targets[name] = clean
            empty = torch.full_like(clean, m.mask_id)
        else:
            x0 = torch.randn((total, *clean.shape[1:]), generator=generator, device=device)
            path = sample_path(clean, times[rows], x0[rows].to(clean.dtype))
            noisy, empty = path.x_t, x0[rows].to(clean.dtype)
            out.targets[name] = path.velocity
        local_role = token_role[rows]
        out.tokens[name], out.times[name] = assemble(
            local_role, times[rows], noisy, clean, empty, n_tok, per_token
        )
        out.scored[name], out.roles[name] = scored[rows], role[rows]
    if drop_tokens:
        for name, m in modalities.items():
            if m.cfg.token_drop > 0:
                keep_tokens(out, name, m, total, rows, generator, device)
    return out


def keep_tokens(out: TrainingInputs, name: str, m, total: int, rows: slice, generator, device):
    """Draw the tokens of ``name`` that stay in the backbone (``m.cfg.token_drop`` left out,
    at least one kept) for the global batch, keep this process's rows, and cut the stream's
    targets and scored to them."""
    n = m.num_tokens
    kept = max(1, n - round(m.cfg.token_drop * n))
    order = torch.rand(total, n, generator=generator, device=device).argsort(1)
    index = order[:, :kept].sort(1).values[rows]  # (b, k)
    out.keep[name] = index
    target = out.targets[name]
    out.targets[name] = target.gather(1, index[..., None].expand(-1, -1, target.shape[-1]))
    out.scored[name] = out.scored[name].gather(1, index)


def loss_sum(pred: Tensor, target: Tensor, scored: Tensor, discrete: bool) -> Tensor:
    """Loss summed over the scored tokens (b, n): cross-entropy of the clean token (discrete)
    or squared velocity error averaged over features (continuous)."""
    if discrete:
        per_token = F.cross_entropy(
            pred.float().transpose(1, 2), target, reduction="none"
        )  # (b, n)
    else:
        per_token = (pred.float() - target.float()).pow(2).mean(-1)  # (b, n)
    return (per_token * scored.to(per_token.dtype)).sum()


def scored_counts(
    modalities: dict[str, Modality], inputs: list[TrainingInputs]
) -> dict[str, Tensor]:
    """Scored tokens per generated modality over some micro-batches (the loss's divisor)."""
    return {n: sum(i.scored[n].sum() for i in inputs) for n in outputs_of(modalities)}


def training_objective(
    modalities: dict[str, Modality],
    preds: dict[str, Tensor],
    inputs: TrainingInputs,
    counts: dict[str, Tensor],
    scale: float = 1.0,
) -> Loss:
    """Each generated modality's mean loss sum / count (0 where nothing is scored) and their
    ``loss_weight``-ed total, times ``scale`` (data parallel: the world size, so that averaging
    gradients over processes gives the gradient of the global mean)."""
    total = None
    parts = {}
    for name in outputs_of(modalities):
        m = modalities[name]
        s = loss_sum(preds[name], inputs.targets[name], inputs.scored[name], m.discrete)
        mean = s / counts[name].to(s.dtype).clamp(min=1.0)
        total = (
            torch.zeros((), device=s.device) if total is None else total
        ) + m.loss_weight * mean
        parts[name] = mean.detach()
    return Loss(total * scale, parts)


def training_loss(
    model,
    batch: dict[str, Tensor],
    flow: FlowConfig | None = None,
    present: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Loss:
    """One any-to-any training loss of ``model`` on a raw batch (name -> (b, *shape))."""
    inputs = make_inputs(
        model.modalities, batch, flow or FlowConfig(), model.cfg.per_token_time, present, generator
    )
    preds = model(inputs.tokens, inputs.times)
    return training_objective(
        model.modalities, preds, inputs, scored_counts(model.modalities, [inputs])
    )
