"""Control branches (ControlNet for diffusion transformers; RelaCtrl's light branch): a small
trainable copy of a frozen model's first blocks reads a dense control map -- a low-resolution
image, an edge map -- and adds into one stream of the frozen model after each of those blocks.

Ein notation: b rows, n the stream's tokens, d width, c the control's channels.

    control          (b0, c, H, W), the stream's own grid (H, W) and patch; b0 divides b
    branch input     the frozen model's tokens, with the stream's plus ``embed(control)``
    after block i    x[stream] += strength * out[i](branch block i's output[stream])

``embed`` and every ``out[i]`` start at zero, so a fresh branch (or strength 0) leaves the frozen
model's outputs bit for bit as they were. The branch attaches for a ``with controlled(...)``
scope by replacing ``MMDiT.run_blocks`` on the instance -- the hook sampling caches use -- so
``sample``, ``training_loss`` and the judges run the controlled model unchanged. The sampler
stacks guidance branches as row groups (groups x samples), so b0 maps (1, one per sample, or a
divisor of the samples) tile each group alike (``tile_rows``); every guidance branch sees the
control (it is not dropped for guidance). A branch needs every token of its stream (no
``token_drop``) and replaces ``run_blocks`` as a shared reference does: the two do not combine.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from einops import rearrange
from torch import Tensor, nn

from anydit.model.block import Masked, isolate, run_block


@dataclass
class ControlConfig:
    """What a control branch reads and where it writes.

    stream: the frozen model's continuous, patched stream it adds into (an image).
    channels: channels of the control map (1 for an edge map or a grey low-resolution image).
    depth: how many of the frozen model's first blocks the branch copies (1 .. its blocks).
    recipe: how the map is made from a value of the stream (``data.controls``: "lowres:2",
        "edges"), or "" when maps are given as they are.
    """

    stream: str
    channels: int = 1
    depth: int = 2
    recipe: str = ""


class ControlBranch(nn.Module):
    """Copies of ``model``'s first ``cfg.depth`` blocks with a zero-initialised control
    embedding in and zero-initialised projections out. The frozen model is not stored."""

    def __init__(self, model, cfg: ControlConfig):
        super().__init__()
        check_control(model, cfg)
        self.cfg = cfg
        m = model.modalities[cfg.stream]
        self.patch = m.cfg.patch
        self.grid = tuple(m.cfg.shape[1:])
        width = m.cfg.width or model.cfg.width  # the stream's own width
        self.embed = nn.Linear(cfg.channels * self.patch**2, width)
        self.blocks = nn.ModuleList(copy.deepcopy(model.all_blocks[i]) for i in range(cfg.depth))
        self.out = nn.ModuleList(nn.Linear(width, width) for _ in range(cfg.depth))
        for layer in [self.embed, *self.out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for p in self.blocks.parameters():
            p.requires_grad_(True)
        like = next(model.parameters())
        self.to(device=like.device, dtype=like.dtype)

    def tokens(self, control: Tensor) -> Tensor:
        """(b0, c, H, W) control map -> (b0, n, d) embedded tokens, in the stream's order."""
        want = (self.cfg.channels, *self.grid)
        if control.dim() != 4 or tuple(control.shape[1:]) != want:
            raise ValueError(
                f"control for stream {self.cfg.stream!r}: expected (b, {', '.join(map(str, want))})"
                f", got {tuple(control.shape)}"
            )
        p = self.patch
        patches = rearrange(control, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)
        return self.embed(patches.to(self.embed.weight.dtype))


def check_control(model, cfg: ControlConfig) -> None:
    """One clear message when a branch cannot serve ``model``."""
    m = model.modalities.get(cfg.stream)
    if m is None or m.cfg.kind != "image":
        have = [n for n, x in model.modalities.items() if x.cfg.kind == "image"]
        raise ValueError(
            f"control: stream {cfg.stream!r} must be one of the model's image streams {have}"
        )
    blocks = len(model.all_blocks)
    if not 1 <= cfg.depth <= blocks or cfg.channels < 1:
        raise ValueError(
            f"control: expected 1 <= depth <= {blocks} (the model's blocks) and channels >= 1, "
            f"got depth {cfg.depth}, channels {cfg.channels}"
        )


