"""Roles: what each modality (or token) of a sample plays in a task, and how a role becomes the
network's input. One vocabulary for training and sampling.

    GENERATE  its time runs from 0 to 1: it is sampled (training: scored in the loss)
    GIVEN     held at t = 1 with a clean value: conditioned on
    DROP      held at t = 0, pure noise or all masks: marginalised out

A role tensor is (b,) per sample or (b, n) per token (known tokens of a generated modality are
GIVEN: inpainting, continuation).
"""

from __future__ import annotations

from enum import IntEnum

import torch
from torch import Tensor


class Role(IntEnum):
    GENERATE = 0
    GIVEN = 1
    DROP = 2


def role_times(role: Tensor, t: Tensor) -> Tensor:
    """Times of the model's input: 1 where given, 0 where dropped, ``t`` where generated.
    ``role`` and ``t`` are (b,) or (b, n); per-sample times meet per-token roles."""
    if role.dim() > t.dim():
        t = t[:, None]
    elif role.dim() < t.dim():
        role = role[:, None]
    return torch.where(role == Role.GIVEN, 1.0, torch.where(role == Role.DROP, 0.0, t))


def assemble(
    role: Tensor,
    t: Tensor,
    state: Tensor,
    clean: Tensor | None,
    empty: Tensor | None,
    num_tokens: int,
    per_token: bool,
) -> tuple[Tensor, Tensor]:
    """One modality's (tokens, times) for the network.

    role: (b,) or (b, n) ``Role`` codes; t: (b,) or (b, n) times of generated tokens;
    state: (b, n, p) or (b, n) the generated tokens at time t; clean: the given value (tokens
    like state) where some role is GIVEN; empty: the t = 0 state (noise or masks) where some
    role is DROP. Times come out (b, n) when ``per_token``, else (b,).
    """
    times = role_times(role, t)
    tokens = state
    for value, which in ((clean, Role.GIVEN), (empty, Role.DROP)):
        if value is not None:
            where = role == which
            if where.dim() == 1:
                where = where[:, None]
            if state.dim() == 3:
                where = where[..., None]
            tokens = torch.where(where, value.to(tokens.dtype), tokens)
    if per_token and times.dim() == 1:
        times = times[:, None].expand(times.shape[0], num_tokens)
    return tokens, times
