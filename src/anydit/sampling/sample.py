"""``sample(model, task, n)``: any marginal, conditional or joint distribution from one model.

Ein notation: b = n * branches batch, n tokens, p features, g guidance branches.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from anydit.config import SampleConfig
from anydit.flow.roles import Role, assemble
from anydit.modalities import Modality
from anydit.model.routes import RouteReuse
from anydit.sampling.cache import clock_of, make_cache
from anydit.sampling.grids import joint_grids
from anydit.sampling.solvers import SOLVERS
from anydit.sampling.tasks import ResolvedRole, resolve_task


def _drop_state(m: Modality, n: int, generator: torch.Generator, device) -> Tensor:
    """The t = 0 state: noise (n, tokens, p) or all masks (n, tokens)."""
    if m.discrete:
        return torch.full((n, m.num_tokens), m.mask_id, dtype=torch.long, device=device)
    return torch.randn(n, m.num_tokens, m.token_dim, generator=generator, device=device)


def guidance_branches(
    roles: dict[str, ResolvedRole],
    guidance: float | dict[str, float],
    streams: dict[str, float] | None = None,
) -> list[tuple[set[str], float, set[str]]]:
    """[(modalities dropped in the branch, weight w, outputs it guides)].

    Each guided output k becomes ``c + sum (w_k - 1)(c - branch)`` over the branches that guide
    it, where w_k is ``streams[k]`` if named there (per-output weights, with a float
    ``guidance``; names the task does not generate are passed over, so one setting serves every
    task), else the branch's w. With nothing given and several modalities generated, a float
    guides each generated modality by the others (joint guidance, as in UniDiffuser): its
    branch drops the other generated modalities, so the push is from the modality's marginal
    towards agreement with the rest; a modality whose weight is 1 gets no branch.
    """
    given = {n for n, r in roles.items() if r.role == Role.GIVEN}
    generated = {n for n, r in roles.items() if r.role == Role.GENERATE}
    streams = streams or {}
    if isinstance(guidance, dict):
        if streams:
            raise ValueError(
                "guidance: a dict weights each condition; stream_guidance needs a float"
            )
        bad = sorted(set(guidance) - given)
        if bad:
            raise ValueError(
                f"guidance names {bad}, which are not given in this task (given: {sorted(given)})"
            )
        return [({n}, float(w), generated) for n, w in sorted(guidance.items()) if w != 1.0]
    weights = {k: float(streams.get(k, guidance)) for k in generated}
    if all(w == 1.0 for w in weights.values()):
        return []
    if given:
        return [(given, float(guidance), generated)]
    if len(generated) > 1:
        return [(generated - {k}, w, {k}) for k, w in sorted(weights.items()) if w != 1.0]
    return []


def isolation_mask(model, generated: list[str], n: int, branches: int, device) -> Tensor:
    """(branches n, N, N) bool attention mask: everything for the first branches - 1 blocks of
    n rows; in the last (the isolation branch) a token reads its own stream and the streams
    not generated (given or dropped), which read only each other: no generated stream hears
    another, not even through a condition's tokens a block later."""
    moving = [k for k in generated if k in model.streams]
    if len(moving) < 2:
        raise ValueError(
            f"sample: isolation cuts attention between generated streams; this task generates "
            f"{len(moving)} token stream(s) ({moving}): give isolation = 1 or generate two"
        )
    sizes = torch.tensor(model.stream_sizes, device=device)
    ids = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)  # (N,)
    gen = torch.tensor([k in moving for k in model.streams], device=device)[ids]  # (N,)
    cut = (ids[:, None] == ids[None, :]) | ~gen[None, :]  # (N, N): query, key
    full = torch.ones_like(cut)
    return torch.cat([full.expand(n * (branches - 1), -1, -1), cut.expand(n, -1, -1)])


def next_steps(
    t: dict[str, Tensor], grids: dict[str, Tensor], moving: list[str]
) -> dict[str, float]:
    """How far each generated continuous stream moves on the step that starts at times ``t``
    (a grid row: every stream's time matches it), 0 for a stream that holds on that step."""
    names = list(grids)
    rows = torch.stack([grids[k] for k in names], 1)  # (K + 1, streams)
    now = torch.tensor([float(t[k]) for k in names], dtype=rows.dtype)
    match = ((rows[:-1] - now).abs() < 1e-9).all(1).nonzero()
    if len(match) == 0:
        raise ValueError(f"sample: times {now.tolist()} are not on the sampling grid")
    i = int(match[0])
    return {k: float(grids[k][i + 1] - grids[k][i]) for k in moving}


