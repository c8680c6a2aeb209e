import pytest
import torch
from conftest import random_batch

import anydit
from anydit.flow import (
    DROPPED,
    GENERATE,
    GIVEN,
    data_from_velocity,
    interpolate,
    make_inputs,
    mask_tokens,
    noise_from_velocity,
    sample_path,
    sample_times,
    shift_time,
    time_grid,
    velocity_from_data,
)

torch.set_default_dtype(torch.float32)


def test_path_ends_and_round_trips_float64():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    assert torch.equal(interpolate(x0, x1, torch.zeros(5, dtype=torch.float64)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(5, dtype=torch.float64)), x1)
    t = torch.rand(5, 7, generator=g, dtype=torch.float64) * 0.98  # per-token times
    p = sample_path(x1, t, x0)
    torch.testing.assert_close(data_from_velocity(p.x_t, p.velocity, t), x1, rtol=0, atol=1e-12)
    torch.testing.assert_close(noise_from_velocity(p.x_t, p.velocity, t), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(velocity_from_data(p.x_t, x1, t), p.velocity, rtol=0, atol=1e-10)


def test_shift_fixes_ends_and_moves_mass_to_noise():
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    t = shift_time(u, 3.0)
    assert t[0] == 0 and t[-1] == 1 and (t.diff() > 0).all()
    assert (t[1:-1] < u[1:-1]).all()  # s > 1: every inner point nearer noise
    assert torch.equal(shift_time(u, 1.0), u)
    assert shift_time(torch.tensor(0.5, dtype=torch.float64), 3.0).item() == pytest.approx(0.25)
    g = time_grid(8, 2.0)
    assert g.shape == (9,) and g[0] == 0 and g[-1] == 1


@pytest.mark.parametrize("sampler", ["uniform", "logit_normal"])
def test_time_samplers(sampler):
    g = torch.Generator().manual_seed(0)
    t = sample_times(sampler, 20000, generator=g)
    assert ((t > 0) & (t < 1)).all()
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    if sampler == "uniform":
        assert t.std().item() == pytest.approx((1 / 12) ** 0.5, abs=0.01)
    shifted = sample_times(sampler, 20000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert shifted.mean() < t.mean() - 0.1


def test_mask_tokens_ends_and_rate():
    ids = torch.randint(0, 5, (200, 50))
    assert (mask_tokens(ids, torch.zeros(200), 5) == 5).all()
    assert torch.equal(mask_tokens(ids, torch.ones(200), 5), ids)
    kept = (
        (mask_tokens(ids, torch.full((200,), 0.3), 5, torch.Generator().manual_seed(0)) != 5)
        .float()
        .mean()
    )
    assert kept.item() == pytest.approx(0.3, abs=0.02)


def test_roles_given_dropped_absent(model4):
    for m in model4.modalities.values():
        m.cfg.p_given, m.cfg.p_drop = 0.3, 0.3
    batch = random_batch(model4, b=400)
    present = {"audio": torch.arange(400) % 2 == 0}
    inp = make_inputs(model4, batch, anydit.FlowConfig(), present, torch.Generator().manual_seed(0))
    for name, m in model4.modalities.items():
        role, t = inp.roles[name], inp.times[name]
        assert (t[role == GIVEN] == 1).all() and (t[role == DROPPED] == 0).all()
        assert not inp.scored[name][role != GENERATE].any()
        frac = (role == GIVEN).float().mean().item()
        if name != "audio":
            assert frac == pytest.approx(0.3, abs=0.08)
        clean = m.tokenize(batch[name])
        given = role == GIVEN
        if m.discrete:
            assert torch.equal(inp.tokens[name][given], clean[given])
            assert (inp.tokens[name][role == DROPPED] == m.mask_id).all()
            # discrete loss only where the token is masked
            assert (inp.tokens[name][inp.scored[name]] == m.mask_id).all()
        else:
            torch.testing.assert_close(inp.tokens[name][given], clean[given])
    assert (inp.roles["audio"][1::2] == DROPPED).all()


def test_given_modalities_carry_no_loss(model4):
    from conftest import randomize

    randomize(model4)
    batch = random_batch(model4, b=8)
    for m in model4.modalities.values():
        m.cfg.p_given, m.cfg.p_drop = 0.0, 0.0
    model4.modalities["image"].cfg.p_given = 1.0
    loss, parts = anydit.training_loss(model4, batch, generator=torch.Generator().manual_seed(0))
    assert parts["image"].item() == 0.0 and parts["audio"].item() > 0
    loss.backward()  # a zero component keeps the graph whole


def test_partial_roles_make_per_token_times():
    mods = [
        anydit.ModalityConfig(
            "seq", "sequence", (32, 2), patch=1, p_given=0, p_drop=0, p_partial=1.0
        )
    ]
    model = anydit.MMDiT(mods, anydit.preset("debug", per_token_time=True))
    x = torch.randn(64, 32, 2)
    inp = make_inputs(
        model, {"seq": x}, anydit.FlowConfig(), None, torch.Generator().manual_seed(0)
    )
    t, scored = inp.times["seq"], inp.scored["seq"]
    assert t.shape == (64, 32)
    known = t == 1
    assert known.any() and (~known).any()
    assert not (scored & known).any() and scored[~known].all()
    clean = model.modalities["seq"].tokenize(x)
    torch.testing.assert_close(inp.tokens["seq"][known], clean[known])  # known tokens are the data


def test_loss_weight_scales_component(model4):
    from conftest import randomize

    randomize(model4)
    batch = random_batch(model4, b=8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    l1, parts = anydit.training_loss(model4, batch, generator=g())
    model4.modalities["text"].cfg.loss_weight = 3.0
    l3, _ = anydit.training_loss(model4, batch, generator=g())
    torch.testing.assert_close(l3 - l1, 2.0 * parts["text"], rtol=1e-4, atol=1e-5)


def test_flow_config_moves_training_times():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    base = sample_times("logit_normal", 20000, generator=g())
    later = sample_times("logit_normal", 20000, logit_mean=1.0, generator=g())
    wide = sample_times("logit_normal", 20000, logit_std=2.0, generator=g())
    assert later.mean() > base.mean() + 0.1
    assert wide.std() > base.std() + 0.05
