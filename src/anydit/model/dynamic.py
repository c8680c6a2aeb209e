"""Timestep-dynamic width (DyDiT's TDW): each stream MLP's hidden channels, in G groups, are
switched on or off by a small router that reads the stream's conditioning vector (its time,
the other streams' times and the pooled conditions), so a step at a time that needs less
computes less.

Training (``model.dynamic_width: G``): the router's logits per group go through a Gumbel
sigmoid, rounded to 0 / 1 on the forward pass with the sigmoid's gradient on the backward
(straight-through); the hidden channels of a group that is off are zeroed. A width loss,
``dynamic_weight x (kept - dynamic_keep)^2``, pulls the share of MLP multiply-adds kept
(weighted by each layer's tokens and size) to the target. At sampling the router is
deterministic (a group is on where its logit is > 0) and the MLP runs only the groups that are
on: the rows of its two weight matrices are sliced, once per distinct on/off pattern in the
batch (one, when every sample shares its time), so the multiply-adds saved are real; each
layer counts what it ran and what the dense MLP would have run (``width_counts``).

``make_dynamic(model, groups)`` turns a dense model into a dynamic one whose routers start with
every group on (zero weights, a positive bias): the outputs are the dense model's, exactly
(tested). ``anydit slim`` then distils it from the dense model with the width loss.

Ein notation: T tokens (flattened rows and positions), d width, f hidden width, G groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydit.model.routes import decide

ON_BIAS = 3.0  # a new router's bias: every group on (a logistic draw below -3: 4.7% of them)


class WidthRouter(nn.Module):
    """On/off decisions for the G channel groups of one MLP, from the conditioning vector."""

    def __init__(self, width: int, hidden: int, groups: int):
        super().__init__()
        if groups < 2 or hidden % groups:
            raise ValueError(
                f"model.dynamic_width: expected a number of groups >= 2 that divides the MLP's "
                f"hidden width {hidden}, got {groups}"
            )
        self.groups, self.hidden = groups, hidden
        self.proj = nn.Linear(width, groups)
        self.reset()
        self.kept: tuple[Tensor, int] | None = None  # the last training forward's share of
        # groups on (a scalar) and the dense MLP's multiply-adds it is a share of
        self.macs = [0, 0]  # multiply-adds run / of the dense MLP, in eval forwards
        self.reuse, self.decision = None, None  # sampling's routing reuse (model.routes)

    @torch.no_grad()
    def reset(self) -> None:
        """Every group on: zero weights, a bias of ``ON_BIAS``."""
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, ON_BIAS)

    def gates(self, c: Tensor) -> Tensor:
        """c (b, 1|n, d) -> (b, 1|n, G) in {0, 1}: straight-through Gumbel-sigmoid gates in
        training, the logits' signs otherwise."""
        logits = self.proj(c).float()
        if not self.training:
            return (logits > 0).float()
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid(logits + torch.log(u) - torch.log1p(-u))
        hard = (soft > 0.5).float()
        return hard + soft - soft.detach()

    def forward(self, mlp: nn.Sequential, h: Tensor, c: Tensor) -> Tensor:
        """The MLP ``mlp`` (Linear, activation, Linear) on h (b, n, d) with the groups the
        router turns on for c (b, 1|n, d)."""
        b, n, d = h.shape
        up, act, down = mlp[0], mlp[1], mlp[2]
        g = decide(self, lambda: self.gates(c), b * c.shape[1])  # (b, 1|n, G)
        f = up.out_features
        dense = b * n * 2 * d * f
        if self.training or not (isinstance(up, nn.Linear) and isinstance(down, nn.Linear)):
            hidden = act(up(h))  # (b, n, f)
            mask = g.to(hidden.dtype).repeat_interleave(f // self.groups, -1)  # (b, 1|n, f)
            if self.training:
                self.kept = (g.expand(b, n, -1).mean(), dense)
            else:
                self.macs[0] += dense
                self.macs[1] += dense
            return down(hidden * mask)
        on = g > 0  # (b, 1|n, G)
        self.macs[1] += dense
        first = on.reshape(-1, self.groups)[0]  # (G,)
        if bool((on == first).all()):  # one pattern for every token: sampling's usual case
            self.macs[0] += b * n * 2 * d * int(first.sum()) * (f // self.groups)
            return self._groups(h, first, up, act, down)
        return self._patterns(h, on, up, act, down)

    def _groups(self, x: Tensor, on: Tensor, up: nn.Linear, act, down: nn.Linear) -> Tensor:
        """The MLP over only the channels of the groups ``on`` (G,) bool: the rows of ``up``
        and the columns of ``down`` that belong to them. x (..., d) -> (..., d)."""
        if bool(on.all()):
            return down(act(up(x)))
        if not bool(on.any()):  # every group off: the bias alone (a new tensor, not a view)
            return x.new_zeros(*x.shape[:-1], down.out_features) + down.bias.to(x.dtype)
        d, size = up.in_features, up.out_features // self.groups
        w1 = up.weight.view(self.groups, size, d)[on].reshape(-1, d)  # (k, d)
        b1 = up.bias.view(self.groups, size)[on].reshape(-1)
        w2 = down.weight.view(-1, self.groups, size)[:, on].reshape(down.out_features, -1)
        return F.linear(act(F.linear(x, w1, b1)), w2, down.bias)

    def _patterns(self, h: Tensor, on: Tensor, up, act, down) -> Tensor:
        """Eval with several on/off patterns (rows or tokens that differ): each pattern's
        tokens through ``_groups``. on (b, 1|n, G)."""
        b, n, d = h.shape
        patterns, which = torch.unique(on.reshape(-1, self.groups), dim=0, return_inverse=True)
        if on.shape[1] == 1:  # a pattern per row: each of its n tokens
            which = which.repeat_interleave(n)
        flat = h.reshape(b * n, d)  # (T, d)
        out = None
        size = up.out_features // self.groups
        for p, pattern in enumerate(patterns):
            rows = (which == p).nonzero().squeeze(1)  # (t,)
            y = self._groups(flat[rows], pattern, up, act, down)
            out = y.new_zeros(b * n, y.shape[-1]) if out is None else out
            out[rows] = y.to(out.dtype)
            self.macs[0] += len(rows) * 2 * d * int(pattern.sum()) * size
        return out.view(b, n, -1)


def routers(model) -> list[WidthRouter]:
    """Every ``WidthRouter`` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, WidthRouter)]


def width_kept(model) -> Tensor | None:
    """The last training forward's share of MLP multiply-adds kept, over every dynamic layer
    (each weighted by its dense multiply-adds: its tokens times its MLP's size), or None for a
    model without dynamic width."""
    parts = [r.kept for r in routers(model) if r.kept is not None]
    if not parts:
        return None
    total = sum(w for _, w in parts)
    return sum(k * (w / total) for k, w in parts)


def width_loss(model) -> tuple[Tensor, Tensor] | None:
    """(``dynamic_weight x (kept - dynamic_keep)^2``, kept) of the last training forward
    (``width_kept``), or None for a model without dynamic width."""
    kept = width_kept(model)
    if kept is None:
        return None
    return model.cfg.dynamic_weight * (kept - model.cfg.dynamic_keep) ** 2, kept


def width_counts(model, reset: bool = False) -> tuple[int, int]:
    """(multiply-adds the dynamic MLPs ran, what their dense MLPs would have run) over the eval
    forwards since the last reset; ``reset``: start counting again afterwards."""
    layers = routers(model)
    run, dense = sum(r.macs[0] for r in layers), sum(r.macs[1] for r in layers)
    if reset:
        for r in layers:
            r.macs = [0, 0]
    return run, dense


@torch.no_grad()
def forward_flops(model) -> tuple[float, float, int]:
    """One forward of one sample (every stream at time 0.5), counted by
    ``torch.utils.flop_counter``: (its FLOPs outside the MLPs and routers, the routers' FLOPs,
    the MLPs' dense multiply-adds). Forwards compute every stream's tokens whatever the task,
    so these are the same in every forward. The layers' own counts are left as they were."""
    from torch.utils.flop_counter import FlopCounterMode

    layers = routers(model)
    saved = [list(r.macs) for r in layers]
    for r in layers:
        r.macs = [0, 0]
    tokens, times = {}, {}
    device = next(model.parameters()).device
    for n, m in model.modalities.items():
        shape = (1, m.num_tokens) if m.discrete else (1, m.num_tokens, m.token_dim)
        kind = torch.long if m.discrete else torch.float32
        tokens[n] = torch.zeros(shape, dtype=kind, device=device)
        times[n] = torch.full((1,), 0.5, device=device)
    training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(tokens, times)
        one_run, one_dense = width_counts(model)
    finally:
        model.train(training)
        for r, macs in zip(layers, saved, strict=True):  # the caller's counts back
            r.macs = macs
    counts = counter.get_flop_counts()
    routing = sum(sum(counts[k].values()) for k in counts if k.endswith(".width_router.proj"))
    return counter.get_total_flops() - routing - 2 * one_run, routing, one_dense


def network_share(model, run: int, dense: int, split: tuple | None = None) -> float:
    """The share of the dense network's FLOPs that forwards which ran ``run`` of ``dense`` MLP
    multiply-adds (``width_counts``) cost, routers included. ``split``: ``forward_flops(model)``
    when the caller has it (counted here otherwise)."""
    rest, routing, one_dense = forward_flops(model) if split is None else split
    forwards = dense / one_dense  # one-sample forwards the counted MLPs make
    return (forwards * (rest + routing) + 2 * run) / (forwards * (rest + 2 * one_dense))


def make_dynamic(model, groups: int, keep: float = 0.5, weight: float = 1.0):
    """A copy of the dense ``model`` with timestep-dynamic MLP width in ``groups`` groups, the
    training target ``keep`` (the share of MLP multiply-adds kept) and the width loss's
    ``weight``, every group on: it computes what ``model`` computes."""
    from anydit.model.extend import extend

    if model.cfg.dynamic_width:
        raise ValueError("make_dynamic: the model has dynamic width already")
    return extend(model, [], dynamic_width=groups, dynamic_keep=keep, dynamic_weight=weight)
