import pytest
import torch
from conftest import four_modalities, random_batch, randomize

import anydit
from anydit.flow import make_inputs


def _inputs(model, b=3, seed=0):
    inp = make_inputs(
        model.modalities,
        random_batch(model, b, seed),
        anydit.FlowConfig(),
        model.cfg.per_token_time,
        None,
        torch.Generator().manual_seed(seed),
    )
    return inp.tokens, inp.times


def _build(seed=0, mods=None, **kw):
    torch.manual_seed(seed)
    m, cfg = four_modalities(**kw)
    model = anydit.MMDiT(mods or m, cfg)
    randomize(model, seed)
    return model


def test_output_shapes_and_zero_init(model4):
    tokens, times = _inputs(model4)
    out = model4(tokens, times)
    assert out["image"].shape == (3, 16, 4) and out["audio"].shape == (3, 4, 16)
    assert out["label"].shape == (3, 1, 10) and out["text"].shape == (3, 12, 257)
    # adaLN-Zero: a fresh model predicts exactly zero everywhere
    assert all((o == 0).all() for o in out.values())


def test_permuting_declared_order_changes_nothing():
    mods, cfg = four_modalities()
    a = anydit.MMDiT(mods, cfg)
    randomize(a)
    b = anydit.MMDiT(list(reversed(mods)), cfg)
    b.load_state_dict(a.state_dict())
    tokens, times = _inputs(a)
    out_a, out_b = a(tokens, times), b(dict(reversed(tokens.items())), times)
    for n in out_a:
        assert torch.equal(out_a[n], out_b[n])
    sa = anydit.sample(
        a, {"image": "generate", "text": "generate", "label": 3}, n=2, steps=3, seed=5
    )
    sb = anydit.sample(
        b, {"label": 3, "text": "generate", "image": "generate"}, n=2, steps=3, seed=5
    )
    for n in sa:
        assert torch.equal(sa[n], sb[n])


def test_streams_interact_through_joint_attention():
    model = _build()
    tokens, times = _inputs(model)
    base = model(tokens, times)
    tokens2 = dict(tokens, audio=tokens["audio"] + 1.0)
    moved = model(tokens2, times)
    assert not torch.allclose(base["image"], moved["image"])  # audio reaches image
    times2 = dict(times, label=torch.ones_like(times["label"]))
    assert not torch.allclose(base["image"], model(tokens, times2)["image"])  # time summary


def test_rotary_positions_matter():
    model = _build()
    tokens, times = _inputs(model)
    base = model(tokens, times)["image"]
    model.rope[..., 0].fill_(1.0)  # every angle 0: no rotation
    model.rope[..., 1].fill_(0.0)
    assert not torch.allclose(base, model(tokens, times)["image"])


def test_apply_rotary_rotates_adjacent_pairs():
    """Against the plain 2x2 rotation of each pair (x_2i, x_2i+1) by its angle."""
    from anydit.model.rotary import apply_rotary, rotary_angles, rotary_table

    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [5.0, 0.0, 1.0]])  # (n, 3)
    angles = rotary_angles(pos, 12, 100.0).float()  # (n, 6)
    x = torch.randn(2, 3, 3, 12)  # (b, h, n, e)
    a, b = x[..., 0::2], x[..., 1::2]
    want = torch.stack(
        [a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], -1
    )
    got = apply_rotary(x, rotary_table(angles))
    torch.testing.assert_close(got, want.flatten(-2))
    torch.testing.assert_close(got[:, :, 0], x[:, :, 0])  # position 0: identity
    # relative: <R(p) q, R(p + delta) k> depends on delta only
    q, k = torch.randn(1, 1, 1, 12), torch.randn(1, 1, 1, 12)

    def score(p_q, p_k):
        table = rotary_table(rotary_angles(torch.tensor([p_q, p_k]), 12, 100.0))
        return (apply_rotary(q, table[:1]) * apply_rotary(k, table[1:])).sum()

    near = score([3.0, 1.0, 2.0], [5.0, 4.0, 2.0])
    torch.testing.assert_close(near, score([10.0, 7.0, 0.0], [12.0, 10.0, 0.0]))
    assert not torch.allclose(near, score([3.0, 1.0, 2.0], [3.0, 1.0, 2.0]))
    bf = apply_rotary(x.bfloat16(), rotary_table(angles))
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), want.flatten(-2), rtol=2e-2, atol=2e-2)


