"""Reference sharing: weight 0 is the sampler unchanged; a reference identical to the row it
serves is the same as raising that stream's own keys by log(1 + weight) (duplicated keys); rows
tile; clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import four_modalities, random_batch, randomize

import anydit
from anydit.flow.objective import make_inputs
from anydit.sampling.reference import shared_reference


def _reference_inputs(model, stream, clean_tokens, time, seed):
    """The reference rows' inputs as ``shared_reference`` makes them (the same draws)."""
    gen = torch.Generator().manual_seed(seed)
    b0 = clean_tokens.shape[0]
    tokens, times = {}, {}
    for name, m in model.modalities.items():
        if m.discrete:
            tokens[name] = torch.full((b0, m.num_tokens), m.mask_id, dtype=torch.long)
        else:
            tokens[name] = torch.randn(1, m.num_tokens, m.token_dim, generator=gen).expand(
                b0, -1, -1
            )
        times[name] = torch.zeros(b0)
        if name == stream:
            tokens[name] = time * clean_tokens + (1 - time) * tokens[name]
            times[name] = torch.full((b0,), time)
    return tokens, times


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_a_reference_equal_to_the_row_duplicates_its_keys(weight):
    """One block: the reference's keys are those of the row itself (from the second block on
    they differ, as the row has read the reference and the reference has not)."""
    mods, cfg = four_modalities(depth=1)
    model4 = anydit.MMDiT(mods, cfg)
    randomize(model4, std=0.1)
    image = torch.rand(2, 1, 8, 8) * 2 - 1
    clean = model4.modalities["image"].tokenize(image)
    tokens, times = _reference_inputs(model4, "image", clean, 0.6, seed=4)
    with torch.no_grad(), shared_reference(model4, "image", image, weight, time=0.6, seed=4):
        shared = model4(tokens, times)
    # the same, by hand: the image stream's queries weigh the image keys by 1 + weight
    names, sizes = model4.streams, model4.stream_sizes
    lo = sum(sizes[: names.index("image")])
    hi = lo + sizes[names.index("image")]
    bias = torch.zeros(2, 1, sum(sizes), sum(sizes))
    bias[:, :, lo:hi, lo:hi] = math.log1p(weight)
    with torch.no_grad():
        x, c, rope, _ = model4.prepare(tokens, times)
        for block in model4.all_blocks:
            x = block(x, c, rope, lambda k, v: (k, v, bias))
        want = {n: model4.final[n](x[n], c[n]) for n in model4.outputs}
    for name in want:
        assert torch.allclose(shared[name], want[name], atol=1e-5), name
    with torch.no_grad():
        plain = model4(tokens, times)
    assert not torch.allclose(plain["image"], want["image"], atol=1e-4)


def test_weight_zero_is_the_sampler_unchanged_and_rows_tile(model4):
    randomize(model4, std=0.05)
    task = {"image": "generate", "label": 3}
    ref = torch.rand(3, 1, 8, 8) * 2 - 1
    plain = anydit.sample(model4, task, n=3, steps=3, guidance=2.0, seed=2)
    with shared_reference(model4, "image", ref, 0.0):
        zero = anydit.sample(model4, task, n=3, steps=3, guidance=2.0, seed=2)
    assert torch.equal(zero["image"], plain["image"])
    with shared_reference(model4, "image", ref[:1], 2.0):  # one reference for 2 x 3 rows
        one = anydit.sample(model4, task, n=3, steps=3, guidance=2.0, seed=2)
    with shared_reference(model4, "image", ref[:1].expand(3, -1, -1, -1), 2.0):
        three = anydit.sample(model4, task, n=3, steps=3, guidance=2.0, seed=2)
    assert torch.allclose(one["image"], three["image"], atol=1e-5)
    with (
        shared_reference(model4, "image", ref[:2], 2.0),  # 2 x 3 rows, but 3 samples
        pytest.raises(ValueError, match="references: 2 of them cannot serve 3 samples"),
    ):
        anydit.sample(model4, task, n=3, steps=3, guidance=2.0, seed=2)
    assert not torch.allclose(one["image"], plain["image"], atol=1e-4)
    with shared_reference(model4, "image", ref[:1], 2.0):  # bf16: the bias is added in float32
        low = anydit.sample(model4, task, n=3, steps=3, guidance=2.0, seed=2, precision="bf16")
    assert torch.allclose(low["image"], one["image"], atol=0.1)
    after = anydit.sample(model4, task, n=3, steps=3, guidance=2.0, seed=2)
    assert torch.equal(after["image"], plain["image"])  # the scope ended


def test_each_sample_reads_its_own_reference_in_every_row_group(model4):
    """Rows are (groups samples), as the sampler stacks guidance branches: the second group
    repeats the first's inputs, so with one reference per sample its outputs repeat too."""
    randomize(model4, std=0.1)
    raw = random_batch(model4, 3, seed=1)
    g = torch.Generator().manual_seed(0)
    inputs = make_inputs(model4.modalities, raw, anydit.FlowConfig(), generator=g)
    tokens = {k: torch.cat([v, v]) for k, v in inputs.tokens.items()}  # (2 x 3, ...)
    times = {k: torch.cat([v, v]) for k, v in inputs.times.items()}
    refs = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad(), shared_reference(model4, "image", refs, 3.0):
        model4.run_blocks.samples = 3
        out = model4(tokens, times)["image"]
    assert torch.allclose(out[3:], out[:3], atol=1e-6)
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_given_tokens_of_an_isolating_model_do_not_read_the_reference():
    mods, cfg = four_modalities(isolate_given=True)
    model = anydit.MMDiT(mods, cfg)
    randomize(model, std=0.1)
    raw = random_batch(model, 2, seed=1)
    g = torch.Generator().manual_seed(0)
    inputs = make_inputs(model.modalities, raw, anydit.FlowConfig(), generator=g)
    times = {**inputs.times, "image": torch.ones(2)}  # the image given: it reads nothing new
    tokens = {**inputs.tokens, "image": model.modalities["image"].tokenize(raw["image"])}
    with torch.no_grad():
        plain = model(tokens, times)
        with shared_reference(model, "image", torch.rand(2, 1, 8, 8) * 2 - 1, 4.0):
            shared = model(tokens, times)
        moving = {**times, "image": torch.full((2,), 0.5)}
        with shared_reference(model, "image", torch.rand(2, 1, 8, 8) * 2 - 1, 4.0):
            read = model(tokens, moving)["image"]
    for name in plain:
        assert torch.allclose(shared[name], plain[name], atol=1e-6), name
    assert not torch.allclose(read, model(tokens, moving)["image"], atol=1e-4)


def test_reference_errors(model4):
    ref = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="must be a continuous stream"):
        shared_reference(model4, "label", ref).__enter__()
    with pytest.raises(ValueError, match="expected a finite weight >= 0 and time in"):
        shared_reference(model4, "image", ref, weight=-1).__enter__()
    with (
        shared_reference(model4, "image", ref, 1.0),
        pytest.raises(ValueError, match="references: 2 of them cannot serve 3 samples"),
    ):
        anydit.sample(model4, {"image": "generate"}, n=3, steps=1)
