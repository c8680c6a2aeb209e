"""Time grids per generated modality, on one shared step index.

Each modality m with s_m steps owns the points u = k / s_m of a uniform clock u in [0, 1]. The
shared index walks the sorted union of all modalities' points; modality m's time at a union
point is its own latest point (then shifted), so it moves exactly s_m times and holds still in
between. With equal step counts this is the ordinary grid.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor

from anydit.flow.times import shift_time


def joint_grids(steps: dict[str, int], shifts: dict[str, float]) -> dict[str, Tensor]:
    """{name: (K + 1,) float64 times}, K = number of distinct union points minus one."""
    union = sorted({Fraction(k, s) for s in steps.values() for k in range(s + 1)})
    grids = {}
    for name, s in steps.items():
        own = torch.tensor([float(Fraction(int(u * s), s)) for u in union], dtype=torch.float64)
        grids[name] = shift_time(own, shifts[name])
    return grids
