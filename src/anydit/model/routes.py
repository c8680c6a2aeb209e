"""Routing reuse at sampling (MoDE's noise-level routing cache): the routers of expert
feed-forwards (``model.experts``) and of dynamic width (``model.dynamic_width``) decide from the
tokens' noise level, which moves little between close sampling steps, so a sampler may keep
their decisions: while no generated stream's time has moved ``threshold`` or more since the
evaluation that last routed, every router reuses what it decided there (experts: which tokens
go to which expert and with what weight; width: which channel groups are on) instead of running
again. Threshold 0 routes at every evaluation.

The decisions live on the routing modules (``reuse``, ``decision``) for one ``sample`` call;
``stats`` counts the evaluations and those that routed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class RouteReuse:
    """The shared clock of one sampling call's routers; see the module docstring."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.routed_at: dict[str, float] | None = None
        self.fresh = True
        self.modules: list = []
        self.stats = {"evaluations": 0, "routings": 0}

    def attach(self, model) -> bool:
        """Point every routing module of ``model`` at this clock; False when it has none."""
        self.modules = [m for m in model.modules() if hasattr(m, "reuse")]
        for m in self.modules:
            m.reuse, m.decision = self, None
        return bool(self.modules)

    def tick(self, times: dict[str, float]) -> None:
        """Before an evaluation at the generated streams' ``times``: route again, or reuse
        the last decisions."""
        self.stats["evaluations"] += 1
        last = self.routed_at
        self.fresh = last is None or any(
            not abs(t - last[k]) < self.threshold for k, t in times.items()
        )
        if self.fresh:
            self.routed_at = dict(times)
            self.stats["routings"] += 1

    def detach(self) -> None:
        for m in self.modules:
            m.reuse, m.decision = None, None
        self.modules = []


def decide(module, route: Callable[[], Any], rows: int) -> Any:
    """``module``'s routing decision: ``route()``'s, or the one it kept while its clock says
    reuse (the batch's ``rows`` must be those it was made for)."""
    reuse = getattr(module, "reuse", None)
    if reuse is None or module.training:
        return route()
    kept = module.decision
    if not reuse.fresh and kept is not None and kept[0] == rows:
        return kept[1]
    module.decision = (rows, route())
    return module.decision[1]
