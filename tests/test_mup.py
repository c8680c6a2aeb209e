"""μP: the plain model at the base width, each weight placed by its shape, and the update size
that stays put as the width grows (the "coordinate check" of Tensor Programs V)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from anydit.config import FlowConfig, ModelConfig
from anydit.data.digits import DigitsDataset, digits_modalities
from anydit.data.sources import make_collate
from anydit.flow.objective import make_inputs, training_loss
from anydit.model import MMDiT
from anydit.model.mup import lr_groups
from anydit.train.optim import make_optimizer

MODS = digits_modalities()


def _model(width: int, base: int, depth: int = 1, seed: int = 0) -> MMDiT:
    torch.manual_seed(seed)
    cfg = ModelConfig(width=width, depth=depth, heads=width // 32, head_dim=32, mup_base_width=base)
    return MMDiT(MODS, cfg)


def test_at_the_base_width_mup_is_the_plain_model() -> None:
    plain, mup = _model(64, 0), _model(64, 64)
    assert mup.lr_scales == {} and mup.final["image"].out_scale == 1.0
    a, b = plain.state_dict(), mup.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_weight_is_placed_by_how_its_shape_grows() -> None:
    base, wide = _model(64, 0), _model(256, 64)  # m = 4
    s = wide.lr_scales
    w = {k: v.detach() for k, v in wide.named_parameters()}
    b = {k: v.detach() for k, v in base.named_parameters()}
    hidden = (
        "blocks.0.streams.image.qkv.weight",
        "blocks.0.streams.audio.mlp.2.weight",
        "time_embed.image.mlp.2.weight",
        "blocks.0.streams.label.modulation.1.weight",
    )
    for name in hidden:
        assert s[name] == 0.25, name  # Adam lr / m
    for name in hidden[:3]:  # std / sqrt(m): Xavier weights and the N(0, 0.02) time MLP alike
        assert float(w[name].std()) == pytest.approx(float(b[name].std()) / 2, rel=0.1), name
    for name in ("embed.image.weight", "embed.label.weight", "time_embed.audio.mlp.0.weight"):
        assert s[name] == 1.0, name
        assert float(w[name].std()) == pytest.approx(float(b[name].std()), rel=0.1), name
    assert s["blocks.0.streams.image.qkv.bias"] == 1.0
    assert wide.final["text"].out_scale == 0.25  # output multiplier 1 / m
    # the training loop's optimiser groups: lr and lr / m
    groups = lr_groups(list(wide.named_parameters()), s, 1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 2.5e-4]
    assert sum(len(g["params"]) for g in groups) == len(w)


def _output_change(width: int, base: int, lr: float = 1e-3, steps: int = 3) -> float:
    """Mean |change| of the model's predictions on a fixed batch after a few Adam steps."""
    model = _model(width, base)
    data = DigitsDataset("train", seed=0)
    batch, present = make_collate(model.modalities)([data[i] for i in range(64)])
    flow = FlowConfig()
    probe = make_inputs(model.modalities, batch, flow, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = model(probe.tokens, probe.times)
    groups = lr_groups(list(model.named_parameters()), model.lr_scales, lr)
    opt = make_optimizer(groups, lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        training_loss(model, batch, flow, present, gen).total.backward()
        opt.step()
    with torch.no_grad():
        after = model(probe.tokens, probe.times)
    return float(torch.stack([(after[k] - before[k]).abs().mean() for k in after]).mean())


def test_updates_keep_their_size_as_the_width_grows() -> None:
    """Under the standard parametrisation Adam's update of a hidden or output layer moves the
    output in proportion to the width; under μP it does not (64 -> 256 here)."""
    sp = _output_change(256, 0) / _output_change(64, 0)
    mup = _output_change(256, 64) / _output_change(64, 64)
    assert sp > 3.0, sp  # seen: 3.8-4.4 (x4 width)
    assert 0.7 < mup < 1.3, mup  # seen: 0.95


def test_mup_refuses_what_it_cannot_scale() -> None:
    with pytest.raises(ValueError, match="model.mup_base_width: expected 0 .off. or a multiple"):
        ModelConfig(width=128, heads=2, head_dim=64, mup_base_width=96)
    with pytest.raises(ValueError, match="heads x head_dim = width"):
        ModelConfig(width=128, heads=1, head_dim=64, mup_base_width=64)
    own = [dataclasses.replace(m, width=64) if m.name == "text" else m for m in MODS]
    with pytest.raises(ValueError, match="every stream at model.width"):
        MMDiT(own, ModelConfig(width=128, heads=2, head_dim=64, mup_base_width=64))
