"""The distillation loss's layer-wise term and the wall-time learning-rate decay."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import four_modalities, perturb, random_batch

import anydit
from anydit.compress import remove_blocks
from anydit.flow.objective import make_inputs
from anydit.train.distill import cosine_factor, distill_loss


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    teacher = anydit.MMDiT(*four_modalities(depth=3)).eval()
    perturb(teacher, seed=1, std=0.05)
    g = torch.Generator().manual_seed(0)
    inputs = make_inputs(teacher.modalities, random_batch(teacher, 8), anydit.FlowConfig(),
                         False, None, g)  # fmt: skip
    return teacher, remove_blocks(teacher, [1]).eval(), inputs


def test_the_layer_term_is_weighted_and_vanishes_for_the_teacher_itself(pair):
    teacher, student, inputs = pair
    layers = {0: 0, 1: 2}  # student block j follows teacher block kept[j]
    with torch.no_grad():
        plain = distill_loss(student, teacher, inputs, layers, layer_weight=0.0)
        one = distill_loss(student, teacher, inputs, layers, layer_weight=1.0)
        three = distill_loss(student, teacher, inputs, layers, layer_weight=3.0)
        same = distill_loss(
            copy.deepcopy(teacher), teacher, inputs, {0: 0, 1: 1, 2: 2}, layer_weight=1.0
        )
    term = float(one - plain)
    assert term > 0
    assert float(three - plain) == pytest.approx(3 * term, rel=1e-5)
    # Relative to the teacher's hidden state: block 0 is unchanged, block 1 (teacher block 2)
    # misses its input's block, so the term is an average of 0 and a share of order one.
    assert 0 < term < 2
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_the_wall_time_decay_is_a_cosine_from_one_to_zero():
    assert cosine_factor(0.0) == 1.0 and cosine_factor(1.0) == pytest.approx(0.0, abs=1e-12)
    assert cosine_factor(0.5) == pytest.approx(0.5)
    assert cosine_factor(0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_factor(2.0) == pytest.approx(0.0, abs=1e-12)  # past the budget: 0, not back up
    assert cosine_factor(-1.0) == 1.0


def test_a_minutes_budget_decays_the_lr_over_the_wall_time(pair, monkeypatch):
    """With only ``minutes``, each step's lr follows ``cosine_factor`` of the elapsed share of
    the budget; with ``steps``, the step-based schedule runs and the wall clock is not asked."""
    import anydit.train.distill as distill_module

    teacher, student, _ = pair
    seen: list[float] = []

    def record(done: float) -> float:
        seen.append(done)
        return cosine_factor(done)

    monkeypatch.setattr(distill_module, "cosine_factor", record)

    def batches():
        while True:
            yield random_batch(teacher, 4), None

    student = copy.deepcopy(student)
    losses = distill_module.distill(student, teacher, batches(), minutes=0.01, log=None)
    assert len(seen) == len(losses) >= 2
    assert all(0 < a < b for a, b in zip(seen, seen[1:], strict=False))  # the clock moves on
    assert seen[-1] > 0.5  # measured up to the end of the budget
    seen.clear()
    distill_module.distill(student, teacher, batches(), steps=2, log=None)
    assert seen == []
