"""Mixture-of-experts feed-forwards, per stream (Switch/Dense2MoE/MoDE-style), and upcycling.

A stream's MLP becomes E experts (each a two-layer MLP of the same shape) plus an optional
shared expert every token passes through. A router scores each token from its own features and
its stream's conditioning vector (which carries the stream's time: MoDE's noise-level routing),
and dispatches by one of two rules:

* ``top_k``: each token goes to its k highest-scoring experts, weighted by the router's softmax
  renormalised over those k (the sum held constant in the backward: the gradient is that of
  the probabilities, as in Switch, so the router learns from the task even at k = 1). An
  expert takes at most C = ceil(capacity x tokens x k / E) tokens (first come, in token
  order); a token over capacity gets nothing from that expert.
  ``capacity`` 0: no limit (dropless).
* ``expert_choice``: each expert takes its C highest-scoring tokens (Zhou et al., 2022),
  weighted by the softmax probability; a token may get several experts or none.

Fine-grained experts (DeepSeekMoE): ``hidden_share`` < 1 gives each expert (and the shared
one) that share of the MLP's hidden width, so half-width experts, expert choice at capacity 1
and a shared expert cost what the dense MLP costs. ``scale`` multiplies the routed experts'
weights (DeepSeek-V3's routed scaling): expert choice weighs a token by a probability near
1/E at the start, so E gives the routed experts the shared expert's footing.

All experts run as one batched matmul over an (E, C, d) buffer: no Python loop per expert.
The router's auxiliary losses (Switch's load balance E x sum_e f_e P_e, and the router z-loss
mean(logsumexp(logits)^2)) are kept on the module after each forward (``aux``) for the training
step to add and log per stream.

``upcycle(model, experts=E, ...)`` (and ``train.init`` of a dense file into an expert model)
turns a dense model into an expert model whose experts are copies of each MLP: with ``top_k``
and no capacity limit each token's weights sum to 1 over identical experts, so the output is
the dense model's (tested) whatever the freshly drawn router scores.

Ein notation: T tokens (batch x sequence, flattened), d width, f expert hidden width, E experts,
k experts per token, C capacity per expert.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydit.model.routes import decide

ROUTINGS = ("top_k", "expert_choice")


class Experts(nn.Module):
    """E two-layer MLP experts (+ an optional shared one) behind a router; see the module."""

    def __init__(
        self,
        width: int,
        hidden: int,
        activation: str,
        experts: int,
        top_k: int = 1,
        shared: bool = False,
        routing: str = "top_k",
        capacity: float = 1.25,
        hidden_share: float = 1.0,
        scale: float = 1.0,
    ):
        super().__init__()
        from anydit.model.block import ACTIVATIONS, _mlp

        hidden = max(1, int(hidden * hidden_share))  # fine-grained experts: a share of the MLP
        self.experts, self.top_k, self.routing, self.capacity = experts, top_k, routing, capacity
        self.scale = scale  # the routed experts' weights times this
        self.router = nn.Linear(width, experts, bias=False)  # from the token
        self.router_time = nn.Linear(width, experts, bias=False)  # from the conditioning
        self.w1 = nn.Parameter(torch.empty(experts, width, hidden))
        self.b1 = nn.Parameter(torch.zeros(experts, hidden))
        self.w2 = nn.Parameter(torch.empty(experts, hidden, width))
        self.b2 = nn.Parameter(torch.zeros(experts, width))
        self.act = nn.GELU(approximate=ACTIVATIONS[activation])
        self.shared = _mlp(width, hidden, activation) if shared else None
        for w in (self.w1, self.w2):  # as nn.Linear's Xavier, per expert
            bound = math.sqrt(6.0 / (w.shape[1] + w.shape[2]))
            nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.router.weight)
        nn.init.zeros_(self.router_time.weight)
        self.aux: dict[str, Tensor] = {}
        self.reuse, self.decision = None, None  # sampling's routing reuse (model.routes)

    def slots(self, tokens: int) -> int:
        """C: how many tokens one expert takes."""
        if self.capacity <= 0:
            return tokens
        return min(tokens, math.ceil(self.capacity * tokens * self.top_k / self.experts))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """h (b, n, d) the MLP's input, c (b, 1|n, d) the stream's conditioning -> (b, n, d)."""
        b, n, d = h.shape
        x = h.reshape(b * n, d)  # (T, d)
        routed = []

        def route() -> tuple[Tensor, Tensor, Tensor]:
            logits = self.router(h) + self.router_time(c)  # (b, n, E)
            logits = logits.reshape(b * n, self.experts).float()
            probs = logits.softmax(-1)  # (T, E)
            routed.append((logits, probs))
            slots = self.slots(b * n)
            if self.routing == "expert_choice":
                weight, token = probs.t().topk(slots, dim=1)  # (E, C) each
                return token, weight, torch.ones_like(weight, dtype=torch.bool)
            return self._top_k(probs, slots)

        token, weight, keep = decide(self, route, b * n)
        # one batched matmul for all experts over their (E, C, d) buffer
        buffer = x[token] * keep[..., None].to(x.dtype)  # (E, C, d)
        hidden = self.act(torch.baddbmm(self.b1[:, None].to(x.dtype), buffer, self.w1.to(x.dtype)))
        y = torch.baddbmm(self.b2[:, None].to(x.dtype), hidden, self.w2.to(x.dtype))  # (E, C, d)
        y = y * (weight * keep * self.scale)[..., None].to(y.dtype)
        out = torch.zeros_like(x).index_add_(0, token.flatten(), y.reshape(-1, d))
        if self.shared is not None:
            out = out + self.shared(x)
        if not routed:  # decisions reused at sampling: no router ran, no router losses
            return out.reshape(b, n, d)
        logits, probs = routed[0]
        first = probs.argmax(-1)  # (T,): Switch's f_e counts each token's first choice
        share = torch.bincount(first, minlength=self.experts).to(probs.dtype) / (b * n)
        self.aux = {
            "balance": self.experts * (share * probs.mean(0)).sum(),
            "z": torch.logsumexp(logits, -1).pow(2).mean(),
        }
        return out.reshape(b, n, d)

    def _top_k(self, probs: Tensor, slots: int) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k dispatch: (E, C) token indices, weights and a mask of filled slots."""
        tokens = probs.shape[0]
        top, expert = probs.topk(self.top_k, dim=-1)  # (T, k)
        # renormalised over the chosen k in value; in the backward, the probabilities' own
        # gradient (Switch's), so the task trains the router even at k = 1, where the value is 1
        top = top / top.sum(-1, keepdim=True).detach()
        flat = expert.t().reshape(-1)  # (k T,): every token's first choice, then its second...
        onehot = F.one_hot(flat, self.experts)  # (k T, E)
        position = (onehot.cumsum(0) * onehot).sum(-1) - 1  # (k T,): its place in the expert
        fits = position < slots
        token = torch.zeros(self.experts, slots, dtype=torch.long, device=probs.device)
        weight = torch.zeros(self.experts, slots, dtype=probs.dtype, device=probs.device)
        keep = torch.zeros(self.experts, slots, dtype=torch.bool, device=probs.device)
        source = torch.arange(tokens, device=probs.device).repeat(self.top_k)  # (k T,)
        e, p = flat[fits], position[fits]
        token[e, p] = source[fits]
        weight[e, p] = top.t().reshape(-1)[fits]
        keep[e, p] = True
        return token, weight, keep


