"""Time grids per generated modality, on one shared step index.

Each modality m with s_m steps owns the points u = k / s_m of a uniform clock u in [0, 1]. The
shared index walks the sorted union of all modalities' points; modality m's time at a union
point is its own latest point (then shifted), so it moves exactly s_m times and holds still in
between. With equal step counts this is the ordinary grid.

``first`` names modalities that run their whole grid before the others start: the others hold
at t = 0 until then, and the first ones hold at t = 1 after. A label revealed first, then an
image and speech that follow it, is what keeps joint samples agreeing at one or two steps.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor

from anydit.flow.times import shift_time


def joint_grids(
    steps: dict[str, int], shifts: dict[str, float], first: tuple[str, ...] | set[str] = ()
) -> dict[str, Tensor]:
    """{name: (K + 1,) float64 times}, K = number of distinct union points minus one (with
    ``first``: the first group's K plus the others' K)."""
    early = [n for n in steps if n in first]
    late = [n for n in steps if n not in first]
    if not early or not late:
        return _union_grids(steps, shifts)
    a = _union_grids({n: steps[n] for n in early}, shifts)  # (K1 + 1,) each
    b = _union_grids({n: steps[n] for n in late}, shifts)  # (K2 + 1,) each
    k1, k2 = len(a[early[0]]) - 1, len(b[late[0]]) - 1
    out = {n: torch.cat([a[n], a[n][-1:].expand(k2)]) for n in early}  # then hold at 1
    out.update({n: torch.cat([b[n][:1].expand(k1), b[n]]) for n in late})  # hold at 0 first
    return {n: out[n] for n in steps}


def _union_grids(steps: dict[str, int], shifts: dict[str, float]) -> dict[str, Tensor]:
    union = sorted({Fraction(k, s) for s in steps.values() for k in range(s + 1)})
    grids = {}
    for name, s in steps.items():
        own = torch.tensor([float(Fraction(int(u * s), s)) for u in union], dtype=torch.float64)
        grids[name] = shift_time(own, shifts[name])
    return grids