def jump_targets(
    times: dict[str, Tensor], steps: dict[str, float], dropped: set[str]
) -> dict[str, Tensor]:
    """A flow map's target times in one guidance branch: each moving stream's tokens that are
    not held (t < 1) jump by its step; dropped, given and discrete streams stay."""
    targets = dict(times)
    for k, step in steps.items():
        if k in dropped or step == 0:
            continue
        t = times[k]
        targets[k] = torch.where(t < 1, (t + step).clamp(max=1.0), t)
    return targets


def still_tokens(model, given: dict[str, Tensor], held: set[str]) -> dict[str, Tensor]:
    """Per stream (b, n) bool: the tokens whose time does not move on this evaluation: given
    ones (``given``: (b,) or (b, n) bool per modality), or all of a ``held`` stream."""
    out = {}
    for k in model.streams:
        n = model.modalities[k].num_tokens
        g = given[k] if given[k].dim() == 2 else given[k][:, None].expand(-1, n)
        out[k] = g | (k in held)
    return out


def settings(config: SampleConfig | None = None, **changes: Any) -> SampleConfig:
    """``config`` (default: ``SampleConfig()``) with the changes that are not None, validated."""
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(SampleConfig)})
    if unknown:
        names = sorted(f.name for f in dataclasses.fields(SampleConfig))
        raise ValueError(f"sample: unknown settings {unknown}; expected some of {names}")
    return dataclasses.replace(config or SampleConfig(), **changes)


