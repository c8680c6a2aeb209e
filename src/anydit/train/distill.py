"""Distillation: a student learns to predict what a teacher predicts, on the training inputs
of the any-to-any objective (random roles, times, masks and noise). One recipe for recovering a
pruned model and for few-step students (flow maps, ``flow.flowmap``).

The loss, per generated modality and over the tokens being generated: the squared difference
of velocities (continuous) or the KL divergence from the teacher's clean-token distribution to
the student's (discrete); plus, with ``layers``, ``layer_weight`` times the squared difference
of hidden states after matched blocks relative to the teacher's hidden state's mean square
(PPCL's layer-wise distillation), averaged over streams and blocks. Relative, because hidden
states are large: their raw squared difference outweighed the outputs' a hundredfold and left
the pruned demo model 2-6 points further from its teacher (docs/compress.md).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from anydit.config import FlowConfig
from anydit.flow.flowmap import JUMPS, jump_targets, plan_jumps, teacher_jump
from anydit.flow.objective import make_inputs
from anydit.flow.roles import Role
from anydit.model.dynamic import width_loss
from anydit.train import distributed
from anydit.train.optim import autocast_for, make_optimizer


def _blocks(model) -> list:
    return [*model.blocks, *model.single_blocks]


def _hidden(model, store: list):
    """Hooks that append each block's output (a dict of stream tensors) to ``store``."""
    return [b.register_forward_hook(lambda m, a, out: store.append(out)) for b in _blocks(model)]


def distill_loss(
    student,
    teacher,
    inputs,
    layers: dict[int, int] | None = None,
    jump: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
    layer_weight: float = 1.0,
    net=None,
) -> Tensor:
    """The distillation loss of one batch of training inputs (teacher under no_grad). With
    ``jump`` = (target times, the teacher's outputs for them: ``flowmap.teacher_jump``) the
    student, a flow map, is asked for the average velocity to the targets. ``net``: the module
    to call for the student (its DDP wrapper on several processes; default the student)."""
    net = student if net is None else net
    s_hidden, t_hidden = [], []
    hooks = _hidden(student, s_hidden) + (_hidden(teacher, t_hidden) if layers else [])
    try:
        if jump is None:
            with torch.no_grad():
                want = teacher(inputs.tokens, inputs.times)
            got = net(inputs.tokens, inputs.times)
        else:
            targets, want = jump
            got = net(inputs.tokens, inputs.times, targets)
    finally:
        for h in hooks:
            h.remove()
    total = torch.zeros(())
    for name, m in student.modalities.items():
        if name not in got:
            continue
        scored = inputs.scored[name].float()  # (b, n)
        count = scored.sum().clamp(min=1.0)
        if m.discrete:
            per = F.kl_div(
                F.log_softmax(got[name].float(), -1),
                F.log_softmax(want[name].float(), -1),
                log_target=True,
                reduction="none",
            ).sum(-1)  # (b, n)
        else:
            per = (got[name].float() - want[name].float()).pow(2).mean(-1)  # (b, n)
        total = total + (per * scored).sum() / count
    matched = []
    for s_index, t_index in (layers or {}).items():
        s_out, t_out = s_hidden[s_index], t_hidden[t_index]
        matched += [
            (s_out[k].float() - t_out[k].float()).pow(2).mean()
            / t_out[k].float().pow(2).mean().clamp(min=1e-12)
            for k in s_out
        ]
    if matched:
        total = total + layer_weight * sum(matched) / len(matched)
    return total


