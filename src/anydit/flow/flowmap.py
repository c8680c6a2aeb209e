"""Flow maps: what a few-step model learns. For a jump from time t to a target time s, the
average velocity ``u(x_t, t, s) = (x_s - x_t) / (s - t)`` moves a state in one step,
``x_s = x_t + (s - t) u``; at s = t it is the velocity the flow matching model learns.

Targets come from a teacher (a trained model): its ODE is solved from t to s with a few
midpoint steps, every generated continuous stream moving together along its own [t, s] (each
stream keeps its own times), given and dropped streams held where they are. With ``guidance``
the teacher's velocity is classifier-free guided (the given modalities dropped in the
unconditional branch), so a student needs no guidance at sampling: it is distilled in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anydit.flow.objective import TrainingInputs
from anydit.flow.roles import Role
from anydit.flow.times import shift_time

JUMPS = (1.0, 0.5, 0.25, 0.125, 0.0)  # step sizes a batch draws from (0: the velocity itself)


def plan_jumps(
    modalities, batch: int, step: float, generator: torch.Generator | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(start times, target times) (B,) per continuous modality for a batch of jumps of
    ``step`` on the uniform clock: half the rows start on the sampler's grid of that step (in
    the modality's shifted time, where few-step sampling starts: t = 0 among them), half at
    times the modality's training sampler draws (``nan``: keep them)."""
    starts, ends = {}, {}
    k = max(1, round(1 / step)) if step > 0 else 1
    for name, m in modalities.items():
        if m.discrete:
            continue
        j = torch.randint(0, k, (batch,), generator=generator).double()
        on_grid = torch.rand(batch, generator=generator) < 0.5
        u0, u1 = j / k, (j + 1) / k if step > 0 else j / k
        t0 = shift_time(u0, m.time_shift).float()
        t1 = shift_time(u1, m.time_shift).float()
        starts[name] = torch.where(on_grid, t0, torch.full_like(t0, float("nan")))
        ends[name] = torch.where(on_grid, t1, torch.full_like(t1, float("nan")))
    return starts, ends


def jump_targets(
    inputs: TrainingInputs, modalities, step: float, planned: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Target times for the continuous tokens being generated: ``planned`` where it is a
    number, else s = min(1, t + step); s = t elsewhere (given, dropped and discrete tokens:
    discrete streams reveal tokens by their own rule; their time does not jump)."""
    out = {}
    for name, t in inputs.times.items():
        moving = inputs.roles[name] == Role.GENERATE
        if t.dim() == 2:
            moving = moving[:, None] & (t < 1)
        if modalities[name].discrete:
            moving = torch.zeros_like(moving)
        s = (t + step).clamp(max=1.0)
        if planned is not None and name in planned:
            plan = planned[name].to(t.device)
            plan = plan[:, None].expand_as(t) if t.dim() == 2 else plan
            s = torch.where(plan.isnan(), s, plan)
        out[name] = torch.where(moving, s, t)
    return out


def _guided(teacher, tokens, times, roles, empty, guidance: float) -> dict[str, Tensor]:
    """The teacher's velocity, guided by ``guidance`` on rows where something is given."""
    out = teacher(tokens, times)
    if guidance == 1.0:
        return out
    given = torch.stack([(roles[k] == Role.GIVEN) for k in roles]).any(0)  # (b,)
    if not given.any():
        return out
    drop_tokens, drop_times = {}, {}
    for k in tokens:
        is_given = roles[k] == Role.GIVEN
        where = is_given[:, None] if tokens[k].dim() == 2 else is_given[:, None, None]
        drop_tokens[k] = torch.where(where, empty[k].to(tokens[k].dtype), tokens[k])
        t_mask = is_given if times[k].dim() == 1 else is_given[:, None]
        drop_times[k] = torch.where(t_mask, torch.zeros_like(times[k]), times[k])
    alone = teacher(drop_tokens, drop_times)
    rows = given.float()
    guided = {}
    for k, v in out.items():
        w = 1.0 + (guidance - 1.0) * rows.reshape(-1, *([1] * (v.dim() - 1)))
        guided[k] = alone[k] + w * (v - alone[k]) if not teacher.modalities[k].discrete else v
    return guided


@torch.no_grad()
def teacher_jump(
    teacher,
    inputs: TrainingInputs,
    targets: dict[str, Tensor],
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(average velocities from t to s, the teacher's clean-token logits at t) for every
    generated modality. ``ceil(8 (s - t))`` midpoint steps (at least 1; none for s = t)."""
    mods = teacher.modalities
    empty = {}
    for k, m in mods.items():
        x = inputs.tokens[k]
        if m.discrete:
            empty[k] = torch.full_like(x, m.mask_id)
        else:
            empty[k] = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    gap = max(float((targets[k] - inputs.times[k]).max()) for k in targets)
    steps = math.ceil(8 * gap) if gap > 0 else 0
    moving = [k for k in teacher.outputs if not mods[k].discrete]
    t0 = {k: inputs.times[k] for k in mods}
    first = _guided(teacher, inputs.tokens, t0, inputs.roles, empty, guidance)
    if steps == 0:
        return {k: first[k] for k in moving}, {
            k: first[k] for k in teacher.outputs if mods[k].discrete
        }
    state = {k: inputs.tokens[k].clone() for k in moving}

    def at(tau: float) -> dict[str, Tensor]:
        return {k: t0[k] + tau * (targets[k] - t0[k]) for k in mods}

    def velocity(tokens_now: dict[str, Tensor], tau: float, out=None) -> dict[str, Tensor]:
        if out is None:
            tokens = {**inputs.tokens, **tokens_now}
            out = _guided(teacher, tokens, at(tau), inputs.roles, empty, guidance)
        return {k: out[k] * _span(targets[k] - t0[k], out[k]) for k in moving}

    h = 1.0 / steps
    for i in range(steps):
        v = velocity(state, i * h, first if i == 0 else None)
        half = {k: state[k] + 0.5 * h * v[k] for k in moving}
        v2 = velocity(half, (i + 0.5) * h)
        state = {k: state[k] + h * v2[k] for k in moving}
    average = {}
    for k in moving:
        span = _span(targets[k] - t0[k], state[k])
        average[k] = torch.where(
            span > 0, (state[k] - inputs.tokens[k]) / span.clamp(min=1e-12), first[k]
        )
    return average, {k: first[k] for k in teacher.outputs if mods[k].discrete}


def _span(d: Tensor, like: Tensor) -> Tensor:
    """(b,) or (b, n) step sizes, shaped to broadcast against a stream's tokens."""
    while d.dim() < like.dim():
        d = d.unsqueeze(-1)
    return d.to(like.dtype)
