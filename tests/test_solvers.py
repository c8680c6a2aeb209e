import math

import pytest
import torch

from anydit.flow import shift_time
from anydit.sampling import SOLVERS, joint_grids, unmask_step


def time_grid(steps: int, shift: float = 1.0, dtype=torch.float64):
    """steps + 1 times from 0 to 1: a uniform grid, shifted."""
    return shift_time(torch.linspace(0, 1, steps + 1, dtype=torch.float64), shift).to(dtype)


def _field(a: float):
    """dx/dt = a x: x(1) = x(0) e^a, per modality (two modalities with different a)."""

    def velocity_fn(x, t):
        return {"p": a * x["p"], "q": -a * x["q"]}

    return velocity_fn


def _solve(solver: str, steps: int, a: float = 1.0):
    x = {
        "p": torch.ones(2, 1, 1, dtype=torch.float64),
        "q": torch.ones(2, 1, 1, dtype=torch.float64),
    }
    grid = {n: time_grid(steps, dtype=torch.float64) for n in x}
    out = SOLVERS[solver](_field(a), x, grid, {})
    return (out["p"][0, 0, 0] - math.exp(a)).abs().item(), (
        out["q"][0, 0, 0] - math.exp(-a)
    ).abs().item()


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_convergence_order_on_exponential(solver, order):
    e1, _ = _solve(solver, 16)
    e2, f2 = _solve(solver, 32)
    ratio = e1 / e2
    assert ratio == pytest.approx(2**order, rel=0.1)
    assert f2 < 1e-2


def test_second_order_exact_on_linear_time_field():
    # dx/dt = t: x(1) = x(0) + 1/2. Heun (trapezoid) and midpoint are exact; Euler is not.
    def velocity_fn(x, t):
        return {"p": torch.full_like(x["p"], float(t["p"]))}

    x = {"p": torch.zeros(1, 1, 1, dtype=torch.float64)}
    grid = {"p": time_grid(3, shift=2.0, dtype=torch.float64)}
    for solver in ("heun", "midpoint"):
        assert SOLVERS[solver](velocity_fn, x, grid, {})["p"].item() == pytest.approx(
            0.5, abs=1e-14
        )
    assert abs(SOLVERS["euler"](velocity_fn, x, grid, {})["p"].item() - 0.5) > 0.05


def test_euler_exact_on_straight_path():
    # The rectified-flow field of a single data point x1: v(x, t) = (x1 - x) / (1 - t).
    x1 = torch.tensor([[[2.0, -3.0]]], dtype=torch.float64)

    def velocity_fn(x, t):
        return {"p": (x1 - x["p"]) / (1 - t["p"])}

    x = {"p": torch.tensor([[[0.5, 0.5]]], dtype=torch.float64)}
    out = SOLVERS["euler"](velocity_fn, x, {"p": time_grid(4, dtype=torch.float64)}, {})
    torch.testing.assert_close(out["p"], x1, rtol=0, atol=1e-12)


def test_joint_grids_asynchronous_step_counts():
    grids = joint_grids({"a": 8, "b": 2, "c": 3}, {"a": 1.0, "b": 1.0, "c": 2.0})
    lengths = {len(g) for g in grids.values()}
    assert len(lengths) == 1
    for name, steps in {"a": 8, "b": 2, "c": 3}.items():
        g = grids[name]
        assert g[0] == 0 and g[-1] == 1 and (g.diff() >= 0).all()
        assert int((g.diff() > 0).sum()) == steps  # moves exactly its own number of times


def test_joint_grids_first_group_runs_before_the_rest():
    grids = joint_grids({"img": 2, "label": 1, "snd": 4}, {"img": 1.0, "label": 1.0, "snd": 1.0},
                        first={"label"})  # fmt: skip
    assert grids["label"].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # one step, then holds
    assert grids["img"].tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 1.0]  # waits, then its 2 steps
    assert grids["snd"].tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]
    same = joint_grids({"img": 2, "label": 1}, {"img": 1.0, "label": 1.0})
    assert joint_grids({"img": 2, "label": 1}, {"img": 1.0, "label": 1.0}, first=()).keys() == (
        same.keys()
    )
    for k in same:  # nothing first, or everything first: the ordinary grids
        alone = joint_grids(
            {"img": 2, "label": 1}, {"img": 1.0, "label": 1.0}, first={"img", "label"}
        )
        assert torch.equal(alone[k], same[k])


