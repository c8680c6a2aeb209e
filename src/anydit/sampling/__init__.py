"""How the flow is integrated: tasks (roles), time grids, solvers and guidance."""

from anydit.sampling.grids import joint_grids
from anydit.sampling.sample import guidance_branches, sample, settings
from anydit.sampling.solvers import SOLVERS, euler, heun, midpoint, unmask_step
from anydit.sampling.stream import stream
from anydit.sampling.tasks import Drop, Generate, Given, drop, generate, given, resolve_task

__all__ = [
    "SOLVERS",
    "Drop",
    "Generate",
    "Given",
    "drop",
    "euler",
    "generate",
    "given",
    "guidance_branches",
    "heun",
    "joint_grids",
    "midpoint",
    "resolve_task",
    "sample",
    "settings",
    "stream",
    "unmask_step",
]