def expert_layers(model) -> dict[str, list[Experts]]:
    """Per stream (or "shared" for single-stream blocks), its expert feed-forwards in order."""
    out: dict[str, list[Experts]] = {}
    for block in model.all_blocks:
        layers = dict(block.streams) if hasattr(block, "streams") else {"shared": block.layer}
        for name, layer in layers.items():
            mlp = getattr(layer, "mlp", None)
            if isinstance(mlp, Experts):
                out.setdefault(name, []).append(mlp)
    return out


def router_losses(model) -> dict[str, Tensor]:
    """The last forward's router losses per stream: {"balance/NAME", "z/NAME"}, each the mean
    over that stream's expert layers."""
    out = {}
    for name, layers in expert_layers(model).items():
        for kind in ("balance", "z"):
            values = [m.aux[kind] for m in layers if kind in m.aux]
            if values:
                out[f"{kind}/{name}"] = torch.stack(values).mean()
    return out


def upcycle_state(
    state: dict[str, Tensor], own: dict[str, Tensor], experts: int
) -> dict[str, Tensor]:
    """Dense weights ``state`` mapped onto an expert model's keys ``own``: each stream MLP's
    two linears copied into every expert, a zero shared expert (where ``own`` has one) and the
    routers as ``own`` has them (a fresh model's draw: identical experts whose weights sum to 1
    give the MLP's output whatever the router scores, and a random router breaks the experts'
    symmetry where a zero one would send every token to the first). Keys ``own`` has as they
    are pass through; the rest must be dense MLP weights."""
    out = {}
    for key, value in state.items():
        head, _, tail = key.rpartition(".mlp.")
        if key in own or not head or f"{head}.mlp.w1" not in own:
            out[key] = value  # the same place (or no expert MLP there: the caller names it)
            continue
        index, leaf = tail.split(".")  # "0.weight": first linear; "2.weight": second
        first = index == "0"
        if leaf == "weight" and first and own[f"{head}.mlp.w1"].shape[-1] != value.shape[0]:
            raise ValueError(
                f"upcycle: {key} has {value.shape[0]} hidden channels, the experts "
                f"{own[f'{head}.mlp.w1'].shape[-1]}: copies need model.expert_hidden 1"
            )
        if leaf == "weight":  # nn.Linear keeps (out, in); experts keep (in, out)
            out[f"{head}.mlp.{'w1' if first else 'w2'}"] = value.t().expand(experts, -1, -1).clone()
        else:
            out[f"{head}.mlp.{'b1' if first else 'b2'}"] = value.expand(experts, -1).clone()
    for key, value in own.items():  # (layers that were dense)
        if key.rpartition(".mlp.")[0] + ".mlp.w1" not in out or key in out:
            continue
        if ".mlp.shared." in key:  # the shared expert starts at zero: the experts are the MLP
            out[key] = torch.zeros_like(value)
        elif key.endswith(("router.weight", "router_time.weight")):
            out[key] = value
    return out