class _ControlledBlocks:
    """``run_blocks`` of a model with a branch attached (see the module docstring)."""

    def __init__(self, model, branch: ControlBranch, control: Tensor, strength: float):
        self.model, self.branch, self.strength = model, branch, strength
        self.control = control
        self.samples: int | None = None  # set by ``sample`` for its call: rows are (groups n)

    def __call__(self, x, c, rope, start=0, stop=None, given=None, mask=None):
        model, branch, s = self.model, self.branch, self.branch.cfg.stream
        if start != 0 or stop is not None:
            raise ValueError("control: a controlled model runs all its blocks at once")
        if self.strength == 0:  # the frozen model alone
            more = {} if mask is None else {"mask": mask}
            return type(model).run_blocks(model, x, c, rope, given=given, **more)
        if given is not None:
            mask = isolate(given) if mask is None else mask & isolate(given)
        attend = None if mask is None else Masked(mask)
        rows = x[s].shape[0]
        tile = tile_rows(self.control.shape[0], rows, self.samples, "control maps")
        embedded = branch.tokens(self.control.to(x[s].device))  # (b0, n, d)
        if embedded.shape[1] != x[s].shape[1]:
            raise ValueError(
                f"control: stream {s!r} has {x[s].shape[1]} tokens here, its map "
                f"{embedded.shape[1]}: a branch needs every token (no token_drop)"
            )
        h = dict(x)
        h[s] = h[s] + embedded.repeat(tile, 1, 1).to(x[s].dtype)
        frozen = model.cfg.checkpointing and model.training
        own = model.cfg.checkpointing and branch.training
        for i, block in enumerate(model.all_blocks):
            x = run_block(block, x, c, rope, frozen, attend)
            if i < len(branch.blocks):
                h = run_block(branch.blocks[i], h, c, rope, own, attend)
                x = {**x, s: x[s] + self.strength * branch.out[i](h[s])}
        return x


def tile_rows(b0: int, rows: int, samples: int | None, what: str) -> int:
    """How many times ``b0`` per-sample values repeat to fill ``rows`` rows laid out as
    (groups samples) -- ``sample`` stacks its guidance branches so; a plain forward is one
    group. b0 must be 1 or divide the samples, so every group sees each sample's own value."""
    samples = rows if samples is None else samples
    if rows % samples or samples % b0:
        raise ValueError(
            f"{what}: {b0} of them cannot serve {samples} samples (give 1, one per sample, "
            f"or a divisor of the samples: sample i reads value i mod {b0})"
        )
    return rows // b0


@contextmanager
def controlled(
    model, branch: ControlBranch, control: Tensor, strength: float = 1.0, guidance: float = 1.0
):
    """Within the scope, ``model`` runs with ``branch`` reading ``control`` (b0, c, H, W),
    its residuals scaled by ``strength`` (0: the frozen model, bit for bit). ``guidance`` w != 1:
    every call of the model also runs it without the branch and returns
    ``without + w * (with - without)`` per output (classifier-free guidance on the control, as
    ControlNet samplers do: velocities and logits alike; twice the compute)."""
    if "run_blocks" in model.__dict__ or "forward" in model.__dict__:
        raise ValueError("control: the model's blocks are already wrapped (a cache or a branch)")
    if not guidance > 0:
        raise ValueError(f"control: expected guidance > 0, got {guidance!r}")
    blocks = _ControlledBlocks(model, branch, control, float(strength))
    model.run_blocks = blocks
    if guidance != 1:

        def guided(*args, **kwargs):
            cond = type(model).forward(model, *args, **kwargs)
            blocks.strength = 0.0
            try:
                base = type(model).forward(model, *args, **kwargs)
            finally:
                blocks.strength = float(strength)
            return {k: base[k] + guidance * (cond[k] - base[k]) for k in cond}

        model.forward = guided
    try:
        yield model
    finally:
        del model.run_blocks
        if "forward" in model.__dict__:
            del model.forward


def save_control(branch: ControlBranch, path: str | Path) -> None:
    """The branch's weights and config in one safetensors file (config in its metadata)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in branch.state_dict().items()}
    save_file(state, str(path), metadata={"control": json.dumps(asdict(branch.cfg))})


def load_control(path: str | Path, model) -> ControlBranch:
    """A branch saved by ``save_control`` for ``model`` (the frozen model it was trained on)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "control" not in meta:
        raise ValueError(f"{path}: not a control branch file (no 'control' metadata)")
    branch = ControlBranch(model, ControlConfig(**json.loads(meta["control"])))
    try:
        branch.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise ValueError(f"{path}: the branch does not fit this model: {e}") from None
    return branch