def test_attention_short_bf16_matches_fp32():
    from anydit.model.block import attention

    q, k, v = (torch.randn(2, 2, 40, 16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert got.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(attention(q.bfloat16(), k.bfloat16(), v.bfloat16()), got)
    torch.testing.assert_close(got.float(), ref, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(attention(q, k, v), ref)


@pytest.mark.parametrize(
    "option",
    [
        {"single_depth": 1},
        {"qk_norm": False},
        {"mlp_ratio": 2.0},
        {"rope_theta": 100.0},
        {"activation": "gelu_tanh"},
        {"depth": 3},
    ],
    ids=lambda o: next(iter(o)),
)
def test_model_options_change_outputs(option):
    base = _build()
    other = _build(**option)
    tokens, times = _inputs(base)
    own = other.state_dict()
    shared = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
    other.load_state_dict(shared, strict=False)  # equal where they can be: only the option differs
    if option.get("depth") or option.get("single_depth"):
        assert set(own) - set(shared)  # the extra blocks, which must run
    out_a, out_b = base(tokens, times), other(tokens, times)
    assert not torch.allclose(out_a["image"], out_b["image"])


def test_single_stream_blocks_share_weights():
    model = _build(single_depth=2)
    assert len(model.single_blocks) == 2
    names = [k for k, _ in model.named_parameters() if k.startswith("single_blocks.0.")]
    assert names and not any("image" in k or "text" in k for k in names)


def test_stream_widths():
    mods, cfg = four_modalities()
    mods[0].width = 48  # image stream wider than the others (32)
    model = anydit.MMDiT(mods, cfg)
    randomize(model)
    assert model.embed["image"].weight.shape == (48, 4) and model.embed["audio"].weight.shape == (
        32,
        16,
    )
    tokens, times = _inputs(model)
    assert model(tokens, times)["image"].shape == (3, 16, 4)


def test_per_token_time():
    model = _build(per_token_time=True)
    tokens, times = _inputs(model)
    assert times["image"].shape == (3, 16)  # training draws one time per token
    times = {k: v[:, 0] for k, v in times.items()}  # (b,): one per sample
    flat = model(tokens, times)
    per_tok = {k: v[:, None].expand(-1, model.modalities[k].num_tokens) for k, v in times.items()}
    torch.testing.assert_close(
        model(tokens, per_tok)["image"], flat["image"]
    )  # same times, same result
    per_tok["image"] = per_tok["image"].clone()
    per_tok["image"][:, 0] = 1.0
    assert not torch.allclose(model(tokens, per_tok)["image"], flat["image"])
    plain = _build()
    with pytest.raises(
        ValueError, match="times\\['audio'\\] is per token .* per_token_time = false"
    ):
        plain(tokens, per_tok)


def test_missing_modality_in_forward_is_named(model4):
    tokens, times = _inputs(model4)
    del tokens["text"]
    with pytest.raises(
        ValueError,
        match=r"tokens must have exactly the modalities \['audio', 'image', 'label', 'text'\]",
    ):
        model4(tokens, times)


def test_activation_checkpointing_same_gradients_recomputes():
    grads, counts = [], []
    for ckpt in (False, True):
        model = _build(checkpointing=ckpt)
        calls = []
        model.blocks[0].register_forward_pre_hook(lambda *a, c=calls: c.append(1))
        tokens, times = _inputs(model)
        out = model(tokens, times)
        sum(o.float().pow(2).mean() for o in out.values()).backward()
        grads.append(
            torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        )
        counts.append(len(calls))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert counts == [1, 2]  # the block ran again during backward


def test_bf16_autocast_close_to_fp32():
    model = _build()
    tokens, times = _inputs(model)
    ref = model(tokens, times)["image"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(tokens, times)["image"].float()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


def test_presets():
    for name in ("debug", "small", "base", "large"):
        assert anydit.preset(name).width > 0
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        anydit.preset("huge")


@pytest.mark.parametrize("pooled", [True, False])
def test_pooled_conditioning_is_a_path_between_streams(pooled):
    """With attention outputs zeroed, streams meet only through the conditioning vector: the
    label can then reach the image only through the pooled path."""
    model = _build(pooled_cond=pooled)
    with torch.no_grad():
        for block in model.blocks:
            for layer in block.streams.values():
                layer.out.weight.zero_()
                layer.out.bias.zero_()
    tokens, times = _inputs(model)
    base = model(tokens, times)["image"]
    other = dict(tokens, label=(tokens["label"] + 1) % 10)
    changed = not torch.allclose(base, model(other, times)["image"])
    assert changed == pooled


def test_single_stream_blocks_with_non_default_equal_widths():
    mods, cfg = four_modalities(single_depth=1)
    for m in mods:
        m.width = 48  # all streams 48 wide, model width 32
    model = anydit.MMDiT(mods, cfg)
    tokens, times = _inputs(model)
    assert model(tokens, times)["image"].shape == (3, 16, 4)
