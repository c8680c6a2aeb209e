"""Tasks: a role for each modality.

    generate  runs t from 0 to 1: sampled. ``known`` + ``mask`` fix some of its elements
              (inpainting, continuation, video prediction); those tokens are held at t = 1.
    given     held at t = 1 with the user's value: conditioned on.
    drop      held at t = 0 (pure noise / all masks): marginalised out.

A task is a dict ``{name: role}``; a role may be the strings "generate" or "drop", a
``Given``/``Generate``/``Drop`` object, or (shorthand) any other value, which means given.
Modalities not named in the task are dropped. ``resolve_task`` turns a task into one
``flow.roles.Role`` per modality (the vocabulary training uses too) with its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from anydit.flow.roles import Role
from anydit.modalities import Modality


@dataclass
class Generate:
    """Sample this modality. ``steps`` overrides the call's step count (asynchronous sampling);
    ``known`` (a value) and ``mask`` (data-space bools, True = known) fix part of it."""

    steps: int | None = None
    known: Any = None
    mask: Any = None


@dataclass
class Given:
    """Condition on ``value`` (one sample, repeated, or one per sample)."""

    value: Any


@dataclass
class Drop:
    """Marginalise this modality out."""


def generate(steps: int | None = None, known: Any = None, mask: Any = None) -> Generate:
    """Sample this modality (see ``Generate``)."""
    return Generate(steps, known, mask)


def given(value: Any) -> Given:
    """Condition on ``value``."""
    return Given(value)


def drop() -> Drop:
    """Marginalise this modality out."""
    return Drop()


@dataclass
class ResolvedRole:
    """A role with values checked and tokenised. tokens (b, n, p) or (b, n): the given value, or
    the known values of a partial generate; known (b, n) bool: the tokens held fixed."""

    role: Role
    steps: int | None = None
    tokens: Tensor | None = None
    known: Tensor | None = None


def _as_role(name: str, role: Any) -> Generate | Given | Drop:
    if isinstance(role, Generate | Given | Drop):
        return role
    if isinstance(role, str) and role in ("generate", "drop"):
        return Generate() if role == "generate" else Drop()
    if role is None:
        raise ValueError(
            f"task: modality '{name}' has role None; expected 'generate', 'drop' or a value"
        )
    return Given(role)


def resolve_task(
    modalities: dict[str, Modality], task: dict[str, Any], n: int, per_token: bool, device="cpu"
) -> dict[str, ResolvedRole]:
    """Check a task against the modalities and turn values into tokens; every modality gets a
    role (unnamed ones are dropped). ``per_token``: the model takes per-token times (needed for
    masks). Errors name the modality and what was expected."""
    if not isinstance(task, dict):
        raise ValueError(f"task: expected a dict {{modality: role}}, got {type(task).__name__}")
    unknown = sorted(set(task) - set(modalities), key=str)
    if unknown:
        raise ValueError(
            f"task names unknown modalities {unknown}; expected some of {list(modalities)}"
        )
    resolved = {}
    for name, m in modalities.items():
        role = _as_role(name, task.get(name, "drop"))
        if isinstance(role, Drop):
            resolved[name] = ResolvedRole(Role.DROP)
        elif isinstance(role, Given):
            resolved[name] = ResolvedRole(
                Role.GIVEN, tokens=m.tokenize(m.prepare(role.value, n)).to(device)
            )
        else:
            steps = role.steps
            if steps is not None and (
                not isinstance(steps, int) or isinstance(steps, bool) or steps < 1
            ):
                raise ValueError(f"task: modality '{name}': expected steps >= 1, got {steps!r}")
            if not m.cfg.generate:
                raise ValueError(
                    f"task: modality '{name}' is a condition only (generate: false, or pooled): "
                    "give it a value or drop it"
                )
            r = ResolvedRole(Role.GENERATE, steps=steps)
            if (role.known is None) != (role.mask is None):
                raise ValueError(
                    f"task: modality '{name}': 'known' and 'mask' must be given together"
                )
            if role.known is not None:
                if not per_token:
                    raise ValueError(
                        f"task: modality '{name}' has a per-token mask, which needs a model built "
                        "with per_token_time = true"
                    )
                mask = torch.as_tensor(role.mask)
                if mask.dtype != torch.bool:
                    raise ValueError(
                        f"task: modality '{name}': mask must be bool, got dtype {mask.dtype}"
                    )
                mask = m.batch(mask, n)
                r.tokens = m.tokenize(m.prepare(role.known, n)).to(device)
                r.known = m.token_mask(mask).to(device)
            resolved[name] = r
    if not any(r.role == Role.GENERATE for r in resolved.values()):
        generable = [k for k, m in modalities.items() if m.cfg.generate]
        raise ValueError(f"task generates nothing; name at least one of {generable} as 'generate'")
    return resolved
