"""How training targets are made: roles, probability paths, time samplers and the objective."""

from anydit.flow.objective import (
    Loss,
    TrainingInputs,
    make_inputs,
    scored_counts,
    training_loss,
    training_objective,
)
from anydit.flow.paths import PathSample, interpolate, reveal_mask, sample_path
from anydit.flow.roles import Role, assemble, role_times
from anydit.flow.times import sample_times, shift_time

__all__ = [
    "Loss",
    "PathSample",
    "Role",
    "TrainingInputs",
    "assemble",
    "interpolate",
    "make_inputs",
    "reveal_mask",
    "role_times",
    "sample_path",
    "sample_times",
    "scored_counts",
    "shift_time",
    "training_loss",
    "training_objective",
]
