"""The model options that imported SD3 / Flux transformers use, each shown to do what it says
on anydit's own tiny models (their exactness against diffusers is in test_interop.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

import anydit
from anydit.config import ConfigError, ModalityConfig
from anydit.model.embeddings import PositionTable
from anydit.model.lora import LoRALinear, merged_state_dict
from anydit.model.rotary import axis_pairs


def _mods(**image_kw):
    return [
        ModalityConfig("image", "image", (2, 8, 8), patch=2, **image_kw),
        ModalityConfig("text", "sequence", (5, 6), generate=False, rope=False),
        ModalityConfig("pooled", "vector", (3,), pooled="mlp"),
    ]


def _model(mods=None, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = anydit.preset("debug", **{"conditioning": "sum", "pooled_cond": False, **kw})
    model = anydit.MMDiT(mods or _mods(), cfg).eval()
    randomize(model, seed, std=0.2)
    return model


def _inputs(model, b=2, seed=0, t=None):
    g = torch.Generator().manual_seed(seed)
    tokens = {
        n: m.tokenize(torch.randn(b, *m.shape, generator=g)) for n, m in model.modalities.items()
    }
    times = {n: torch.ones(b) for n in model.names}
    times["image"] = torch.rand(b, generator=g) if t is None else t
    return tokens, times


def test_condition_only_and_pooled_modalities_have_no_output_and_no_tokens():
    model = _model()
    assert model.outputs == ["image"] and model.streams == ["image", "text"]
    last = model.blocks[-1].streams
    assert last["text"].pre_only and not hasattr(last["text"], "mlp")  # SD3's context_pre_only
    assert not last["image"].pre_only
    out = model(*_inputs(model))
    assert set(out) == {"image"}
    # the rotary table covers the token streams only: 16 image + 5 text tokens
    assert model.rope.shape[0] == 21
    with pytest.raises(ValueError, match="'text' is a condition only"):
        anydit.sample(model, {"text": "generate", "image": "generate"}, n=1, steps=2)
    with pytest.raises(
        ConfigError, match=r"pooled: does not apply to kind .sequence. \(only to \[.vector.\]\)"
    ):
        ModalityConfig("x", "sequence", (2, 2), pooled="mlp")
    with pytest.raises(ConfigError, match="at least one that can be generated"):
        anydit.Config(modalities=_mods()[1:])


def test_pooled_condition_counts_only_when_given():
    model = _model()
    tokens, times = _inputs(model)
    other = dict(tokens, pooled=tokens["pooled"] + 1.0)
    a, b = model(tokens, times)["image"], model(other, times)["image"]
    assert not torch.allclose(a, b)  # given: the value matters
    times = dict(times, pooled=torch.zeros(2))
    a, b = model(tokens, times)["image"], model(other, times)["image"]
    assert torch.equal(a, b)  # dropped: it contributes nothing


def test_pooled_time_embeds_a_scalar():
    mods = [*_mods(), ModalityConfig("guidance", "vector", (1,), pooled="time")]
    model = _model(mods)
    tokens, times = _inputs(model)
    a = model(tokens, times)["image"]
    b = model(dict(tokens, guidance=tokens["guidance"] + 0.5), times)["image"]
    assert not torch.allclose(a, b)
    with pytest.raises(ConfigError, match=r"\(1,\) for pooled 'time'"):
        ModalityConfig("g", "vector", (2,), pooled="time")


def _permuted_outputs(model):
    """Output of permuted image tokens, un-permuted, vs the plain output."""
    tokens, times = _inputs(model)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    out = model(tokens, times)["image"]
    shuffled = model(dict(tokens, image=tokens["image"][:, perm]), times)["image"]
    return out[:, perm], shuffled


def test_rope_off_makes_image_tokens_orderless_and_a_position_table_restores_order():
    a, b = _permuted_outputs(_model(_mods(rope=False)))
    assert torch.allclose(a, b, atol=1e-5)  # no position at all: permutation-equivariant
    a, b = _permuted_outputs(_model(_mods(rope=True)))
    assert not torch.allclose(a, b, atol=1e-3)
    a, b = _permuted_outputs(_model(_mods(rope=False, pos_table=6)))
    assert not torch.allclose(a, b, atol=1e-3)


def test_position_table_is_centre_cropped():
    table = PositionTable(6, 4, rows=2, cols=4)
    with torch.no_grad():
        table.table.copy_(torch.arange(36.0)[:, None].expand(36, 4))
    got = table(torch.zeros(1, 8, 4))[0, :, 0]
    # rows 2..3, columns 1..4 of the 6 x 6 grid
    assert got.tolist() == [13, 14, 15, 16, 19, 20, 21, 22]
    with pytest.raises(ConfigError, match="pos_table.*>= the patch grid"):
        ModalityConfig("im", "image", (1, 16, 16), patch=2, pos_table=4)


def test_sigma_time_input_is_the_same_network_run_at_one_minus_t():
    a = _model(time_input="t")
    b = _model(time_input="sigma")
    b.load_state_dict(a.state_dict())
    tokens, times = _inputs(a, t=torch.tensor([0.25, 0.625]))  # 1 - t is exact
    flipped = {n: 1 - t for n, t in times.items()}
    flipped["pooled"] = times["pooled"]  # a pooled condition's scale is not a time
    assert torch.equal(a(tokens, times)["image"], b(tokens, flipped)["image"])
    assert not torch.allclose(a(tokens, times)["image"], b(tokens, times)["image"], atol=1e-3)


def test_sum_conditioning_gives_every_stream_the_same_vector():
    model = _model()
    tokens, times = _inputs(model)
    x = {n: model.embed[n](tokens[n]) for n in model.streams}
    c = model.conditioning(times, x, {"pooled": tokens["pooled"]})
    assert torch.equal(c["image"], c["text"])
    expected = (
        model.time_embed["image"](times["image"])
        + model.time_embed["text"](times["text"])
        + model.pooled_embed["pooled"](tokens["pooled"][:, 0])
    )
    assert torch.allclose(c["image"][:, 0], expected, atol=1e-6)
    summary = _model(conditioning="summary")
    c = summary.conditioning(times, x, {"pooled": tokens["pooled"]})
    assert not torch.equal(c["image"], c["text"])  # per-stream projections of one summary
    other = summary.conditioning(dict(times, text=torch.zeros(2)), x, {"pooled": tokens["pooled"]})
    assert not torch.allclose(c["image"], other["image"])  # the image hears the text's time


def test_rope_axes_split():
    assert axis_pairs(16, 3) == [4, 2, 2] and axis_pairs(16, 3, (2, 2, 4)) == [2, 2, 4]
    even = _model(_mods(), head_dim=16)
    split = _model(_mods(), head_dim=16, rope_axes=(1, 1, 6))
    assert not torch.equal(even.rope, split.rope)
    with pytest.raises(ConfigError, match="rope_axes"):
        anydit.preset("debug", head_dim=16, rope_axes=(1, 1, 1))


def test_parallel_single_blocks_and_dual_attention_build_the_flux_and_sd35_layers():
    mods = [ModalityConfig("image", "image", (2, 8, 8), patch=2), _mods()[1]]
    flux = _model(mods, depth=1, single_depth=2, single_block="parallel")
    layer = flux.single_blocks[0].layer
    assert type(layer).__name__ == "ParallelLayer" and layer.modulation[-1].out_features == 3 * 32
    assert not flux.blocks[-1].streams["text"].pre_only  # single blocks follow: text goes on
    out = flux(*_inputs(flux))["image"]
    seq = _model(mods, depth=1, single_depth=2)
    assert out.shape == seq(*_inputs(seq))["image"].shape
    sd35 = _model(depth=2, dual_attention=(0,))
    assert sd35.blocks[0].streams["image"].attn2 is not None
    assert sd35.blocks[0].streams["text"].attn2 is None  # conditions only lend keys and values
    assert sd35.blocks[1].streams["image"].attn2 is None
    tokens, times = _inputs(sd35)
    base = sd35(tokens, times)["image"]
    with torch.no_grad():
        sd35.blocks[0].streams["image"].attn2.out.weight.mul_(2)
    assert not torch.allclose(base, sd35(tokens, times)["image"])


def test_lora_starts_as_the_base_model_and_merges_exactly():
    base = _model()
    lora = _model(lora_rank=2, lora_alpha=4, lora_streams=("image",))
    missing, unexpected = lora.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(".lora_" in k for k in missing)
    adapted = [m for m in lora.modules() if isinstance(m, LoRALinear)]
    assert adapted and all(m.scale == 2.0 for m in adapted)
    assert all(
        lora.stream_of(f"{n}.weight") == "image"
        for n, m in lora.named_modules()
        if isinstance(m, LoRALinear)
    )
    tokens, times = _inputs(base)
    for m in adapted:  # lora_b = 0: nothing changes until it trains
        torch.nn.init.zeros_(m.lora_b)
    assert torch.equal(base(tokens, times)["image"], lora(tokens, times)["image"])
    for m in adapted:
        torch.nn.init.normal_(m.lora_b, std=0.1)
    out = lora(tokens, times)["image"]
    assert not torch.allclose(out, base(tokens, times)["image"], atol=1e-4)
    base.load_state_dict(merged_state_dict(lora))
    assert torch.allclose(out, base(tokens, times)["image"], atol=1e-5)
    frozen = lora.freeze(["image", "text", "pooled"])
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert frozen > 0 and trainable and all(".lora_" in n for n in trainable)


def test_option_combinations_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="lora_streams: expected the streams to adapt"):
        anydit.preset("debug", lora_rank=4)
    with pytest.raises(ConfigError, match=r"conditioning 'sum'.*model.width = 32"):
        anydit.Config(
            modalities=[ModalityConfig("a", "vector", (2,), width=16)],
            model=anydit.preset("debug", conditioning="sum"),
        )
    # pooled modalities have no stream: they do not count in the equal-widths rule
    anydit.Config(
        modalities=[
            ModalityConfig("a", "image", (1, 4, 4), patch=2, width=16),
            ModalityConfig("p", "vector", (3,), pooled="mlp"),
        ],
        model=anydit.preset("debug", width=16, single_depth=1),
    )
