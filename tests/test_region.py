"""Region-adaptive sampling and key-value reuse: exact where they compute everything or where
the model isolates given tokens; measured shares where they skip."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import four_modalities, perturb, random_batch

import anydit
from anydit.sampling.region import RegionCache

TASKS = [
    {"image": "generate", "label": 3},  # one given: a guidance branch
    {"image": "generate", "audio": "generate", "text": "generate"},  # joint, discrete too
]


def _model(isolate: bool = False, depth: int = 3) -> anydit.MMDiT:
    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=depth)
    m = anydit.MMDiT(mods, dataclasses.replace(cfg, isolate_given=isolate))
    perturb(m, seed=0, std=0.05)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def isolated():
    return _model(isolate=True)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_region_computing_every_token_changes_nothing(model, task, solver):
    plain = anydit.sample(model, task, n=3, steps=6, guidance=2.0, seed=1, solver=solver)
    stats = {}
    region = anydit.sample(model, task, n=3, steps=6, guidance=2.0, seed=1, solver=solver,
                           cache="region", cache_ratio=1.0, stats=stats)  # fmt: skip
    assert all(torch.equal(plain[k], region[k]) for k in plain)
    assert stats["tokens_computed"] == stats["tokens"] > 0
    assert "run_blocks" not in model.__dict__  # detached


def test_region_computes_its_share_of_the_generated_tokens(model):
    """Image (16 tokens) and audio (4) generated, label given: with ratio 0.25 and dense
    evaluations 0, 1 (warm-up) and every fourth, the others compute 4 image and 1 audio token
    per row, plus every token of the given label and dropped text (not ranked)."""
    task = {"image": "generate", "audio": "generate", "label": 3, "text": "drop"}
    plain = anydit.sample(model, task, n=2, steps=8, seed=0)
    stats = {}
    out = anydit.sample(model, task, n=2, steps=8, seed=0, cache="region", cache_ratio=0.25,
                        cache_interval=4, stats=stats)  # fmt: skip
    dense = [0, 1, 4]
    per_row = {"dense": 16 + 4 + 1 + 12, "sparse": 4 + 1 + 1 + 12}
    want = 2 * (len(dense) * per_row["dense"] + (8 - len(dense)) * per_row["sparse"])
    assert stats["tokens_computed"] == want
    assert stats["tokens"] == 2 * 8 * per_row["dense"]
    trace = stats["computed"]  # per evaluation: which tokens each row computed
    assert len(trace) == 8 and sum(int(m.sum()) for e in trace for m in e.values()) == want
    assert [int(e["image"][0].sum()) for e in trace] == [16, 16, 4, 4, 16, 4, 4, 4]
    err = float((out["image"] - plain["image"]).norm() / plain["image"].norm())
    assert 0 < err < 0.2  # carried tokens change the result, a little


def test_region_ranks_by_rate_of_change_times_age():
    cache = RegionCache(ratio=0.5, interval=100)
    cache.generated, cache.count = {"x"}, 5
    cache.rate = {"x": torch.tensor([[1.0, 5.0, 2.0, 0.5]])}
    cache.seen = {"x": torch.tensor([[0.5, 0.5, 0.1, 0.0]])}
    cache.ran = {"x": torch.tensor([[4.0, 4.0, 1.0, 0.0]])}
    cache.tick(0.6)
    # scores: 0.1, 0.5, 1.0, 0.3 -> tokens 2 and 1, in order
    assert cache._choose("x", 4, slice(None)).tolist() == [[1, 2]]
    cache.tick(0.6, {"x": torch.tensor([[False, False, True, False]])})
    cache.reuse = True  # a still token is never ranked: 2 of the 3 moving ones
    assert cache._choose("x", 4, slice(None)).tolist() == [[1, 3]]
    cache.tick(0.5, {"x": torch.zeros(1, 4, dtype=torch.bool)})  # the clock stands still:
    cache.seen["x"].fill_(0.5)  # ties go to the tokens left alone longest (3, then 2)
    assert cache._choose("x", 4, slice(None)).tolist() == [[2, 3]]


def test_region_saves_flops_in_proportion_to_the_tokens_computed():
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(depth=3)
    task = {"image": "generate", "label": 3}  # audio and text dropped: computed every time
    flops, stats = {}, {}
    for name, extra in {"plain": {}, "region": {"cache": "region", "cache_ratio": 0.25,
                                                "cache_interval": 100}}.items():  # fmt: skip
        with FlopCounterMode(display=False) as counter:
            anydit.sample(model, task, n=2, steps=10, seed=0, stats=stats, **extra)
        flops[name] = counter.get_total_flops()
    share = stats["tokens_computed"] / stats["tokens"]  # (2 x 33 + 8 x 21) / (10 x 33)
    assert share == pytest.approx((2 * 33 + 8 * 21) / 330)
    assert flops["region"] / flops["plain"] == pytest.approx(share, abs=0.05)


def test_isolate_given_keeps_given_tokens_from_what_moves(isolated, model):
    """With ``isolate_given``, a given stream's hidden states do not depend on the noisy
    streams' values or times; without it they do."""
    seen = {}
    for name, m in (("isolated", isolated), ("plain", model)):
        batch = random_batch(m, 2)
        tokens = {k: m.modalities[k].tokenize(v) for k, v in batch.items()}
        states: list = []
        hook = m.blocks[-1].register_forward_hook(
            lambda mod, a, out, states=states: states.append(out["label"])
        )
        try:
            for t_image, shift in ((0.3, 0.0), (0.7, 1.0)):
                moved = dict(tokens, image=tokens["image"] + shift)
                times = {k: torch.full((2,), 0.5) for k in tokens}
                times |= {"label": torch.ones(2), "image": torch.full((2,), t_image)}
                m(moved, times)
        finally:
            hook.remove()
        seen[name] = float((states[0] - states[1]).abs().max().detach())
    assert seen["isolated"] == 0.0
    assert seen["plain"] > 1e-4


