"""Masked-token training (token_drop, mixer_depth): what is left out, and what is not."""

import pytest
import torch
from conftest import randomize

import anydit
from anydit.config import ConfigError, FlowConfig
from anydit.flow.objective import make_inputs
from anydit.train.step import train_step


def mods(drop=0.5):
    return [
        anydit.ModalityConfig("image", "image", (1, 8, 8), patch=2, token_drop=drop),
        anydit.ModalityConfig("label", "label", num_classes=4),
    ]


def batch(b=6):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(b, 1, 8, 8, generator=g) * 2 - 1, "label": torch.arange(b) % 4}


def test_kept_tokens_cut_targets_and_scores_and_nothing_else_moves():
    model = anydit.MMDiT(mods(), anydit.preset("debug"))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    full = make_inputs(model.modalities, batch(), FlowConfig(), generator=g())
    cut = make_inputs(model.modalities, batch(), FlowConfig(), generator=g(), drop_tokens=True)
    keep = cut.keep["image"]  # (6, 8): half of 16
    assert keep.shape == (6, 8) and (keep.diff(dim=1) > 0).all()
    assert torch.equal(cut.tokens["image"], full.tokens["image"])  # the input is whole
    assert torch.equal(cut.targets["image"], full.targets["image"].gather(
        1, keep[..., None].expand(-1, -1, 4)))  # fmt: skip
    assert torch.equal(cut.scored["image"], full.scored["image"].gather(1, keep))
    assert "label" not in cut.keep and torch.equal(cut.targets["label"], full.targets["label"])
    zero = anydit.MMDiT(mods(0.0), anydit.preset("debug"))
    none = make_inputs(zero.modalities, batch(), FlowConfig(), generator=g(), drop_tokens=True)
    assert not none.keep and torch.equal(none.targets["image"], full.targets["image"])


def test_keeping_every_token_computes_what_the_dense_model_computes():
    torch.manual_seed(0)
    model = anydit.MMDiT(mods(), anydit.preset("debug", per_token_time=True))
    randomize(model, std=0.2)
    inputs = make_inputs(model.modalities, batch(), FlowConfig(), True,
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    dense = model(inputs.tokens, inputs.times)
    every = {"image": torch.arange(16).expand(6, -1)}
    torch.testing.assert_close(model(inputs.tokens, inputs.times, keep=every), dense)
    some = {"image": torch.tensor([[1, 5, 9, 12]]).expand(6, -1)}
    out = model(inputs.tokens, inputs.times, keep=some)
    assert out["image"].shape == (6, 4, 4) and out["label"].shape == dense["label"].shape


def test_a_mixer_starts_as_the_identity_and_training_runs():
    torch.manual_seed(0)
    plain = anydit.MMDiT(mods(), anydit.preset("debug"))
    mixed = anydit.MMDiT(mods(), anydit.preset("debug", mixer_depth=2))
    assert len(mixed.mixer["image"]) == 2 and "label" not in mixed.mixer
    mixed.load_state_dict(plain.state_dict(), strict=False)
    randomize(plain, std=0.2)
    mixed.load_state_dict(plain.state_dict(), strict=False)  # mixer: still its zero gates
    inputs = make_inputs(plain.modalities, batch(), FlowConfig(),
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    for k, v in plain(inputs.tokens, inputs.times).items():
        torch.testing.assert_close(mixed(inputs.tokens, inputs.times)[k], v)
    assert mixed.stream_of("mixer.image.0.streams.image.qkv.weight") == "image"
    opt = anydit.train.optim.make_optimizer(mixed.parameters(), 1e-3)
    loss, norm = train_step(mixed, opt, batch(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss.total) and norm > 0


def test_no_drop_trains_exactly_as_dense():
    losses = []
    for drop in (None, 0.0):
        torch.manual_seed(0)
        m = mods(0.0) if drop is not None else [
            anydit.ModalityConfig("image", "image", (1, 8, 8), patch=2),
            anydit.ModalityConfig("label", "label", num_classes=4),
        ]  # fmt: skip
        model = anydit.MMDiT(m, anydit.preset("debug"))
        opt = anydit.train.optim.make_optimizer(model.parameters(), 1e-3)
        gen = torch.Generator().manual_seed(0)
        losses.append([train_step(model, opt, batch(), generator=gen)[0].total for _ in range(3)])
    assert losses[0] == losses[1]


def test_bad_token_drops_are_refused_by_name():
    with pytest.raises(ConfigError, match="'label'.token_drop: expected 0 for a discrete"):
        anydit.ModalityConfig("label", "label", num_classes=3, token_drop=0.5)
    with pytest.raises(ConfigError, match=r"token_drop: expected a share in \[0, 1\)"):
        anydit.ModalityConfig("image", "image", (1, 8, 8), token_drop=1.0)
    with pytest.raises(ConfigError, match="0 with model.isolate_given"):
        anydit.MMDiT(mods(), anydit.preset("debug", isolate_given=True))
    with pytest.raises(ConfigError, match="mixer_depth: expected an integer >= 0"):
        anydit.preset("debug", mixer_depth=-1)
