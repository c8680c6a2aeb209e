"""ODE solvers for continuous streams and the unmasking step for discrete ones.

All solvers share one signature and are pure functions over dicts of per-modality states:

    solver(velocity_fn, x, grid, discrete, generator=None, temperature=1.0, order="random") -> x

    x[name]     (b, n, p) float state or (b, n) ids (mask id = vocabulary size)
    grid[name]  (K + 1,) times from 0 to 1, the same K for every modality; a modality whose
                grid does not move on step i (t_i == t_{i+1}) is left alone on that step, which
                is how modalities with fewer steps ride along (asynchronous sampling)
    velocity_fn(x, t) -> {name: velocity (b, n, p) or logits (b, n, K)}, t[name] scalar tensors
    discrete    names of the discrete modalities

Discrete modalities move by ancestral unmasking (absorbing-state diffusion): from t_a to t_b
each still-masked token is revealed with probability (t_b - t_a) / (1 - t_a), drawn from the
predicted distribution. Their update uses the first model evaluation of each step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

VelocityFn = Callable[[dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor]]


def unmask_step(
    ids: Tensor,
    logits: Tensor,
    t_a: Tensor,
    t_b: Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    order: str = "random",
) -> Tensor:
    """One step of masked diffusion from t_a to t_b. ids (b, n), logits (b, n, K).

    ``random``: each masked token is revealed with probability (t_b - t_a) / (1 - t_a), the
    exact ancestral sampler of absorbing-state diffusion. ``confidence``: per sample, the same
    expected number of tokens (stochastically rounded) is revealed, choosing the masked positions
    whose drawn token has the highest probability (MaskGIT's ordering): tokens that are nearly
    determined go first, which keeps parallel decoding of text coherent.
    """
    masked = ids == mask_id
    p_reveal = ((t_b - t_a) / (1 - t_a).clamp(min=1e-12)).clamp(0, 1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    drawn = drawn.reshape(ids.shape)
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    if order == "random":
        reveal = masked & (u < p_reveal)
    elif order == "confidence":
        count = masked.sum(1).float() * p_reveal  # (b,) expected reveals
        k = (count + u[:, 0]).floor().long()  # stochastic rounding keeps the expectation
        conf = probs.gather(-1, drawn[..., None]).squeeze(-1).masked_fill(~masked, -1.0)
        rank = conf.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = most confident
        reveal = masked & (rank < k[:, None])
    else:
        raise ValueError(f"unmasking order: expected 'random' or 'confidence', got {order!r}")
    return torch.where(reveal, drawn, ids)


def _times(grid: dict[str, Tensor], i: int | float) -> dict[str, Tensor]:
    """Times at (possibly fractional) step i: linear in between grid points."""
    lo = int(i)
    frac = i - lo
    out = {}
    for name, g in grid.items():
        out[name] = g[lo] if frac == 0 else g[lo] + frac * (g[lo + 1] - g[lo])
    return out


def _hold(t: dict[str, Tensor], t0: dict[str, Tensor], names: set[str]) -> dict[str, Tensor]:
    """Times for an inner evaluation: discrete modalities have not moved yet, so they keep t0."""
    return {n: t0[n] if n in names else v for n, v in t.items()}


def _axpy(
    x: dict[str, Tensor], v: dict[str, Tensor], dt: dict[str, Tensor], skip: set[str]
) -> dict[str, Tensor]:
    """x + dt * v for the continuous modalities; the others unchanged."""
    return {n: x[n] if n in skip else x[n] + dt[n].to(x[n].dtype) * v[n].to(x[n].dtype) for n in x}


def _run(
    method: str,
    velocity_fn: VelocityFn,
    x: dict[str, Tensor],
    grid: dict[str, Tensor],
    discrete: dict[str, int],
    generator: torch.Generator | None,
    temperature: float,
    order: str = "random",
) -> dict[str, Tensor]:
    steps = len(next(iter(grid.values()))) - 1
    skip = set(discrete)
    for i in range(steps):
        t0, t1 = _times(grid, i), _times(grid, i + 1)
        dt = {n: t1[n] - t0[n] for n in grid}
        moving = {n for n in grid if dt[n] != 0}
        frozen = skip | (set(grid) - moving)
        out = velocity_fn(x, t0)
        if method == "euler":
            x_new = _axpy(x, out, dt, frozen)
        elif method == "heun":
            x_pred = _axpy(x, out, dt, frozen)
            out2 = velocity_fn(x_pred, _hold(t1, t0, skip))
            avg = {n: 0.5 * (out[n] + out2[n]) for n in out if n not in skip}
            x_new = _axpy(x, {**out, **avg}, dt, frozen)
        elif method == "midpoint":
            half = {n: 0.5 * dt[n] for n in dt}
            x_mid = _axpy(x, out, half, frozen)
            out2 = velocity_fn(x_mid, _hold(_times(grid, i + 0.5), t0, skip))
            x_new = _axpy(x, {n: out2[n] if n not in skip else out[n] for n in out}, dt, frozen)
        else:
            raise ValueError(f"solver: expected euler, heun or midpoint, got {method!r}")
        for n, mask_id in discrete.items():
            if n in moving:
                x_new[n] = unmask_step(
                    x[n], out[n], t0[n], t1[n], mask_id, generator, temperature, order
                )
        x = x_new
    return x


def euler(velocity_fn, x, grid, discrete, generator=None, temperature=1.0, order="random"):
    """First-order Euler: x += dt * v(x, t). One evaluation per step. With a flow map's
    average velocity over each step (the ``jump`` solver: ``sample`` passes the next grid
    time as the target) this step is exact."""
    return _run("euler", velocity_fn, x, grid, discrete, generator, temperature, order)


def heun(velocity_fn, x, grid, discrete, generator=None, temperature=1.0, order="random"):
    """Heun's second-order method (explicit trapezoid): predictor Euler, corrector averages the
    velocities at both ends. Two evaluations per step."""
    return _run("heun", velocity_fn, x, grid, discrete, generator, temperature, order)


def midpoint(velocity_fn, x, grid, discrete, generator=None, temperature=1.0, order="random"):
    """Explicit midpoint (second order): the velocity at a half Euler step. Two evaluations."""
    return _run("midpoint", velocity_fn, x, grid, discrete, generator, temperature, order)


SOLVERS = {"euler": euler, "heun": heun, "midpoint": midpoint, "jump": euler}