def parse_task(text: str, modalities) -> dict[str, Role]:
    """A task pattern from ``"GIVEN... -> GENERATED..."`` (names separated by commas or
    spaces; either side may be empty, ``"-> image label"`` is joint generation); modalities
    not named are dropped. Returns {modality: Role} over every modality."""
    if text.count("->") != 1:
        raise ValueError(f"task {text!r}: expected 'GIVEN -> GENERATED', e.g. 'image -> label'")
    left, right = (side.replace(",", " ").split() for side in text.split("->"))
    unknown = [n for n in left + right if n not in modalities]
    if unknown:
        raise ValueError(f"task {text!r}: unknown modalities {unknown} (has {list(modalities)})")
    if set(left) & set(right) or not right:
        raise ValueError(f"task {text!r}: expected at least one generated modality, none given too")
    fixed = [n for n in right if not modalities[n].cfg.generate]
    if fixed:
        raise ValueError(f"task {text!r}: {fixed} are conditions only and cannot be generated")
    roles = {n: Role.DROP for n in modalities}
    roles |= {n: Role.GIVEN for n in left} | {n: Role.GENERATE for n in right}
    return roles


def task_roles(
    tasks: list[dict[str, Role]], b: int, share: float, generator, device
) -> dict[str, Tensor] | None:
    """{modality: (b,) role codes}: a ``share`` of the rows take one of ``tasks`` or their
    guidance branches (the same with the given modalities dropped), uniformly; the others -1
    (drawn as in training: ``make_inputs``'s ``roles``). Distilling on the tasks
    a model will serve covers their role patterns, which training's independent draws reach
    rarely (the digits demo's image -> label + text: 1.5% of rows)."""
    if not tasks or share <= 0:
        return None
    unguided = [{n: Role.DROP if r == Role.GIVEN else r for n, r in t.items()} for t in tasks]
    tasks = [t for i, t in enumerate(tasks + unguided) if t not in (tasks + unguided)[:i]]
    rows = torch.rand(b, generator=generator, device=device) < share  # (b,)
    which = torch.randint(len(tasks), (b,), generator=generator, device=device)  # (b,)
    out = {}
    for name in tasks[0]:
        codes = torch.tensor([int(t[name]) for t in tasks], device=device)  # (tasks,)
        out[name] = torch.where(rows, codes[which], torch.full_like(which, -1))
    return out