@torch.no_grad()
def sample(
    model,
    task: dict[str, Any],
    n: int = 1,
    steps: int | None = None,
    solver: str | None = None,
    guidance: float | dict[str, float] | None = None,
    seed: int = 0,
    temperature: float | None = None,
    precision: str | None = None,
    unmasking: str | None = None,
    guidance_interval: tuple[float, float] | None = None,
    shift: float | None = None,
    config: SampleConfig | None = None,
    progress: Callable[[float], None] | None = None,
    stats: dict | None = None,
    **more: Any,
) -> dict[str, Tensor]:
    """Sample from ``model`` under ``task`` (see ``anydit.sampling.tasks``).

    The sampler settings are a ``SampleConfig`` (``config``; default ``SampleConfig()``) with
    any of the keyword settings below that are given replacing its fields; other
    ``SampleConfig`` fields (``cache=...``, ``cache_threshold=...``) may be given by name too.

    Args:
        task: {modality: "generate" | "drop" | value | Generate(...) | Given(...) | Drop()}.
        n: number of samples.
        steps: steps for every generated modality (a ``Generate(steps=...)`` overrides it).
        solver: "euler", "heun" or "midpoint" for continuous streams.
        guidance: classifier-free guidance; a float scales all given modalities together
            (one extra branch with them all dropped), a dict {name: w} guides each separately;
            1 means none. With nothing given, a float guides each of several generated
            modalities towards agreement with the others (one branch per generated modality).
        stream_guidance: (a ``SampleConfig`` field, given by name) {modality: w}: that
            output's weight in place of a float ``guidance``'s where the task generates it,
            e.g. audio guided harder than the video it is made with.
        guidance_interval: (low, high) times; a generated modality is guided only while its
            own time is within [low, high] (t = 0 is noise). Guidance at high noise is what
            narrows diversity most (Kynkäänniemi et al., 2024), so e.g. (0.3, 1) keeps more
            of it at nearly the same fidelity. Default (0, 1): every step.
        shift: time shift of every generated modality's grid (> 1 spends more steps near
            noise); default: each modality's configured ``shift``.
        seed: the same seed gives the same samples.
        temperature: softmax temperature of discrete unmasking.
        precision: "fp32", or "bf16" autocast.
        unmasking: discrete reveal order, "random" (exact ancestral sampling) or
            "confidence" (surest tokens first; more coherent text in few steps).
        progress: called with the share of network evaluations done (0 to 1] after each.
        stats: a dict to fill with what the network ran: ``evaluations`` (samples x calls,
            guidance branches included) and, with a cache, ``block_runs`` and ``blocks``; with
            ``region`` or ``kv_reuse``, ``tokens``, ``tokens_computed`` and ``computed`` (per
            evaluation, {stream: (rows, tokens) bool}, rows = guidance branches x n); with
            ``route_reuse`` on a model with routers, ``route_calls`` (network calls) and
            ``routings`` (those whose routers ran).

    Returns:
        {name: (n, *shape) raw values} for every generated and every given modality.
    """
    cfg = settings(
        config,
        steps=steps,
        solver=solver,
        guidance=guidance,
        temperature=temperature,
        precision=precision,
        unmasking=unmasking,
        guidance_interval=guidance_interval,
        shift=shift,
        **more,
    )
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"sample: n must be an integer >= 1, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"sample: seed must be an integer, got {seed!r}")
    device = next(model.parameters()).device
    mods = model.modalities
    per_token = model.cfg.per_token_time
    jump = cfg.solver == "jump"
    if jump and not model.cfg.flow_map:
        raise ValueError(
            "sample.solver 'jump' needs a flow-map model, trained to jump between times "
            "(anydit distill); this one predicts velocities: use euler, heun or midpoint"
        )
    roles = resolve_task(mods, task, n, per_token, device)
    gen = torch.Generator(device).manual_seed(seed)
    generated = [k for k, r in roles.items() if r.role == Role.GENERATE]
    # The t = 0 state of every modality, drawn in canonical order so seeds are reproducible.
    dropped = {k: _drop_state(m, n, gen, device) for k, m in mods.items()}
    x_init = {k: dropped[k].clone() for k in generated}
    for k in generated:  # known discrete tokens start revealed, so they spend no reveal budget
        if mods[k].discrete and roles[k].known is not None:
            x_init[k] = torch.where(roles[k].known, roles[k].tokens, x_init[k])
    stray = [k for k in cfg.first if k not in generated]
    if stray:
        raise ValueError(
            f"sample.first: {stray} are not generated in this task (generated: {generated})"
        )
    first = {k for k in generated if mods[k].discrete} if cfg.discrete_first else set()
    grids = joint_grids(
        {k: roles[k].steps or cfg.steps for k in generated},
        {k: mods[k].time_shift if cfg.shift is None else cfg.shift for k in generated},
        first=first | set(cfg.first),
    )
    grids = {k: g.to(device) for k, g in grids.items()}
    branches = guidance_branches(roles, cfg.guidance, cfg.stream_guidance)
    discrete = {k: mods[k].mask_id for k in generated if mods[k].discrete}
    no_time = torch.zeros(n, device=device)

    # A generated token at t = 1 (Heun's last evaluation) would read as given to a model that
    # isolates given tokens: keep it just below, where training drew its times.
    top = 1.0 - 1e-6 if model.cfg.isolate_given else 1.0

    def inputs(x: dict[str, Tensor], t: dict[str, Tensor], drop: set[str]):
        tokens, times, given = {}, {}, {}
        for k, m in mods.items():
            r = roles[k]
            role = Role.DROP if k in drop else r.role
            codes = torch.full((n,), int(role), dtype=torch.long, device=device)
            if role == Role.GENERATE and r.known is not None:
                codes = torch.where(r.known, int(Role.GIVEN), codes[:, None])  # (n, tokens)
            state = x[k] if role == Role.GENERATE else dropped[k]
            time = t[k].float().clamp(max=top).expand(n) if role == Role.GENERATE else no_time
            tokens[k], times[k] = assemble(
                codes, time, state, r.tokens, dropped[k], m.num_tokens, per_token
            )
            given[k] = codes == int(Role.GIVEN)  # (n,) or (n, tokens)
        return tokens, times, given

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if cfg.precision == "bf16"
        else contextlib.nullcontext()
    )
    lo, hi = cfg.guidance_interval
    per_step = 1 if cfg.solver in ("euler", "jump") else 2  # evaluations per step
    evaluations = (len(next(iter(grids.values()))) - 1) * per_step
    done = [0]

    isolated = cfg.isolation != 1.0
    if isolated and (cfg.cache or cfg.kv_reuse):
        raise ValueError(
            f"sample: isolation runs its own attention mask, which a cache's blocks do not "
            f"take; use cache '' and kv_reuse false with it (got cache {cfg.cache!r}, kv_reuse "
            f"{cfg.kv_reuse})"
        )
    sets = [set()] + [drop for drop, _, _ in branches] + ([set()] if isolated else [])
    cut = {"mask": isolation_mask(model, generated, n, len(sets), device)} if isolated else {}
    cache = make_cache(
        cfg.cache, cfg.cache_threshold, cfg.cache_interval, cfg.cache_order,
        cfg.cache_ratio, cfg.kv_reuse,
    )  # fmt: skip
    continuous = [k for k in generated if not mods[k].discrete]
    routes = RouteReuse(cfg.route_reuse) if cfg.route_reuse > 0 else None

    def velocity_fn(x: dict[str, Tensor], t: dict[str, Tensor]) -> dict[str, Tensor]:
        done[0] += 1
        if progress is not None:
            progress(min(1.0, done[0] / evaluations))
        parts = [inputs(x, t, drop) for drop in sets]
        tokens = {k: torch.cat([p[0][k] for p in parts]) for k in mods}  # (g n, ...)
        times = {k: torch.cat([p[1][k] for p in parts]) for k in mods}
        if cache is not None:
            step, inner = divmod(done[0] - 1, per_step)
            held = {k for k in generated if float(grids[k][step + 1] - grids[k][step]) == 0}
            held |= set(discrete) if inner else set()  # they update from the first evaluation
            given = {k: torch.cat([p[2][k] for p in parts]) for k in mods}
            cache.tick(clock_of(t, continuous or generated), still_tokens(model, given, held))
        if routes is not None:
            routes.tick({k: float(t[k]) for k in generated})
        with autocast:
            if jump:
                steps_now = next_steps(t, grids, continuous)
                targets = [
                    jump_targets(p[1], steps_now, drop) for p, drop in zip(parts, sets, strict=True)
                ]
                targets = {k: torch.cat([p[k] for p in targets]) for k in mods}
                out = model(tokens, times, targets, **cut)
            else:
                out = model(tokens, times, **cut)
        result = {}
        for k in generated:
            chunks = out[k].float().chunk(len(sets))
            cond = chunks[0]
            if not lo <= float(t[k]) <= hi:
                result[k] = cond
                continue
            result[k] = cond + sum(
                (cfg.stream_guidance.get(k, w) - 1.0) * (cond - c)
                for (_, w, targets), c in zip(branches, chunks[1:], strict=False)
                if k in targets
            )
            if isolated:  # away from what each stream would make without the others
                result[k] = result[k] + (cfg.isolation - 1.0) * (cond - chunks[-1])
        return result

    was_training = model.training
    model.eval()
    if cache is not None:
        cache.attach(model, len(sets), generated)
    if routes is not None and not routes.attach(model):
        routes = None  # a model without routers: nothing to reuse
    wrapped = model.__dict__.get("run_blocks")  # a control branch or a shared reference
    if hasattr(wrapped, "samples"):
        wrapped.samples = n  # per-sample values tile over the guidance branches' row groups
    try:
        x = SOLVERS[cfg.solver](
            velocity_fn, x_init, grids, discrete, gen, cfg.temperature, cfg.unmasking
        )
    finally:
        model.train(was_training)
        if cache is not None:
            cache.detach()
        if routes is not None:
            routes.detach()
        if hasattr(wrapped, "samples"):
            wrapped.samples = None
    if stats is not None:
        stats.update(cache.stats if cache is not None else {})
        if hasattr(cache, "trace"):  # region / kv reuse: per evaluation, the tokens computed
            stats["computed"] = cache.trace
        stats["evaluations"] = done[0] * n * len(sets)
        if routes is not None:  # evaluations (calls) and those whose routers ran
            stats["route_calls"] = routes.stats["evaluations"]
            stats["routings"] = routes.stats["routings"]
    samples = {}
    for k, r in roles.items():
        m = mods[k]
        if r.role == Role.GENERATE:
            tok = x[k]
            if r.known is not None:
                tok = torch.where(
                    r.known if m.discrete else r.known[..., None], r.tokens.to(tok.dtype), tok
                )
            samples[k] = m.detokenize(tok)
        elif r.role == Role.GIVEN:
            samples[k] = m.detokenize(r.tokens)
    return samples
