"""Tasks: a role for each modality.

    generate  runs t from 0 to 1: sampled. ``known`` + ``mask`` fix some of its elements
              (inpainting, continuation, video prediction); those tokens are held at t = 1.
    given     held at t = 1 with the user's value: conditioned on.
    drop      held at t = 0 (pure noise / all masks): marginalised out.

A task is a dict ``{name: role}``; a role may be the strings "generate" or "drop", a
``Given``/``Generate``/``Drop`` object, or (shorthand) any other value, which means given.
Modalities not named in the task are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


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
    return Generate(steps, known, mask)


def given(value: Any) -> Given:
    return Given(value)


def drop() -> Drop:
    return Drop()


@dataclass
class ResolvedRole:
    """A role with values checked and tokenised. tokens (b, n, p) or (b, n); known (b, n) bool."""

    kind: str  # generate | given | drop
    steps: int | None = None
    tokens: Tensor | None = None  # given value, or known values of a partial generate
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
    model, task: dict[str, Any], n: int, device: torch.device | str = "cpu"
) -> dict[str, ResolvedRole]:
    """Check a task against the model and turn values into tokens; every model modality gets
    a role (unnamed ones are dropped). Errors name the modality and what was expected."""
    unknown = sorted(set(task) - set(model.modalities))
    if unknown:
        raise ValueError(f"task names unknown modalities {unknown}; this model has {model.names}")
    resolved = {}
    for name, m in model.modalities.items():
        role = _as_role(name, task.get(name, "drop"))
        if isinstance(role, Drop):
            resolved[name] = ResolvedRole("drop")
        elif isinstance(role, Given):
            resolved[name] = ResolvedRole(
                "given", tokens=m.tokenize(m.prepare(role.value, n)).to(device)
            )
        else:
            if role.steps is not None and (not isinstance(role.steps, int) or role.steps < 1):
                raise ValueError(
                    f"task: modality '{name}': expected steps >= 1, got {role.steps!r}"
                )
            if not m.cfg.generate:
                raise ValueError(
                    f"task: modality '{name}' is a condition only (generate: false, or pooled): "
                    "give it a value or drop it"
                )
            r = ResolvedRole("generate", steps=role.steps)
            if (role.known is None) != (role.mask is None):
                raise ValueError(
                    f"task: modality '{name}': 'known' and 'mask' must be given together"
                )
            if role.known is not None:
                if not model.cfg.per_token_time:
                    raise ValueError(
                        f"task: modality '{name}' has a per-token mask, which needs a model built "
                        "with per_token_time = true"
                    )
                mask = torch.as_tensor(role.mask)
                if mask.dtype != torch.bool:
                    raise ValueError(
                        f"task: modality '{name}': mask must be bool, got dtype {mask.dtype}"
                    )
                mask = m._batch(mask, n)
                r.tokens = m.tokenize(m.prepare(role.known, n)).to(device)
                r.known = m.token_mask(mask).to(device)
            resolved[name] = r
    if not any(r.kind == "generate" for r in resolved.values()):
        raise ValueError(
            f"task generates nothing; name at least one of {model.outputs} as 'generate'"
        )
    return resolved
