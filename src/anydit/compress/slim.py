"""Timestep-dynamic width for a trained model (``anydit slim``, after DyDiT): the dense model
becomes one whose stream MLPs switch channel groups on and off by time
(``model.dynamic.make_dynamic``: every group on at the start, so it computes what the dense
model computes), then it is distilled from the dense model with the width loss pulling the
share of MLP multiply-adds kept to ``keep``.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from anydit.compress.prune import LAYER_WEIGHT, LR, open_batches, recover


def slim(
    model,
    batches: Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]],
    groups: int = 8,
    keep: float = 0.3,
    width_weight: float = 1.0,
    steps: int | None = None,
    minutes: float | None = None,
    lr: float = LR,
    layer_weight: float = LAYER_WEIGHT,
    processes: int = 1,
    precision: str = "auto",
    tasks: list[dict] | None = None,
    task_share: float = 0.5,
    log=print,
):
    """A dynamic-width copy of the dense ``model`` (``groups`` channel groups per stream MLP),
    distilled from it for ``steps`` or ``minutes`` (outputs and each block's hidden state, as
    ``compress.prune.prune`` recovers) plus ``width_weight x (kept - keep)^2``. ``batches``:
    as ``prune`` takes them. Returns (the model, the distillation losses)."""
    from anydit.model.dynamic import make_dynamic

    if model.cfg.dynamic_width:
        raise ValueError("slim: the model has dynamic width already")
    if not (steps or minutes):
        raise ValueError("slim: give steps or minutes of distillation")
    opener, batches = open_batches(batches, processes)
    student = make_dynamic(model, groups, keep, width_weight)
    blocks = len(model.blocks) + len(model.single_blocks)
    losses = recover(
        student, model, batches, opener, processes,
        steps=steps, minutes=minutes, lr=lr, layers={i: i for i in range(blocks)}, log=log,
        layer_weight=layer_weight, precision=precision, tasks=tasks, task_share=task_share,
    )  # fmt: skip
    return student, losses
