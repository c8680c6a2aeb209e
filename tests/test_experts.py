"""Experts per stream: dispatch equals a loop over experts, upcycling keeps the outputs, the
router losses reach the training loss, bad settings are named."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import four_modalities, perturb, random_batch

import anydit
from anydit.model.experts import Experts, expert_layers, router_losses, upcycle


def _loop(e: Experts, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The experts one token and one expert at a time, with the same capacity rules."""
    x = h.reshape(-1, h.shape[-1])
    logits = (e.router(h) + e.router_time(c)).reshape(x.shape[0], -1)
    probs = logits.softmax(-1)
    slots = e.slots(x.shape[0])
    out = torch.zeros_like(x)

    def expert(i: int, v: torch.Tensor) -> torch.Tensor:
        return F.gelu(v @ e.w1[i] + e.b1[i]) @ e.w2[i] + e.b2[i]

    if e.routing == "expert_choice":
        for i in range(e.experts):
            for t in probs[:, i].topk(slots).indices.tolist():
                out[t] += e.scale * probs[t, i] * expert(i, x[t])
        return out.reshape(h.shape)
    top, idx = probs.topk(e.top_k, -1)
    top = top / top.sum(-1, keepdim=True)
    taken = [0] * e.experts
    for j in range(e.top_k):  # every token's first choice first, in token order
        for t in range(x.shape[0]):
            i = int(idx[t, j])
            if taken[i] < slots:
                taken[i] += 1
                out[t] += e.scale * top[t, j] * expert(i, x[t])
    return out.reshape(h.shape)


@pytest.mark.parametrize(
    "routing, top_k, capacity, fine",
    [("top_k", 1, 0.0, {}), ("top_k", 2, 0.0, {}), ("top_k", 2, 0.6, {}), ("top_k", 1, 1.0, {}),
     ("expert_choice", 2, 1.0, {}), ("expert_choice", 1, 0.5, {}),
     ("expert_choice", 1, 1.0, {"hidden_share": 0.5, "scale": 4.0}),
     ("top_k", 2, 0.0, {"hidden_share": 0.25, "scale": 2.0})],
)  # fmt: skip
def test_batched_dispatch_equals_a_loop_over_experts(routing, top_k, capacity, fine):
    torch.manual_seed(0)
    e = Experts(16, 24, "gelu", 4, top_k=top_k, routing=routing, capacity=capacity, **fine)
    assert e.w1.shape == (4, 16, int(24 * fine.get("hidden_share", 1.0)))
    torch.nn.init.normal_(e.router.weight)
    torch.nn.init.normal_(e.router_time.weight, std=0.1)
    h, c = torch.randn(3, 7, 16), torch.randn(3, 1, 16)
    with torch.no_grad():
        torch.testing.assert_close(e(h, c), _loop(e, h, c), rtol=1e-5, atol=1e-5)
    if 0 < capacity < 1 and routing == "top_k":  # over capacity: nothing from that expert
        dense = Experts(16, 24, "gelu", 4, top_k=top_k, capacity=0.0)
        dense.load_state_dict(e.state_dict())
        with torch.no_grad():
            assert not torch.allclose(dense(h, c), e(h, c))


def _assert_same_outputs(dense, moe) -> None:
    """Both models compute the same outputs on one random batch at random times."""
    batch = random_batch(dense, 3)
    tokens = {k: dense.modalities[k].tokenize(v) for k, v in batch.items()}
    times = {k: torch.rand(3) for k in tokens}
    with torch.no_grad():
        want, got = dense(tokens, times), moe(tokens, times)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("single", [{}, {"single_depth": 1}])
@pytest.mark.parametrize("options", [{"top_k": 1}, {"top_k": 2, "shared": True}])
def test_upcycling_keeps_the_outputs(single, options):
    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2, **single)
    dense = anydit.MMDiT(mods, cfg).eval()
    perturb(dense, seed=0, std=0.05)
    moe = upcycle(dense, 4, capacity=0.0, **options).eval()
    assert moe.cfg.experts == 4 and sum(len(v) for v in expert_layers(moe).values()) > 0
    _assert_same_outputs(dense, moe)


