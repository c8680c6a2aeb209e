import pytest
import torch
from conftest import random_batch

import anydit
from anydit.flow import (
    Role,
    interpolate,
    make_inputs,
    reveal_mask,
    sample_path,
    sample_times,
    shift_time,
)

GENERATE, GIVEN, DROPPED = Role.GENERATE, Role.GIVEN, Role.DROP

torch.set_default_dtype(torch.float32)


def test_path_ends_and_round_trips_float64():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    assert torch.equal(interpolate(x0, x1, torch.zeros(5, dtype=torch.float64)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(5, dtype=torch.float64)), x1)
    t = torch.rand(5, 7, generator=g, dtype=torch.float64) * 0.98  # per-token times
    p = sample_path(x1, t, x0)
    torch.testing.assert_close(p.velocity, x1 - x0, rtol=0, atol=0)
    tt = t[..., None]  # the path's closed form: one Euler step of its velocity reaches the data
    torch.testing.assert_close(p.x_t + (1 - tt) * p.velocity, x1, rtol=0, atol=1e-12)
    torch.testing.assert_close(p.x_t - tt * p.velocity, x0, rtol=0, atol=1e-12)


def test_shift_fixes_ends_and_moves_mass_to_noise():
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    t = shift_time(u, 3.0)
    assert t[0] == 0 and t[-1] == 1 and (t.diff() > 0).all()
    assert (t[1:-1] < u[1:-1]).all()  # s > 1: every inner point nearer noise
    assert torch.equal(shift_time(u, 1.0), u)
    assert shift_time(torch.tensor(0.5, dtype=torch.float64), 3.0).item() == pytest.approx(0.25)


@pytest.mark.parametrize("sampler", ["uniform", "logit_normal"])
def test_time_samplers(sampler):
    g = torch.Generator().manual_seed(0)
    t = sample_times(sampler, 20000, generator=g)
    assert ((t > 0) & (t < 1)).all()
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    if sampler == "logit_normal":  # logit(t) ~ N(0, 1)
        z = torch.logit(t.double())
        assert z.mean().item() == pytest.approx(0.0, abs=0.03)
        assert z.std().item() == pytest.approx(1.0, abs=0.03)
    if sampler == "uniform":
        assert t.std().item() == pytest.approx((1 / 12) ** 0.5, abs=0.01)
    shifted = sample_times(sampler, 20000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert shifted.mean() < t.mean() - 0.1


def test_reveal_mask_ends_and_rate():
    assert not reveal_mask((200, 50), torch.zeros(200)).any()
    assert reveal_mask((200, 50), torch.ones(200)).all()
    kept = reveal_mask((200, 50), torch.full((200,), 0.3), torch.Generator().manual_seed(0))
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.02)
    per_token = torch.linspace(0, 1, 50).expand(4000, 50)
    rate = reveal_mask((4000, 50), per_token, torch.Generator().manual_seed(1)).float().mean(0)
    torch.testing.assert_close(rate, per_token[0], rtol=0, atol=0.03)


def test_roles_given_dropped_absent(model4):
    for m in model4.modalities.values():
        m.cfg.p_given, m.cfg.p_drop = 0.3, 0.3
    batch = random_batch(model4, b=400)
    present = {"audio": torch.arange(400) % 2 == 0}
    inp = make_inputs(
        model4.modalities,
        batch,
        anydit.FlowConfig(),
        False,
        present,
        torch.Generator().manual_seed(0),
    )
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
    loss = anydit.training_loss(model4, batch, generator=torch.Generator().manual_seed(0))
    assert loss.parts["image"].item() == 0.0 and loss.parts["audio"].item() > 0
    loss.total.backward()  # a zero component keeps the graph whole


def test_partial_roles_make_per_token_times():
    mods = [
        anydit.ModalityConfig(
            "seq", "sequence", (32, 2), patch=1, p_given=0, p_drop=0, p_partial=1.0
        )
    ]
    model = anydit.MMDiT(mods, anydit.preset("debug", per_token_time=True))
    x = torch.randn(64, 32, 2)
    inp = make_inputs(
        model.modalities,
        {"seq": x},
        anydit.FlowConfig(),
        True,
        None,
        torch.Generator().manual_seed(0),
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
    l1 = anydit.training_loss(model4, batch, generator=g())
    model4.modalities["text"].cfg.loss_weight = 3.0
    l3 = anydit.training_loss(model4, batch, generator=g())
    torch.testing.assert_close(l3.total - l1.total, 2.0 * l1.parts["text"], rtol=1e-4, atol=1e-5)


def test_flow_config_moves_training_times():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    base = sample_times("logit_normal", 20000, generator=g())
    later = sample_times("logit_normal", 20000, logit_mean=1.0, generator=g())
    wide = sample_times("logit_normal", 20000, logit_std=2.0, generator=g())
    assert later.mean() > base.mean() + 0.1
    assert wide.std() > base.std() + 0.05


def test_training_inputs_follow_the_path_in_closed_form():
    """x_t = t x1 + (1 - t) x0 on generated rows, x0 on dropped rows, x1 on given rows; the
    target is x1 - x0 with x0 ~ N(0, I); roles are drawn at their configured rates."""
    torch.manual_seed(0)
    mods, cfg = __import__("conftest").four_modalities()
    model = anydit.MMDiT(mods, cfg)
    for m in model.modalities.values():
        m.cfg.p_given, m.cfg.p_drop = 0.3, 0.3
    batch = random_batch(model, b=400)
    g = torch.Generator().manual_seed(0)
    inp = make_inputs(model.modalities, batch, anydit.FlowConfig(), False, None, g)
    for name, m in model.modalities.items():
        role = inp.roles[name]
        assert (role == DROPPED).float().mean().item() == pytest.approx(0.3, abs=0.08)
        if m.discrete:
            continue
        clean = m.tokenize(batch[name]).double()  # x1
        t = inp.times[name].double()[:, None, None]
        tokens, target = inp.tokens[name].double(), inp.targets[name].double()
        x0 = clean - target
        gen, drop, given = role == GENERATE, role == DROPPED, role == GIVEN
        torch.testing.assert_close(tokens[gen], (t * clean + (1 - t) * x0)[gen], rtol=0, atol=1e-5)
        torch.testing.assert_close(tokens[drop], x0[drop], rtol=0, atol=1e-6)
        torch.testing.assert_close(tokens[given], clean[given], rtol=0, atol=1e-6)
        assert x0.std().item() == pytest.approx(1.0, abs=0.05)
        assert x0.mean().abs().item() < 0.05
