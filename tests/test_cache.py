"""Feature caches: exact where they skip nothing, measured savings where they do."""

from __future__ import annotations

import pytest
import torch
from conftest import four_modalities, perturb

import anydit
from anydit.sampling.cache import TaylorCache

TASKS = [
    {"image": "generate", "label": 3},  # one given: a guidance branch
    {"image": "generate", "audio": "generate", "text": "generate"},  # joint, discrete too
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=3)
    m = anydit.MMDiT(mods, cfg)
    perturb(m, seed=0, std=0.05)
    return m


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(
    "cache",
    [
        {"cache": "first_block", "cache_threshold": 0.0},
        {"cache": "taylor", "cache_interval": 1},
        {"cache": "taylor_attention", "cache_interval": 1},
    ],
)
def test_a_cache_that_skips_nothing_changes_nothing(model, task, cache):
    plain = anydit.sample(model, task, n=3, steps=6, guidance=2.0, seed=1)
    stats = {}
    cached = anydit.sample(model, task, n=3, steps=6, guidance=2.0, seed=1, stats=stats, **cache)
    assert all(torch.equal(plain[k], cached[k]) for k in plain)
    assert stats["block_runs"] == stats["evaluations"] * stats["blocks"]  # every block, always
    assert "run_blocks" not in model.__dict__  # detached


def test_first_block_cache_skips_when_the_first_block_barely_moves(model):
    task = TASKS[0]
    plain = anydit.sample(model, task, n=4, steps=16, guidance=2.0, seed=2)
    counts = {}
    for threshold in (0.02, 0.2, 1.0):
        stats = {}
        out = anydit.sample(model, task, n=4, steps=16, guidance=2.0, seed=2, stats=stats,
                            cache="first_block", cache_threshold=threshold)  # fmt: skip
        counts[threshold] = stats["block_runs"] / (stats["evaluations"] * stats["blocks"])
        err = float((out["image"] - plain["image"]).norm() / plain["image"].norm())
        assert torch.isfinite(out["image"]).all() and err < 0.5
    assert counts[0.02] >= counts[0.2] >= counts[1.0]
    # threshold 1 runs everything once, then only the first block: 1/16 + 15/16 * 1/3
    assert counts[1.0] == pytest.approx(1 / 16 + 15 / 16 / 3)


def test_taylor_forecast_is_exact_on_a_polynomial_residual():
    """Residuals that are a quadratic in the clock are forecast exactly at order 2."""
    cache = TaylorCache(interval=4, order=2)
    for clock in (0.0, 0.1, 0.3):
        residual = {"x": torch.full((2, 3, 4), 1 + 2 * clock - 5 * clock**2)}
        cache.history = [(clock, residual), *cache.history[:2]]
    cache.tick(0.6)
    torch.testing.assert_close(cache._forecast()["x"], torch.full((2, 3, 4), 1 + 1.2 - 1.8))


def test_taylor_cache_runs_every_interval(model):
    stats = {}
    anydit.sample(
        model, TASKS[1], n=2, steps=12, seed=0, stats=stats, cache="taylor", cache_interval=3
    )
    # evaluations 0, 1 (history for order 1), then every third: 0, 1, 3, 6, 9 -> 5 of 12
    assert stats["block_runs"] == 5 * 2 * stats["blocks"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"cache": "magic"},
            "sample.cache: expected '', 'first_block', 'taylor', 'taylor_attention' or 'region'",
        ),
        (
            {"cache": "first_block", "cache_threshold": 2.0},
            "sample.cache_threshold: expected a number in",
        ),
        (
            {"cache": "taylor", "cache_interval": 0},
            "sample.cache_interval: expected an integer >= 1",
        ),
        ({"cache": "taylor", "cache_order": 3}, "sample.cache_order: expected 1 or 2"),
    ],
)
def test_bad_cache_settings_are_named(model, bad, message):
    with pytest.raises(ValueError, match=message):
        anydit.sample(model, TASKS[0], n=1, steps=2, **bad)


@pytest.mark.parametrize("single", [{}, {"single_depth": 2}])
def test_a_block_fed_its_own_attention_outputs_computes_its_forward(single):
    """``forecast_block`` with the projected attention outputs the forward computes gives the
    forward's result: only attention is stood in for."""
    from conftest import random_batch

    from anydit.model.block import attention_layers, forecast_block

    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2, **single)
    m = anydit.MMDiT(mods, cfg).eval()
    perturb(m, seed=0, std=0.05)
    tokens = {k: m.modalities[k].tokenize(v) for k, v in random_batch(m, 3).items()}
    times = {k: torch.rand(3) for k in tokens}
    seen, hooks = {}, []
    for i, block in enumerate(m.all_blocks):
        for n, layer in attention_layers(block).items():
            if not layer.pre_only:
                hooks.append(layer.out.register_forward_hook(
                    lambda mod, a, out, key=(i, n): seen.__setitem__(key, out)))  # fmt: skip
    inputs, outputs = [], []

    def keep(mod, args, out):  # returns None: the block's output stays its own
        inputs.append(args)
        outputs.append(out)

    hooks += [block.register_forward_hook(keep) for block in m.all_blocks]
    with torch.no_grad():
        m(tokens, times)
        for h in hooks:
            h.remove()
        for i, block in enumerate(m.all_blocks):
            x, c = inputs[i][0], inputs[i][1]
            attn = {n: seen[(i, n)] for n, layer in attention_layers(block).items()
                    if not layer.pre_only}  # fmt: skip
            got = forecast_block(block, x, c, attn)
            for k in outputs[i]:
                torch.testing.assert_close(got[k], outputs[i][k], rtol=1e-5, atol=1e-6)


def test_attention_forecast_errs_less_than_the_whole_stack_forecast(model):
    from torch.utils.flop_counter import FlopCounterMode

    task = TASKS[0]
    plain = anydit.sample(model, task, n=2, steps=12, guidance=2.0, seed=0)
    errors, flops = {}, {}
    for kind in ("", "taylor", "taylor_attention"):
        with FlopCounterMode(display=False) as counter:
            out = anydit.sample(model, task, n=2, steps=12, guidance=2.0, seed=0, cache=kind,
                                cache_interval=2)  # fmt: skip
        flops[kind] = counter.get_total_flops()
        errors[kind] = float((out["image"] - plain["image"]).norm() / plain["image"].norm())
    assert errors[""] == 0 and 0 < errors["taylor_attention"] < errors["taylor"] / 2
    assert flops["taylor"] < flops["taylor_attention"] < flops[""]