def test_router_losses_are_logged_per_stream_and_trained(tmp_path):
    from anydit.train.optim import make_optimizer
    from anydit.train.step import train_step

    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2)
    m = anydit.MMDiT(mods, dataclasses.replace(cfg, experts=4, expert_top_k=2))
    optimizer = make_optimizer(m.parameters(), 1e-3)
    loss, _ = train_step(m, optimizer, random_batch(m, 8), generator=torch.Generator())
    assert {"balance/image", "z/image", "balance/text"} <= set(loss.parts)
    assert float(loss.parts["balance/image"]) >= 1.0 - 1e-4  # E x sum f P >= 1, = 1 balanced
    aux = router_losses(m)
    assert set(aux) == {k for k in loss.parts if "/" in k}
    # the same step without the router losses' weights gives a smaller total
    plain = anydit.MMDiT(mods, dataclasses.replace(m.cfg, expert_balance=0.0, expert_z=0.0))
    plain.load_state_dict(m.state_dict())
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(5)
    weighted, _ = train_step(
        m, make_optimizer(m.parameters(), 0.0), random_batch(m, 8), generator=g
    )
    g = torch.Generator().manual_seed(5)
    bare, _ = train_step(plain, make_optimizer(plain.parameters(), 0.0), random_batch(m, 8),
                         generator=g)  # fmt: skip
    parts = weighted.parts.items()
    extra = m.cfg.expert_balance * sum(v for k, v in parts if k.startswith("balance/"))
    extra += m.cfg.expert_z * sum(v for k, v in parts if k.startswith("z/"))
    assert float(weighted.total - bare.total) == pytest.approx(float(extra), rel=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"experts": 1}, "model.experts: expected 0 \\(dense\\) or an integer in 2..1024"),
        ({"experts": 4, "expert_top_k": 5}, "model.expert_top_k: expected an integer in 1..4"),
        ({"experts": 4, "expert_capacity": -1.0}, "model.expert_capacity: expected a number"),
        ({"experts": 4, "expert_routing": "expert_choice", "expert_capacity": 0.0},
         "model.expert_capacity: expected a number > 0 \\(expert_choice\\)"),
        ({"experts": 4, "expert_routing": "hash"}, "model.expert_routing: expected top_k"),
        ({"experts": 4, "mup_base_width": 32}, "model.experts: expected 0 with model.mup"),
        ({"experts": 4, "expert_hidden": 0.0}, "model.expert_hidden: expected a share in"),
        ({"experts": 4, "expert_hidden": 1.5}, "model.expert_hidden: expected a share in"),
        ({"experts": 4, "expert_scale": 0.0}, "model.expert_scale: expected a number > 0"),
    ],
)  # fmt: skip
def test_bad_expert_settings_are_named(change, message):
    _, cfg = four_modalities()
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(cfg, **change)


def test_unknown_expert_streams_and_parallel_layers_are_refused():
    mods, cfg = four_modalities(depth=1, single_depth=1)
    with pytest.raises(ValueError, match="model.expert_streams: unknown streams \\['speech'\\]"):
        anydit.MMDiT(mods, dataclasses.replace(cfg, experts=2, expert_streams=("speech",)))
    with pytest.raises(ValueError, match="parallel single-stream layers"):
        dataclasses.replace(cfg, experts=2, single_block="parallel")
    ok = dataclasses.replace(cfg, experts=2, single_block="parallel", expert_streams=("image",))
    m = anydit.MMDiT(mods, ok)
    assert set(expert_layers(m)) == {"image"}


