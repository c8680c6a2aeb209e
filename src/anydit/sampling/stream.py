"""Streaming: clips longer than the model's window, made chunk by chunk.

The streams on one clock (a video and its audio) are extended together: the first window is
sampled whole; each next window holds the last ``1 - advance`` of what was made as known
context (``Generate(known=..., mask=...)``: its tokens stay at t = 1) and generates the rest,
which is appended. The other streams of the task (a caption, a label) are given to every window
as they are. A window's chunk must be whole tokens of every clocked stream.

    out = stream(model, {"video": "generate", "audio": "generate"}, windows=4, advance=0.5)
    out["video"]  # (n, 4 T, C, H, W): 4 windows long

Needs a model built with ``per_token_time`` (the context is part of a generated stream) and
best one trained with ``p_partial`` on those streams (it has then learned continuation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from anydit.sampling.sample import sample
from anydit.sampling.tasks import Drop, Generate


def _word(role: Any, word: str) -> bool:
    """A role given as the string ``word`` (a value may be a tensor: no == on it)."""
    return isinstance(role, str) and role == word


def _clocked(model, task: dict[str, Any]) -> list[str]:
    """The generated streams that share a clock, with a clear error otherwise."""
    gen = [k for k, r in task.items() if _word(r, "generate") or isinstance(r, Generate)]
    clocks = {model.modalities[k].cfg.clock for k in gen if k in model.modalities}
    names = [k for k in gen if k in model.modalities and model.modalities[k].cfg.clock]
    if not names or len(clocks - {""}) != 1:
        raise ValueError(
            "stream: the task must generate streams on one clock (a video and its audio: "
            f"'clock' in their configs); it generates {gen}"
        )
    left = sorted(set(gen) - set(names))
    if left:
        raise ValueError(
            f"stream: {left} are generated but not on the clock; give them or drop them"
        )
    clock = model.modalities[names[0]].cfg.clock
    fixed = sorted(
        k for k in task if k not in gen and k in model.modalities
        and model.modalities[k].cfg.clock == clock
        and not (_word(task[k], "drop") or isinstance(task[k], Drop))
    )  # fmt: skip
    if fixed:
        raise ValueError(
            f"stream: {fixed} are on clock '{clock}' but given: one window of them cannot "
            "follow a clip several windows long; generate them too, or drop them"
        )
    return names


def stream(
    model,
    task: dict[str, Any],
    windows: float = 4.0,
    advance: float = 0.5,
    n: int = 1,
    seed: int = 0,
    **settings: Any,
) -> dict[str, Tensor]:
    """Sample ``windows`` model windows of the clocked streams ``task`` generates, advancing by
    ``advance`` of a window per chunk (see the module docstring). ``settings`` go to
    ``sample`` (steps, guidance, config...). Returns every stream of the task: the clocked ones
    ``windows`` times as long along their first axis."""
    if not model.cfg.per_token_time:
        raise ValueError(
            "stream: each window holds part of a generated stream as context, which needs a "
            "model built with per_token_time = true"
        )
    if not 0 < advance <= 1 or not windows >= 1:
        raise ValueError(
            f"stream: expected advance in (0, 1] and windows >= 1, got advance {advance!r}, "
            f"windows {windows!r}"
        )
    names = _clocked(model, task)
    mods = {k: model.modalities[k] for k in names}
    length = {k: m.shape[0] for k, m in mods.items()}  # frames a window
    step = {k: advance * length[k] for k in names}
    unit = {k: length[k] // (m.num_tokens // _per_frame(m)) for k, m in mods.items()}
    for k in names:
        if step[k] != int(step[k]) or int(step[k]) % unit[k]:
            raise ValueError(
                f"stream: advance {advance} is {step[k]:g} frames of '{k}', which is not a "
                f"whole number of its tokens ({unit[k]} frames each)"
            )
    total = {k: round(windows * length[k]) for k in names}
    chunks = math.ceil((windows - 1) / advance) if windows > 1 else 0
    out = sample(model, task, n=n, seed=seed, **settings)
    made = {k: out[k] for k in names}
    for c in range(chunks):
        window = dict(task)
        for k in names:
            keep = length[k] - int(step[k])  # frames of context
            known = torch.zeros_like(out[k])
            mask = torch.zeros(known.shape, dtype=torch.bool)
            if keep:
                known[:, :keep] = made[k][:, -keep:]
                mask[:, :keep] = True
            window[k] = Generate(known=known, mask=mask)
        got = sample(model, window, n=n, seed=seed + 1 + c, **settings)
        for k in names:
            made[k] = torch.cat([made[k], got[k][:, length[k] - int(step[k]) :]], 1)
    return out | {k: v[:, : total[k]] for k, v in made.items()}


def _per_frame(m) -> int:
    """Tokens per step along a clocked stream's time axis."""
    times = m.positions()[:, 0]
    return int((times == times[0]).sum())
