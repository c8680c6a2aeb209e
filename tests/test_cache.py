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
    [{"cache": "first_block", "cache_threshold": 0.0}, {"cache": "taylor", "cache_interval": 1}],
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
        ({"cache": "magic"}, "sample.cache: expected '', 'first_block', 'taylor' or 'region'"),
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
