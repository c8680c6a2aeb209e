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


class _SameBatches:
    """A picklable ``batches(rank, world)``: each process its own fixed random batches."""

    def __init__(self, teacher, size: int):
        self.batches = [random_batch(teacher, size, seed=s) for s in range(4)]

    def __call__(self, rank: int, world: int):
        while True:
            for batch in self.batches:
                yield {k: v[rank::world] for k, v in batch.items()}, None


@pytest.mark.parametrize("budget", [{"steps": 6}, {"minutes": 0.05}])
def test_two_local_processes_distil_the_parent_s_student(pair, budget):
    """``distill_local`` on 2 processes: the trained weights come back into the parent's
    student, the loss on held-out inputs falls, and the teacher (shared with the processes)
    is left as it was."""
    from anydit.train.distill import distill_local

    teacher, student, inputs = pair
    student = copy.deepcopy(student)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        loss_before = float(distill_loss(student, teacher, inputs))
    losses = distill_local(student, teacher, _SameBatches(teacher, 16), 2, lr=3e-3, log=None,
                           **budget)  # fmt: skip
    assert len(losses) >= 2 and (len(losses) == 6 or "steps" not in budget)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    with torch.no_grad():
        assert float(distill_loss(student.eval(), teacher, inputs)) < loss_before


def test_two_local_processes_distil_a_flow_map(pair):
    """A flow-map student (jump targets drawn per process) trains under DDP too."""
    from anydit.model.extend import extend
    from anydit.train.distill import distill_local

    teacher, _, _ = pair
    student = extend(teacher, [], flow_map=True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    # a logger that cannot be pickled (a lambda) does not stop the processes: rank 0 prints
    losses = distill_local(student, teacher, _SameBatches(teacher, 8), 2, steps=2,
                           log=lambda *_: None)  # fmt: skip
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_task_patterns_set_the_roles_of_their_share_of_rows(pair):
    from anydit.flow.roles import Role
    from anydit.train.distill import parse_task, task_roles

    teacher = pair[0]
    names = list(teacher.modalities)
    first, second = names[0], names[1]
    task = parse_task(f"{first} -> {second}", teacher.modalities)
    assert task[first] == Role.GIVEN and task[second] == Role.GENERATE
    assert all(task[n] == Role.DROP for n in names[2:])
    for bad in (f"{first} {second}", f"{first} -> nothing", f"{first} -> {first}", "a -> b -> c"):
        with pytest.raises(ValueError, match="task"):
            parse_task(bad, teacher.modalities)
    g = torch.Generator().manual_seed(0)
    roles = task_roles([task], 4000, 0.5, g, "cpu")
    chosen = roles[first] >= 0  # (b,)
    assert abs(chosen.float().mean() - 0.5) < 0.05  # the share
    assert all(torch.equal(roles[n] >= 0, chosen) for n in names)
    # the task itself and its guidance branch (the given modality dropped), half each
    given = roles[first][chosen] == Role.GIVEN
    assert abs(given.float().mean() - 0.5) < 0.05
    assert (roles[first][chosen][~given] == Role.DROP).all()
    assert (roles[second][chosen] == Role.GENERATE).all()
    assert task_roles([task], 8, 0.0, g, "cpu") is None

    # make_inputs takes them where >= 0 and draws the rest as in training, same random numbers
    raw = random_batch(teacher, 8)
    forced = {n: torch.full((8,), -1) for n in names}
    forced[first][:4] = Role.GIVEN
    forced[second][:4] = Role.GENERATE
    drawn = make_inputs(teacher.modalities, raw, anydit.FlowConfig(), False, None,
                        torch.Generator().manual_seed(1))  # fmt: skip
    made = make_inputs(teacher.modalities, raw, anydit.FlowConfig(), False, None,
                       torch.Generator().manual_seed(1), roles=forced)  # fmt: skip
    assert (made.roles[first][:4] == Role.GIVEN).all()
    assert (made.roles[second][:4] == Role.GENERATE).all()
    for n in names:
        assert torch.equal(made.roles[n][4:], drawn.roles[n][4:])
        assert torch.equal(made.times[n][4:], drawn.times[n][4:]) or made.times[n].dim() > 1


def test_the_demo_task_patterns_follow_each_task_and_its_via():
    from anydit.demo import TASK_SAMPLING
    from anydit.eval.metrics import TASKS, TaskSampling, task_patterns

    plain = task_patterns()
    assert len(plain) == len(TASKS) and plain[TASKS.index("image_to_text")] == "image -> text"
    assert plain[-1] == "-> image audio label"  # joint: text dropped
    via = task_patterns({"image_to_text": TaskSampling(via=("label",))})
    assert via[TASKS.index("image_to_text")] == "image -> text label"
    assert task_patterns(TASK_SAMPLING)[TASKS.index("audio_to_text")] == "audio -> text label"