def test_asynchronous_solver_evaluations():
    calls = []

    def velocity_fn(x, t):
        calls.append({k: float(v) for k, v in t.items()})
        return {k: torch.ones_like(v) for k, v in x.items()}

    x = {"a": torch.zeros(1, 1, 1), "b": torch.zeros(1, 1, 1)}
    out = SOLVERS["euler"](velocity_fn, x, joint_grids({"a": 4, "b": 2}, {"a": 1.0, "b": 1.0}), {})
    assert len(calls) == 4  # the union of both grids
    assert out["a"].item() == pytest.approx(1.0) and out["b"].item() == pytest.approx(1.0)
    assert sorted({c["b"] for c in calls}) == [0.0, 0.5]


def test_unmask_step_reveals_all_at_one_and_samples_distribution():
    probs = torch.tensor([0.2, 0.5, 0.3])
    logits = probs.log().expand(20000, 1, 3)
    ids = torch.full((20000, 1), 3)
    g = torch.Generator().manual_seed(0)
    out = unmask_step(ids, logits, torch.tensor(0.0), torch.tensor(1.0), 3, g)
    assert (out != 3).all()
    freq = torch.bincount(out.reshape(-1), minlength=3).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    half = unmask_step(ids, logits, torch.tensor(0.0), torch.tensor(0.5), 3, g)
    assert (half != 3).float().mean().item() == pytest.approx(0.5, abs=0.02)
    revealed = torch.tensor([[1]])
    assert unmask_step(revealed, logits[:1], torch.tensor(0.5), torch.tensor(1.0), 3, g).item() == 1


def test_confidence_unmasking_reveals_surest_tokens_first():
    # positions 0 and 1 are near-certain, 2 and 3 uniform: at p_reveal = 1/2 exactly the first
    # two are revealed (2 masked x 1/2 ... 4 x 1/2 = 2 reveals, floor(2 + u) = 2)
    logits = torch.zeros(8, 4, 5)
    logits[:, 0, 3] = 20.0
    logits[:, 1, 1] = 20.0
    ids = torch.full((8, 4), 5)
    g = torch.Generator().manual_seed(0)
    out = unmask_step(ids, logits, torch.tensor(0.0), torch.tensor(0.5), 5, g, order="confidence")
    assert (out[:, 0] == 3).all() and (out[:, 1] == 1).all()
    assert (out[:, 2:] == 5).all()
    rand = unmask_step(ids, logits, torch.tensor(0.0), torch.tensor(0.5), 5, g, order="random")
    assert (rand[:, 2:] != 5).any()  # the random order reveals uncertain tokens too
    done = unmask_step(out, logits, torch.tensor(0.5), torch.tensor(1.0), 5, g, order="confidence")
    assert (done != 5).all()
    with pytest.raises(ValueError, match="unmasking order: expected 'random' or 'confidence'"):
        unmask_step(ids, logits, torch.tensor(0.0), torch.tensor(0.5), 5, g, order="left")


def test_confidence_unmasking_keeps_the_expected_count():
    logits = torch.randn(400, 30, 7)
    ids = torch.full((400, 30), 7)
    g = torch.Generator().manual_seed(1)
    out = unmask_step(ids, logits, torch.tensor(0.2), torch.tensor(0.3), 7, g, order="confidence")
    share = (out != 7).float().mean().item()
    assert share == pytest.approx(0.1 / 0.8, abs=0.01)


def test_temperature_sharpens_discrete_draws():
    logits = torch.tensor([0.0, 0.5, 1.0]).expand(5000, 1, 3)
    ids = torch.full((5000, 1), 3)
    g = torch.Generator().manual_seed(0)
    cold = unmask_step(ids, logits, torch.tensor(0.0), torch.tensor(1.0), 3, g, temperature=0.05)
    warm = unmask_step(ids, logits, torch.tensor(0.0), torch.tensor(1.0), 3, g, temperature=1.0)
    assert (cold == 2).float().mean() > 0.99
    assert (warm == 2).float().mean() < 0.6
