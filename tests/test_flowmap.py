"""Few-step sampling with flow maps: the teacher's jumps in closed form, the student's one- and
two-step samples of a Gaussian, and the sampler's jump rule."""

from __future__ import annotations

import pytest
import torch
from conftest import four_modalities, perturb
from torch import nn

import anydit
from anydit.flow.flowmap import jump_targets, teacher_jump
from anydit.flow.objective import make_inputs
from anydit.modalities import build_modalities
from anydit.model.extend import extend

MU, SIGMA = 1.5, 0.5
X = anydit.ModalityConfig("x", "vector", (1,), p_given=0.0, p_drop=0.0)


class GaussianTeacher(nn.Module):
    """The exact velocity of the linear path when x1 ~ N(MU, SIGMA^2): E[x1 - x0 | x_t]."""

    def __init__(self):
        super().__init__()
        self.modalities = build_modalities([X])
        self.outputs = ["x"]

    def forward(self, tokens, times, targets=None):
        x, t = tokens["x"].double(), times["x"].double()[:, None, None]  # (b, 1, 1)
        var = t**2 * SIGMA**2 + (1 - t) ** 2
        centred = x - t * MU
        return {"x": (MU + t * SIGMA**2 / var * centred - (1 - t) / var * centred).float()}


def exact_jump(x, t, s):
    """The Gaussian's flow map: N(t mu, V_t) -> N(s mu, V_s), monotone: an affine map."""
    var = lambda u: u**2 * SIGMA**2 + (1 - u) ** 2  # noqa: E731
    return s * MU + torch.sqrt(var(s) / var(t)) * (x - t * MU)


def test_the_teachers_jump_is_the_ode_solution():
    g = torch.Generator().manual_seed(0)
    batch = {"x": MU + SIGMA * torch.randn(512, 1, generator=g)}
    inputs = make_inputs(GaussianTeacher().modalities, batch, anydit.FlowConfig(), False, None, g)
    teacher = GaussianTeacher()
    for step in (1.0, 0.25):
        targets = jump_targets(inputs, teacher.modalities, step)
        average, _ = teacher_jump(teacher, inputs, targets)
        t, s = inputs.times["x"].double(), targets["x"].double()
        x = inputs.tokens["x"].double()[:, 0, 0]
        want = (exact_jump(x, t, s) - x) / (s - t).clamp(min=1e-12)
        moving = s > t
        torch.testing.assert_close(
            average["x"][:, 0, 0].double()[moving], want[moving], rtol=0, atol=2e-3
        )


@pytest.mark.slow
def test_a_distilled_flow_map_samples_the_gaussian_in_one_and_two_steps():
    from anydit.train.distill import distill

    torch.manual_seed(0)
    student = anydit.MMDiT([X], anydit.preset("debug", flow_map=True))
    g = torch.Generator().manual_seed(1)

    def batches():
        while True:
            yield {"x": MU + SIGMA * torch.randn(256, 1, generator=g)}, {}

    distill(student, GaussianTeacher(), batches(), steps=600, lr=2e-3, log=None)
    for steps in (1, 2):
        x = anydit.sample(student, {"x": "generate"}, n=4000, steps=steps, solver="jump", seed=2)[
            "x"
        ]
        assert x.mean().item() == pytest.approx(MU, abs=0.05), steps
        assert x.std().item() == pytest.approx(SIGMA, abs=0.05), steps
    # the teacher's own Euler step from noise misses: std |SIGMA^2 - 1| = 0.75, not 0.5
    assert abs(SIGMA**2 - 1) - SIGMA > 0.2


@pytest.fixture
def model():
    torch.manual_seed(0)
    mods, cfg = four_modalities()
    m = anydit.MMDiT(mods, cfg)
    perturb(m, seed=0, std=0.05)
    return m


def test_a_new_flow_map_computes_what_its_teacher_does(model):
    student = extend(model, [], flow_map=True)
    task = {"image": "generate", "label": 3}
    a = anydit.sample(model, task, n=3, steps=4, seed=0, guidance=2.0)
    b = anydit.sample(student, task, n=3, steps=4, seed=0, guidance=2.0)
    c = anydit.sample(student, task, n=3, steps=4, seed=0, guidance=2.0, solver="jump")
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], c["image"])


def test_the_jump_rule_targets_the_next_grid_time(model):
    student = extend(model, [], flow_map=True)
    seen, forward = [], student.forward
    student.forward = lambda tokens, times, targets=None: (
        seen.append((times, targets)) or forward(tokens, times, targets)
    )
    task = {"image": "generate", "audio": "generate", "label": 3}
    anydit.sample(student, task, n=2, steps=4, solver="jump", guidance=2.0)
    assert len(seen) == 4
    for i, (times, targets) in enumerate(seen):
        for k in ("image", "audio"):  # rows 0-1: everything given; 2-3: the label dropped
            assert torch.allclose(targets[k], times[k] + 0.25) and times[k][0] == i / 4
        assert torch.equal(targets["label"], times["label"])  # given (1) or dropped (0)
        assert torch.equal(targets["text"], times["text"])  # dropped
    with pytest.raises(ValueError, match="sample.solver 'jump' needs a flow-map model"):
        anydit.sample(model, task, n=1, steps=2, solver="jump")
    with pytest.raises(ValueError, match="targets need a model built with flow_map"):
        model({k: v for k, v in seen[0][0].items()}, seen[0][0], seen[0][1])


def test_discrete_first_reveals_the_label_before_anything_jumps(model):
    student = extend(model, [], flow_map=True)
    seen, forward = [], student.forward
    student.forward = lambda tokens, times, targets=None: (
        seen.append((tokens, times, targets)) or forward(tokens, times, targets)
    )
    task = {"image": "generate", "label": "generate"}
    out = anydit.sample(student, task, n=3, steps=1, solver="jump", discrete_first=True, seed=1)
    assert len(seen) == 2  # one call reveals the label, one jump moves the image
    (tok0, t0, s0), (tok1, t1, s1) = seen
    mask = student.modalities["label"].mask_id
    assert (tok0["label"] == mask).all() and (tok1["label"] != mask).all()
    assert (t0["image"] == 0).all() and torch.equal(s0["image"], t0["image"])  # holds: no jump
    assert (t1["label"] == 1).all() and (t1["image"] == 0).all() and (s1["image"] == 1).all()
    assert torch.equal(tok1["label"][:, 0], out["label"])  # the image jumped to that label
    anydit.sample(student, task, n=3, steps=1, solver="jump", seed=1)
    assert len(seen) == 3  # without it: one call for both


def test_a_holding_stream_gets_no_jump(model):
    """Asynchronous steps: a stream that holds on a step is asked for no jump on it."""
    student = extend(model, [], flow_map=True)
    seen, forward = [], student.forward
    student.forward = lambda tokens, times, targets=None: (
        seen.append((times, targets)) or forward(tokens, times, targets)
    )
    task = {"image": anydit.Generate(steps=2), "audio": anydit.Generate(steps=4), "label": 3}
    anydit.sample(student, task, n=1, steps=4, solver="jump")
    moves = [bool((s["image"] > t["image"]).any()) for t, s in seen]
    assert len(seen) == 4 and moves == [False, True, False, True]  # its grid: 0, 0, a, a, 1
    assert all(bool((s["audio"] > t["audio"]).all()) for t, s in seen)  # moves every step