@torch.no_grad()
def upcycle(model, experts: int, top_k: int = 1, shared: bool = False, **options):
    """A copy of ``model`` whose stream MLPs are ``experts`` experts, each a copy of the MLP,
    behind a freshly drawn router (``upcycle_state``). ``options``: the other ``expert_*``
    model settings (``routing``, ``capacity``, ``streams``, ``scale``; ``hidden`` must stay 1:
    the experts are copies). With ``top_k`` routing, ``capacity`` 0 (no limit) and ``scale``
    1 the new model computes what ``model`` computes."""
    import dataclasses

    from anydit.model.mmdit import MMDiT

    fields = {f"expert_{k}": v for k, v in options.items()}
    cfg = dataclasses.replace(
        model.cfg, experts=experts, expert_top_k=top_k, expert_shared=shared, **fields
    )
    new = MMDiT(model.modality_configs, cfg)
    own = new.state_dict()
    state = upcycle_state(model.state_dict(), own, experts)
    unplaced = sorted(set(state) - set(own))
    if unplaced:
        raise ValueError(f"upcycle: no place for {unplaced[:6]} in the expert model")
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"upcycle: weights without a source: {missing[:6]}")
    new.load_state_dict(state)
    return new


__all__ = ["ROUTINGS", "Experts", "expert_layers", "router_losses", "upcycle", "upcycle_state"]
