"""How training targets are made: probability paths, time samplers and the objective."""

from anydit.flow.objective import (
    DROPPED,
    GENERATE,
    GIVEN,
    TrainingInputs,
    make_inputs,
    training_loss,
)
from anydit.flow.paths import (
    PathSample,
    data_from_velocity,
    interpolate,
    mask_tokens,
    noise_from_velocity,
    reveal_mask,
    sample_path,
    velocity_from_data,
)
from anydit.flow.times import sample_times, shift_time, time_grid

__all__ = [
    "DROPPED",
    "GENERATE",
    "GIVEN",
    "PathSample",
    "TrainingInputs",
    "data_from_velocity",
    "interpolate",
    "make_inputs",
    "mask_tokens",
    "reveal_mask",
    "noise_from_velocity",
    "sample_path",
    "sample_times",
    "shift_time",
    "time_grid",
    "training_loss",
    "velocity_from_data",
]
