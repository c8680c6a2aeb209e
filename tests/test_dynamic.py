"""Timestep-dynamic width: conversion keeps the outputs, the sliced MLP equals the masked one
and counts what it ran, the width loss moves the share kept, FLOPs are accounted, bad settings
are named, and ``anydit slim`` writes a model that samples and evaluates."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import four_modalities, perturb, random_batch

import anydit
from anydit.cli import main
from anydit.model.dynamic import (
    WidthRouter,
    make_dynamic,
    network_share,
    routers,
    width_counts,
    width_kept,
)


def _inputs(model, b: int = 3, per_token: bool = False):
    batch = random_batch(model, b)
    tokens = {k: model.modalities[k].tokenize(v) for k, v in batch.items()}
    g = torch.Generator().manual_seed(1)
    if per_token:
        times = {k: torch.rand(b, model.modalities[k].num_tokens, generator=g) for k in tokens}
    else:
        times = {k: torch.rand(b, generator=g) for k in tokens}
    return tokens, times


@pytest.mark.parametrize("single", [{}, {"single_depth": 1}])
def test_a_new_dynamic_model_computes_what_the_dense_one_does(single):
    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2, **single)
    dense = anydit.MMDiT(mods, cfg).eval()
    perturb(dense, seed=0, std=0.05)
    dyn = make_dynamic(dense, 4).eval()
    assert dyn.cfg.dynamic_width == 4 and len(routers(dyn)) > 0
    tokens, times = _inputs(dense)
    with torch.no_grad():
        want, got = dense(tokens, times), dyn(tokens, times)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)
    ran, full = width_counts(dyn)
    assert ran == full > 0  # every group on: the whole MLP ran


@pytest.mark.parametrize("per_token", [False, True])
def test_the_sliced_mlp_equals_the_masked_one_and_counts_what_it_ran(per_token):
    torch.manual_seed(0)
    r = WidthRouter(16, 32, 4)
    torch.nn.init.normal_(r.proj.weight)
    torch.nn.init.normal_(r.proj.bias)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    h = torch.randn(5, 7, 16)
    c = torch.randn(5, 7 if per_token else 1, 16)
    r.eval()
    with torch.no_grad():
        on = (r.proj(c) > 0).float()  # (b, 1|n, G)
        assert 0 < on.mean() < 1 and len(torch.unique(on.reshape(-1, 4), dim=0)) > 1
        masked = mlp[2](mlp[1](mlp[0](h)) * on.repeat_interleave(8, -1))
        got = r(mlp, h, c)
    torch.testing.assert_close(got, masked, rtol=1e-5, atol=1e-6)
    ran, full = r.macs
    assert full == 5 * 7 * 2 * 16 * 32
    assert ran == int(on.expand(5, 7, 4).sum()) * 8 * 2 * 16  # tokens x channels on x 2 d


def test_every_group_off_leaves_the_bias():
    r = WidthRouter(8, 16, 2).eval()
    torch.nn.init.constant_(r.proj.bias, -1.0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    with torch.no_grad():
        out = r(mlp, torch.randn(2, 3, 8), torch.randn(2, 1, 8))
    torch.testing.assert_close(out, mlp[2].bias.expand(2, 3, 8))
    assert r.macs[0] == 0


def test_the_width_loss_reaches_the_training_loss_and_moves_the_share_kept():
    from anydit.train.optim import make_optimizer
    from anydit.train.step import train_step

    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2)
    m = anydit.MMDiT(mods, dataclasses.replace(cfg, dynamic_width=4, dynamic_keep=0.25))
    optimizer = make_optimizer(m.parameters(), 3e-2)
    shares = []
    for step in range(30):
        g = torch.Generator().manual_seed(step)
        loss, _ = train_step(m, optimizer, random_batch(m, 8), generator=g)
        shares.append(float(loss.parts["width/kept"]))
    assert shares[0] > 0.85  # a new router keeps (nearly) every group
    assert shares[-1] < 0.6  # the loss pulls the share towards 0.25
    kept = width_kept(m)
    assert kept is not None and kept.requires_grad  # straight-through: the router learns
    # the same step with weight 0 gives exactly the task loss
    plain = anydit.MMDiT(mods, dataclasses.replace(m.cfg, dynamic_weight=0.0))
    plain.load_state_dict(m.state_dict())
    totals = []
    for model in (m, plain):
        torch.manual_seed(3)
        g = torch.Generator().manual_seed(7)
        loss, _ = train_step(
            model, make_optimizer(model.parameters(), 0.0), random_batch(m, 8), generator=g
        )
        totals.append((float(loss.total), float(loss.parts["width/kept"])))
    (weighted, kept_w), (bare, kept_b) = totals
    assert kept_w == pytest.approx(kept_b)
    assert weighted - bare == pytest.approx((kept_w - 0.25) ** 2, rel=1e-3, abs=1e-6)


def test_network_share_counts_the_mlps_against_the_whole_network():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2)
    dense = anydit.MMDiT(mods, cfg).eval()
    m = make_dynamic(dense, 4).eval()
    tokens, times = _inputs(dense, b=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # the dense network itself
        dense(tokens, times)
    counts = counter.get_flop_counts()
    mlps = sum(  # the blocks' MLPs (not the time embedders' .mlp)
        sum(counts[k].values()) for k in counts if k.endswith(".mlp") and "blocks." in k
    )
    without_mlps = 1 - mlps / counter.get_total_flops()
    tokens, times = _inputs(m, b=2)
    with torch.no_grad():
        m(tokens, times)
    ran, full = width_counts(m)
    everything = network_share(m, ran, full)
    assert 1.0 < everything < 1.02  # every group on: the dense network plus the routers
    nothing = network_share(m, 0, full)
    assert 0.1 < without_mlps < 0.9  # the MLPs are a real share of the FLOPs
    # all on minus all off is the dense network's own MLP share, counted on it directly
    assert everything - nothing == pytest.approx(1 - without_mlps, rel=1e-6)
    for r in routers(m):  # every group off where FLOPs are counted too
        torch.nn.init.constant_(r.proj.bias, -10.0)
    assert network_share(m, 0, full) == pytest.approx(nothing, rel=1e-6)
    for r in routers(m):
        r.reset()
    half = network_share(m, full // 2, full)
    assert half == pytest.approx((everything + nothing) / 2, rel=1e-6)
    assert width_counts(m) == (ran, full)  # the caller's counts are left as they were


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dynamic_width": 1}, "model.dynamic_width: expected 0 \\(dense\\) or a number of groups"),
        ({"dynamic_width": 7}, "dividing the MLP's hidden width"),
        ({"dynamic_width": 4, "dynamic_keep": 0.0}, "model.dynamic_keep: expected in \\(0, 1\\]"),
        ({"dynamic_width": 4, "dynamic_weight": -1.0}, "model.dynamic_weight: expected >= 0"),
        ({"dynamic_width": 4, "experts": 2}, "model.dynamic_width: expected 0 with model.experts"),
        ({"dynamic_width": 4, "mup_base_width": 32}, "expected 0 with model.mup_base_width"),
    ],
)  # fmt: skip
def test_bad_dynamic_settings_are_named(change, message):
    _, cfg = four_modalities()
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(cfg, **change)


@pytest.mark.slow
def test_cli_slim_writes_a_model_that_samples_and_reports_its_flops(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {source: digits}\nmodel: {preset: debug, depth: 2}\n"
        "train: {steps: 4, batch_size: 16, checkpoint_every: 4, tensorboard: false}\n"
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    args = ["slim", str(tmp_path / "run"), "--groups", "4", "--keep", "0.3", "--steps", "3"]
    assert main([*args, "--batch-size", "8", "--out", str(tmp_path / "s")]) == 0
    report = json.loads((tmp_path / "s" / "slim.json").read_text())
    assert (report["groups"], report["keep"], report["distill_steps"]) == (4, 0.3, 3)
    model = anydit.load_model(tmp_path / "s" / "model.safetensors")
    assert (model.cfg.dynamic_width, model.cfg.dynamic_keep) == (4, 0.3)
    sample = ["sample", "--checkpoint", str(tmp_path / "s"), "--generate", "image"]
    assert main([*sample, "--given", "label=3", "-n", "2", "--steps", "2", "--out",
                 str(tmp_path / "x")]) == 0  # fmt: skip
    assert "sampling FLOPs" in capsys.readouterr().out
    assert main([*sample, "--given", "label=3", "-n", "2", "--steps", "4", "--route-reuse",
                 "0.5", "--out", str(tmp_path / "y")]) == 0  # fmt: skip
    assert "dynamic width: the MLPs ran" in capsys.readouterr().out
    assert main([*sample, "--route-reuse", "2", "--out", str(tmp_path / "z")]) == 2
    assert "sample.route_reuse: expected a time distance in [0, 1]" in capsys.readouterr().err
    out = tmp_path / "e"
    assert main(["eval", "--checkpoint", str(tmp_path / "s"), "--n-per-class", "1", "--steps",
                 "1", "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["flops_share"] <= 1.01 and 0 <= metrics["mlp_share"] <= 1
    assert "flops_share/label_to_image" in metrics
    weightless = [*args, "--width-weight", "0", "--batch-size", "8"]
    assert main([*weightless, "--out", str(tmp_path / "w")]) == 0
    unweighted = json.loads((tmp_path / "w" / "slim.json").read_text())
    assert unweighted["width_weight"] == 0.0
    # a new model keeps ~all of its MLPs against a target of 0.3: the width loss is the gap
    assert unweighted["distill_loss"][0] < report["distill_loss"][0] - 0.1
    assert main([*args, "--keep", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "model.dynamic_keep: expected in (0, 1]" in capsys.readouterr().err
    assert main(["slim", str(tmp_path / "s"), "--steps", "1", "--out", str(tmp_path / "b2")]) == 2
    assert "slim: the model has dynamic width already" in capsys.readouterr().err


def _routed_model(kind: str):
    torch.manual_seed(0)
    mods, cfg = four_modalities(depth=2)
    change = {"dynamic_width": 4} if kind == "width" else {"experts": 4, "expert_top_k": 2}
    m = anydit.MMDiT(mods, dataclasses.replace(cfg, **change)).eval()
    perturb(m, seed=0, std=0.05)
    with torch.no_grad():  # routers that depend on the time
        for name, p in m.named_parameters():
            if "router" in name:
                p.normal_(0.0, 1.0)
    return m


@pytest.mark.parametrize("kind", ["width", "experts"])
def test_route_reuse_keeps_decisions_while_the_times_barely_move(kind):
    m = _routed_model(kind)
    task = {"image": "generate", "label": torch.arange(3)}
    runs = {}
    for reuse in (0.0, 1e-9, 0.2, 1.0):
        stats: dict = {}
        out = anydit.sample(m, task, n=3, steps=8, seed=0, route_reuse=reuse, stats=stats)
        runs[reuse] = (out["image"], stats.get("routings"), stats.get("route_calls"))
    assert runs[0.0][1] is None  # off: no routing reuse at all
    assert runs[1e-9][1] == runs[1e-9][2] == 8  # every time moves: routes at every call
    torch.testing.assert_close(runs[1e-9][0], runs[0.0][0], rtol=0, atol=0)
    assert runs[1.0][1] == 1 and runs[1.0][2] == 8  # the first call's decisions throughout
    assert 1 < runs[0.2][1] < 8  # routes again once the image's time moved 0.2
    assert not torch.equal(runs[1.0][0], runs[0.0][0])  # stale decisions change the samples
    assert all(r.reuse is None for r in m.modules() if hasattr(r, "reuse"))  # detached
    with pytest.raises(ValueError, match="sample.route_reuse: expected a time distance"):
        anydit.sample(m, task, n=3, steps=2, route_reuse=1.5)