@pytest.mark.parametrize("task", TASKS[:1] + [{"image": "generate", "audio": "generate",
                                                "label": 3, "text": "drop"}])  # fmt: skip
def test_kv_reuse_is_exact_for_an_isolating_model(isolated, model, task):
    """Given tokens' keys and values computed once per sample: the same samples (up to float
    rounding) on a model trained with ``isolate_given``, fewer tokens computed; on a model
    without it, an approximation."""
    stats = {}
    plain = anydit.sample(isolated, task, n=3, steps=6, seed=1)
    reused = anydit.sample(isolated, task, n=3, steps=6, seed=1, kv_reuse=True, stats=stats)
    for k in plain:
        torch.testing.assert_close(reused[k], plain[k], rtol=1e-5, atol=1e-5)
    assert stats["tokens_computed"] < stats["tokens"]
    approx = anydit.sample(model, task, n=3, steps=6, seed=1, kv_reuse=True)
    exact = anydit.sample(model, task, n=3, steps=6, seed=1)
    assert not torch.allclose(approx["image"], exact["image"], rtol=1e-5, atol=1e-5)


def test_kv_reuse_skips_a_stream_while_it_holds(isolated):
    """Image with 4 steps beside audio with 8: on the 4 steps where the image holds (0, 2,
    4, 6: its time stays at its own latest point), its 16 tokens are not computed."""
    from anydit.sampling.tasks import Generate

    task = {"image": Generate(steps=4), "audio": Generate(steps=8), "label": 3, "text": "drop"}
    stats = {}
    anydit.sample(isolated, task, n=2, steps=8, seed=0, kv_reuse=True, stats=stats)
    # evaluation 0 dense (33 tokens); then the label (1) never, the image (16) on steps 1, 3,
    # 5, 7; audio (4) and the dropped text (12) always
    assert stats["tokens_computed"] == 2 * (33 + 7 * (4 + 12) + 4 * 16)
    assert stats["tokens"] == 2 * 8 * 33


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"cache": "region", "cache_ratio": 0.0}, "sample.cache_ratio: expected a share"),
        ({"cache": "taylor", "kv_reuse": True}, "sample.kv_reuse: expected 'region' or no"),
        ({"kv_reuse": "yes"}, "sample.kv_reuse: expected true or false"),
    ],
)
def test_bad_region_settings_are_named(model, bad, message):
    with pytest.raises(ValueError, match=message):
        anydit.sample(model, TASKS[0], n=1, steps=2, **bad)


def test_region_refuses_a_model_with_a_second_own_attention():
    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2, dual_attention=(0,))
    m = anydit.MMDiT(mods, cfg)
    with pytest.raises(ValueError, match="second, own attention"):
        anydit.sample(m, TASKS[0], n=1, steps=2, cache="region")