def cosine_factor(done: float) -> float:
    """The learning-rate factor of cosine decay after a share ``done`` in [0, 1] of training:
    1 at the start, 0.5 half-way, 0 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, done))))


def distill(
    student,
    teacher,
    batches: Iterator[dict[str, Tensor]],
    steps: int | None = None,
    minutes: float | None = None,
    lr: float = 3e-4,
    layers: dict[int, int] | None = None,
    flow: FlowConfig | None = None,
    precision: str = "fp32",
    seed: int = 0,
    log=print,
    guidance: float = 1.0,
    layer_weight: float = 1.0,
    tasks: list[dict[str, Role]] | None = None,
    task_share: float = 0.5,
) -> list[float]:
    """Train ``student`` towards ``teacher`` on raw batches for ``steps`` steps or ``minutes``
    of wall time (whichever comes first), AdamW with cosine decay over ``steps`` (or, when only
    minutes are given, over the wall time: the lr reaches 0 as the time runs out). ``layers``
    maps student block indices to teacher block indices whose outputs are matched, weighted by
    ``layer_weight`` (see the module docstring). A flow-map student (``cfg.flow_map``) learns
    jumps of sizes drawn from ``flowmap.JUMPS`` per batch, towards the teacher's ODE solution
    guided by ``guidance``. ``tasks`` (``parse_task`` patterns): a ``task_share`` of each
    batch's rows take one of them as its roles (``task_roles``), the rest training's. Returns
    the losses.

    Inside a distributed job (``distributed.run_local`` or torchrun) each process reads its own
    ``batches`` and draws its own noise; the student is wrapped in DDP, and rank 0's clock
    decides the lr and when to stop, so every process takes the same steps."""
    if steps is None and minutes is None:
        raise ValueError("distill: give steps or minutes")
    flow = flow or FlowConfig()
    device = next(student.parameters()).device
    teacher.eval()
    student.train()
    info = distributed.setup(device.type)
    net = distributed.parallelize(student, info, "ddp")
    optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if steps else None
    gen = torch.Generator(device).manual_seed(seed + 1000 * info.rank)
    picker = torch.Generator().manual_seed(seed + 1 + 1000 * info.rank)  # jump sizes and plans
    losses: list[float] = []
    kept: list[float] = []  # dynamic width: each step's share of MLP multiply-adds kept
    start = time.perf_counter()

    def done() -> float:  # the share of the wall time spent, rank 0's
        return distributed.broadcast_value((time.perf_counter() - start) / (60 * minutes))

    while (steps is None or len(losses) < steps) and (minutes is None or done() < 1.0):
        raw, present = next(batches)
        raw = {k: v.to(device) for k, v in raw.items()}
        b = next(iter(raw.values())).shape[0]
        starts = ends = None
        if student.cfg.flow_map:
            size = JUMPS[int(torch.randint(len(JUMPS), (1,), generator=picker))]
            starts, ends = plan_jumps(student.modalities, b, size, picker)
        inputs = make_inputs(
            student.modalities, raw, flow, student.cfg.per_token_time, present or None, gen,
            times=starts, roles=task_roles(tasks or [], b, task_share, gen, device),
        )  # fmt: skip
        jump = None
        if student.cfg.flow_map:
            targets = jump_targets(inputs, student.modalities, size, ends)
            with autocast_for(device, precision):
                average, logits = teacher_jump(teacher, inputs, targets, guidance, gen)
            jump = (targets, {**average, **logits})
        with autocast_for(device, precision):
            loss = distill_loss(student, teacher, inputs, layers, jump, layer_weight, net)
            width = width_loss(student)  # dynamic width's share of the MLPs kept, to its target
            if width is not None:
                loss = loss + width[0]
                kept.append(width[1].item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        else:
            factor = cosine_factor(done())
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
        losses.append(loss.item())
        if log and len(losses) % 50 == 0:
            share = f", MLP share kept {sum(kept[-50:]) / len(kept[-50:]):.3f}" if kept else ""
            log(f"distill: step {len(losses)}, loss {loss.item():.4f}{share}")
    return losses


def _distill_process(student, teacher, batches, kwargs: dict, out: str) -> None:
    """One process of ``distill_local``: its own copy of the student (the pickled one shares
    the parent's memory), its share of the data; rank 0 writes the result."""
    info = distributed.setup("cpu")
    student = copy.deepcopy(student)
    log = kwargs.pop("log", print)
    it = batches(info.rank, info.world)
    losses = distill(student, teacher, it, log=log if info.main else None, **kwargs)
    if info.main:
        from safetensors.torch import save_file

        state = {k: v.detach().clone().contiguous() for k, v in student.state_dict().items()}
        save_file(state, f"{out}.safetensors")
        Path(f"{out}.json").write_text(json.dumps(losses))


def distill_local(
    student, teacher, batches: Callable[[int, int], Iterator], processes: int = 1, **kwargs
) -> list[float]:
    """``distill`` on ``processes`` local processes joined as one job
    (``distributed.run_local``; each with this machine's cores shared out): ``batches(rank,
    world)`` opens a process's share of the data (``data.sources.RandomBatches``); ``kwargs``
    go to ``distill``, whose ``steps`` count optimiser steps of the global batch (on several
    processes rank 0 prints its log lines, or none with ``log=None``). The trained weights are
    loaded back into ``student``. Returns rank 0's losses."""
    if processes == 1:
        return distill(student, teacher, batches(0, 1), **kwargs)
    # a logger does not cross processes: rank 0 prints, or stays silent for log=None
    kwargs["log"] = None if kwargs.get("log", print) is None else print
    size = getattr(batches, "batch_size", processes)
    if size < processes:
        raise ValueError(
            f"distill: a global batch of {size} cannot be shared by {processes} processes"
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "student")
        distributed.run_local(_distill_process, (student, teacher, batches, kwargs, out), processes)
        from safetensors.torch import load_file

        student.load_state_dict(load_file(f"{out}.safetensors"))
        return json.loads(Path(f"{out}.json").read_text())