def test_a_shared_expert_adds_its_mlp_to_every_token():
    torch.manual_seed(0)
    routed = Experts(16, 24, "gelu", 4, top_k=2, capacity=0.0)
    shared = Experts(16, 24, "gelu", 4, top_k=2, capacity=0.0, shared=True)
    shared.load_state_dict(routed.state_dict(), strict=False)
    h, c = torch.randn(2, 5, 16), torch.randn(2, 1, 16)
    with torch.no_grad():
        want = routed(h, c) + shared.shared(h)
        torch.testing.assert_close(shared(h, c), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(shared(h, c), routed(h, c))


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_task_trains_the_router_even_with_one_expert_a_token(top_k):
    """Top-1's renormalised weight is 1 in value; its backward still reaches the router, and
    pushes up the probability of every token's chosen expert."""
    torch.manual_seed(0)
    e = Experts(16, 24, "gelu", 4, top_k=top_k, capacity=0.0)
    torch.nn.init.normal_(e.router.weight, std=0.1)
    h, c = torch.randn(2, 5, 16), torch.randn(2, 1, 16)
    out = e(h, c)
    out.pow(2).sum().backward()  # no router losses in this loss: only the task's signal
    scale = e.w1.grad.norm()  # the experts' own gradient, for scale (a no-signal router: ~1e-8)
    assert e.router.weight.grad.norm() > 0.1 * scale
    assert e.router_time.weight.grad.norm() > 0.1 * scale
    if top_k == 1:  # the value is untouched: each token gets its chosen expert's output, whole
        with torch.no_grad():
            probs = (e.router(h) + e.router_time(c)).softmax(-1).reshape(10, 4)
            x, chosen = h.reshape(10, 16), probs.argmax(-1)
            want = torch.stack([
                F.gelu(x[t] @ e.w1[i] + e.b1[i]) @ e.w2[i] + e.b2[i]
                for t, i in enumerate(chosen.tolist())
            ])  # fmt: skip
        torch.testing.assert_close(out.detach().reshape(10, 16), want, rtol=1e-5, atol=1e-6)


def test_train_init_upcycles_a_dense_file_into_an_expert_model(tmp_path):
    """``train.init`` of a dense file into an expert model: every expert its MLP, drawn routers;
    with top-k routing and no capacity limit it computes what the dense model computes."""
    from anydit.model.extend import init_from_file
    from anydit.model.file import save_model

    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2)
    dense = anydit.MMDiT(mods, cfg).eval()
    perturb(dense, seed=0, std=0.05)
    path = save_model(dense, tmp_path / "dense.safetensors")
    moe = anydit.MMDiT(mods, dataclasses.replace(cfg, experts=3, expert_capacity=0.0)).eval()
    report = init_from_file(moe, path)
    assert report["new"] == []  # every weight has a source: experts, routers (drawn)
    _assert_same_outputs(dense, moe)
    layer = expert_layers(moe)["image"][0]
    assert layer.router.weight.abs().sum() > 0 and layer.w1.shape[0] == 3
    probs = layer.router(torch.randn(64, layer.router.in_features)).softmax(-1)
    assert len(set(probs.argmax(-1).tolist())) == 3  # the tokens spread over the experts


def test_fine_grained_experts_with_a_shared_one_keep_the_dense_compute():
    """Four experts of half the MLP's hidden width, expert choice at capacity 1 (each token one
    routed expert on average) and a shared expert of the same size: a forward costs what the
    dense model's costs (the routers' few FLOPs aside), with 2.5x the MLP parameters."""
    from torch.utils.flop_counter import FlopCounterMode

    mods, cfg = four_modalities(depth=2)
    fine = dict(experts=4, expert_routing="expert_choice", expert_capacity=1.0)
    fine.update(expert_shared=True, expert_hidden=0.5)
    dense = anydit.MMDiT(mods, cfg).eval()
    moe = anydit.MMDiT(mods, dataclasses.replace(cfg, **fine)).eval()
    layer = expert_layers(moe)["image"][0]
    assert layer.w1.shape[-1] == layer.shared[0].out_features == int(cfg.width * cfg.mlp_ratio) // 2
    batch = random_batch(dense, 8)
    tokens = {k: dense.modalities[k].tokenize(v) for k, v in batch.items()}
    times = {k: torch.rand(8) for k in tokens}
    flops = []
    for m in (dense, moe):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m(tokens, times)
        flops.append(counter.get_total_flops())
    assert flops[1] == pytest.approx(flops[0], rel=0.03)
    hidden = layer.experts * layer.w1.shape[-1] + layer.shared[0].out_features
    assert hidden == 2.5 * int(cfg.width * cfg.mlp_ratio)  # 2.5x the dense MLP's channels


def test_expert_scale_multiplies_the_routed_experts_only():
    torch.manual_seed(0)
    one = Experts(16, 24, "gelu", 4, routing="expert_choice", capacity=1.0, shared=True)
    four = Experts(16, 24, "gelu", 4, routing="expert_choice", capacity=1.0, shared=True, scale=4)
    torch.nn.init.normal_(one.router.weight)
    four.load_state_dict(one.state_dict())
    h, c = torch.randn(2, 6, 16), torch.randn(2, 1, 16)
    with torch.no_grad():
        common = one.shared(h)
        torch.testing.assert_close(four(h, c) - common, 4 * (one(h, c) - common))
        assert (one(h, c) - common).abs().max() > 0


def test_upcycling_into_fine_grained_experts_is_refused():
    mods, cfg = four_modalities(depth=1)
    dense = anydit.MMDiT(mods, cfg)
    with pytest.raises(ValueError, match="copies need model.expert_hidden 1"):
        upcycle(dense, 4, hidden=0.5)