def test_an_isolating_model_trains_and_its_other_caches_stay_exact(isolated):
    """``isolate_given`` trains (finite loss, every weight gets a gradient); the block caches
    pass its mask on, so a cache that skips nothing still changes nothing."""
    import copy

    from anydit.train.step import fit

    m = copy.deepcopy(isolated).train()

    def batches():
        seed = 0
        while True:
            seed += 1
            yield random_batch(m, 8, seed)

    losses = fit(m, batches(), steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    plain = anydit.sample(isolated, TASKS[0], n=2, steps=4, guidance=2.0, seed=3)
    taylor = anydit.sample(isolated, TASKS[0], n=2, steps=4, guidance=2.0, seed=3,
                           cache="taylor", cache_interval=1)  # fmt: skip
    assert all(torch.equal(plain[k], taylor[k]) for k in plain)


def test_kv_reuse_keeps_known_tokens_exactly_under_per_token_times():
    """Inpainting on a per-token-time isolating model: the known half of the image is given
    token by token (t = 1), kept after the first evaluation, and the samples are unchanged."""
    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2)
    m = anydit.MMDiT(mods, dataclasses.replace(cfg, per_token_time=True, isolate_given=True))
    perturb(m, seed=0, std=0.05)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True  # the top half known: 8 of the 16 tokens
    known = torch.rand(1, 8, 8) * 2 - 1
    task = {"image": anydit.generate(known=known, mask=mask), "label": 5}
    stats = {}
    plain = anydit.sample(m, task, n=2, steps=5, seed=0)
    reused = anydit.sample(m, task, n=2, steps=5, seed=0, kv_reuse=True, stats=stats)
    torch.testing.assert_close(reused["image"], plain["image"], rtol=1e-5, atol=1e-5)
    # after evaluation 0: 8 image tokens, the dropped audio (4) and text (12); never the label
    assert stats["tokens_computed"] == 2 * (33 + 4 * (8 + 4 + 12))


@pytest.mark.parametrize("solver", ["heun", "midpoint"])
def test_kv_reuse_is_exact_with_two_evaluation_solvers_and_guidance(isolated, solver):
    """Heun's last evaluation is at t = 1: the generated image must not read as given. Under
    guidance each branch keeps its own still tokens: the unguided rows compute the dropped
    label, the guided ones do not."""
    task = {"image": "generate", "audio": "generate", "label": 3, "text": "drop"}
    plain = anydit.sample(isolated, task, n=2, steps=4, seed=2, solver=solver, guidance=2.0)
    stats = {}
    reused = anydit.sample(isolated, task, n=2, steps=4, seed=2, solver=solver, guidance=2.0,
                           kv_reuse=True, stats=stats)  # fmt: skip
    for k in plain:
        torch.testing.assert_close(reused[k], plain[k], rtol=1e-5, atol=1e-5)
    # 8 evaluations of 4 rows (2 guided, 2 unguided), 33 tokens each; after the first, the
    # guided rows skip the label (1 token)
    assert stats["tokens_computed"] == 4 * 33 + 7 * (2 * 32 + 2 * 33)


def test_kv_reuse_when_nothing_moves_on_an_evaluation(model):
    """Heun with only discrete streams generated beside given ones: on each second
    evaluation nothing moves, so nothing is computed (and nothing fails)."""
    task = {"label": "generate", "image": torch.zeros(1, 8, 8), "audio": "drop", "text": "drop"}
    stats = {}
    anydit.sample(model, {**task, "audio": torch.zeros(16, 4), "text": "three"}, n=2,
                  steps=3, solver="heun", kv_reuse=True, stats=stats)  # fmt: skip
    per_eval = [int(sum(m.sum() for m in e.values())) for e in stats["computed"]]
    assert per_eval[0] == 2 * 33 and per_eval[1::2] == [0, 0, 0] and per_eval[2] == 2 * 1


def test_region_in_bf16_with_single_stream_blocks():
    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=1, single_depth=2)
    m = anydit.MMDiT(mods, cfg)
    perturb(m, seed=0, std=0.05)
    task = TASKS[0]
    plain = anydit.sample(m, task, n=2, steps=6, seed=0, precision="bf16")
    same = anydit.sample(m, task, n=2, steps=6, seed=0, precision="bf16", cache="region",
                         cache_ratio=1.0)  # fmt: skip
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    stats = {}
    out = anydit.sample(m, task, n=2, steps=6, seed=0, precision="bf16", cache="region",
                        cache_ratio=0.5, cache_interval=8, stats=stats)  # fmt: skip
    assert torch.isfinite(out["image"]).all() and stats["tokens_computed"] < stats["tokens"]
