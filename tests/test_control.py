"""Control branches: zero at start and at strength 0, rows tiled to guidance branches, the
frozen model untouched by training, file round trip, control maps, clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import four_modalities, perturb, random_batch, randomize

import anydit
from anydit.data.controls import control_channels, make_control, parse_control
from anydit.flow.objective import make_inputs
from anydit.model.control import (
    ControlBranch,
    ControlConfig,
    controlled,
    load_control,
    save_control,
)
from anydit.train.control import control_roles, train_control


def _inputs(model, b=4, seed=0):
    raw = random_batch(model, b, seed)
    g = torch.Generator().manual_seed(seed)
    return raw, make_inputs(model.modalities, raw, anydit.FlowConfig(), generator=g)


def _outputs(model, inputs):
    with torch.no_grad():
        return model(inputs.tokens, inputs.times)


def test_fresh_branch_and_strength_zero_leave_the_model_bit_identical(model4):
    randomize(model4)
    raw, inputs = _inputs(model4)
    plain = _outputs(model4, inputs)
    branch = ControlBranch(model4, ControlConfig("image", 1, depth=2))
    control = make_control("lowres:2", raw["image"])
    with controlled(model4, branch, control):
        fresh = _outputs(model4, inputs)
    perturb(branch, std=0.1)
    with controlled(model4, branch, control, strength=0.0):
        zero = _outputs(model4, inputs)
    with controlled(model4, branch, control, strength=1.0):
        on = _outputs(model4, inputs)
    with controlled(model4, branch, control, strength=2.0):
        twice = _outputs(model4, inputs)
    after = _outputs(model4, inputs)  # the scope ended: the plain model again
    for name in plain:
        assert torch.equal(fresh[name], plain[name]), name
        assert torch.equal(zero[name], plain[name]), name
        assert torch.equal(after[name], plain[name]), name
    assert not torch.allclose(on["image"], plain["image"], atol=1e-4)
    assert not torch.allclose(twice["image"], on["image"], atol=1e-4)


def test_guidance_on_the_control_is_without_plus_w_times_the_difference(model4):
    randomize(model4)
    raw, inputs = _inputs(model4)
    branch = ControlBranch(model4, ControlConfig("image", 1, depth=2))
    perturb(branch, std=0.1)
    control = make_control("lowres:2", raw["image"])
    with controlled(model4, branch, control, strength=1.5):
        cond = _outputs(model4, inputs)
    without = _outputs(model4, inputs)
    with controlled(model4, branch, control, strength=1.5, guidance=2.5):
        guided = _outputs(model4, inputs)
        assert "forward" in model4.__dict__
    assert "forward" not in model4.__dict__ and "run_blocks" not in model4.__dict__
    for name in cond:
        want = without[name] + 2.5 * (cond[name] - without[name])
        assert torch.allclose(guided[name], want, atol=1e-5), name
    with controlled(model4, branch, control, guidance=1.0):
        assert "forward" not in model4.__dict__  # w = 1: one run, no wrapper
    with pytest.raises(ValueError, match="expected guidance > 0"):
        controlled(model4, branch, control, guidance=0.0).__enter__()


def test_control_rows_tile_to_the_guidance_branches(model4):
    randomize(model4)
    raw, inputs = _inputs(model4, b=6)
    branch = ControlBranch(model4, ControlConfig("image", 1, depth=1))
    perturb(branch, std=0.1)
    control = make_control("lowres:2", raw["image"][:3])  # 3 maps serve 6 rows: 2 groups of 3
    with controlled(model4, branch, control):
        tiled = _outputs(model4, inputs)
    with controlled(model4, branch, torch.cat([control, control])):
        full = _outputs(model4, inputs)
    assert torch.allclose(tiled["image"], full["image"], atol=1e-6)
    four = make_control("lowres:2", raw["image"][:4])
    with (
        pytest.raises(ValueError, match="control maps: 4 of them cannot serve 6 samples"),
        controlled(model4, branch, four),
    ):
        _outputs(model4, inputs)


def test_each_sample_reads_its_own_map_in_every_row_group(model4):
    """Rows (groups samples), as the sampler stacks guidance branches: a second group that
    repeats the first's inputs gives the first's outputs."""
    randomize(model4)
    raw, inputs = _inputs(model4, b=3)
    branch = ControlBranch(model4, ControlConfig("image", 1, depth=2))
    perturb(branch, std=0.1)
    tokens = {k: torch.cat([v, v]) for k, v in inputs.tokens.items()}  # (2 x 3, ...)
    times = {k: torch.cat([v, v]) for k, v in inputs.times.items()}
    with torch.no_grad(), controlled(model4, branch, make_control("lowres:2", raw["image"])):
        model4.run_blocks.samples = 3
        out = model4(tokens, times)["image"]
    assert torch.allclose(out[3:], out[:3], atol=1e-6)


def test_a_stream_of_its_own_width(model4):
    mods, cfg = four_modalities()
    mods[0] = anydit.ModalityConfig("image", "image", (1, 8, 8), patch=2, width=48)
    model = anydit.MMDiT(mods, cfg)
    randomize(model)
    branch = ControlBranch(model, ControlConfig("image", 1, depth=1))
    perturb(branch, std=0.1)
    raw, inputs = _inputs(model)
    with torch.no_grad(), controlled(model, branch, make_control("lowres:2", raw["image"])):
        got = model(inputs.tokens, inputs.times)
    assert got["image"].shape == inputs.tokens["image"].shape


def test_sampling_with_a_branch_and_guidance(model4):
    randomize(model4, std=0.05)
    branch = ControlBranch(model4, ControlConfig("image", 1, depth=2))
    perturb(branch, std=0.1)
    control = make_control("lowres:2", torch.rand(3, 1, 8, 8) * 2 - 1)
    task = {"image": "generate", "label": 3, "text": "drop", "audio": "drop"}
    plain = anydit.sample(model4, task, n=3, steps=4, guidance=2.0, seed=1)
    with controlled(model4, branch, control, strength=0.0):
        zero = anydit.sample(model4, task, n=3, steps=4, guidance=2.0, seed=1)
    with controlled(model4, branch, control):
        on = anydit.sample(model4, task, n=3, steps=4, guidance=2.0, seed=1)
        with pytest.raises(ValueError, match="cache cannot wrap"):
            anydit.sample(model4, task, n=3, steps=4, cache="first_block", cache_threshold=0.1)
        with pytest.raises(ValueError, match="control maps: 3 of them cannot serve 2 samples"):
            anydit.sample(model4, task, n=2, steps=4)
    assert torch.equal(zero["image"], plain["image"])
    assert not torch.allclose(on["image"], plain["image"], atol=1e-4)


def _control_loss(model, branch, data, seed=5) -> float:
    g = torch.Generator().manual_seed(seed)
    roles = control_roles(model, "image", "drop", data["image"].shape[0], "cpu")
    inputs = make_inputs(model.modalities, data, anydit.FlowConfig(), generator=g, roles=roles)
    with torch.no_grad(), controlled(model, branch, make_control("lowres:2", data["image"])):
        pred = model(inputs.tokens, inputs.times)["image"]
    return (pred - inputs.targets["image"]).pow(2).mean().item()


def test_training_moves_the_branch_only_and_lowers_the_loss(model4):
    randomize(model4, std=0.05)
    frozen = {k: v.clone() for k, v in model4.state_dict().items()}
    branch = ControlBranch(model4, ControlConfig("image", 1, depth=2))
    data = random_batch(model4, 16, seed=3)
    before = _control_loss(model4, branch, data)

    def batches():
        while True:
            yield data, {}

    losses = train_control(
        model4, branch, batches(), lambda x: make_control("lowres:2", x), steps=60, lr=3e-3,
        log=None,
    )  # fmt: skip
    assert len(losses) == 60
    assert _control_loss(model4, branch, data) < 0.9 * before
    for k, v in model4.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert branch.embed.weight.abs().sum() > 0 and branch.out[0].weight.abs().sum() > 0


def test_control_roles(model4):
    drop = control_roles(model4, "image", "drop", 3, "cpu")
    assert drop["image"].tolist() == [int(anydit.Role.GENERATE)] * 3
    assert drop["label"].tolist() == [int(anydit.Role.DROP)] * 3
    assert control_roles(model4, "image", "draw", 2, "cpu")["text"].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="'drop' or 'draw'"):
        control_roles(model4, "image", "keep", 2, "cpu")


def test_branch_file_round_trip(model4, tmp_path):
    branch = ControlBranch(model4, ControlConfig("image", 2, depth=1))
    perturb(branch)
    save_control(branch, tmp_path / "c.safetensors")
    back = load_control(tmp_path / "c.safetensors", model4)
    assert back.cfg == branch.cfg
    for k, v in branch.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    anydit.save_model(model4, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="not a control branch file"):
        load_control(tmp_path / "m.safetensors", model4)


def test_control_maps():
    cells = torch.arange(16.0).reshape(1, 1, 4, 4) / 8 - 1  # (1, 1, 4, 4)
    blocky = cells.repeat_interleave(2, -2).repeat_interleave(2, -1)  # (1, 1, 8, 8)
    assert torch.equal(make_control("lowres:2", blocky), blocky)  # constant cells stay
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    low = make_control("lowres:4", x)
    assert low.shape == x.shape
    assert torch.allclose(low[:, :, :4, :4].mean((-2, -1)), x[:, :, :4, :4].mean((-2, -1)))
    assert torch.equal(low[:, :, 0, 0], low[:, :, 3, 3])
    flat = make_control("edges", torch.zeros(1, 1, 8, 8))
    assert torch.equal(flat, -torch.ones(1, 1, 8, 8))  # no gradient: no edge anywhere
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0  # a vertical edge between columns 3 and 4
    edges = make_control("edges", step)
    assert edges.shape == (1, 1, 8, 8) and edges[0, 0, :, 3:5].eq(1).all()
    assert edges[0, 0, :, :2].eq(-1).all() and edges[0, 0, :, 6:].eq(-1).all()
    assert control_channels("lowres:2", 3) == 3 and control_channels("edges", 3) == 1
    assert parse_control("lowres:4") == ("lowres", 4)
    for bad in ("blur", "lowres", "lowres:1", "edges:2"):
        with pytest.raises(ValueError, match="control"):
            parse_control(bad)
    with pytest.raises(ValueError, match="do not split into 3x3"):
        make_control("lowres:3", x)


def test_control_errors(model4):
    with pytest.raises(ValueError, match="must be one of the model's image streams"):
        ControlBranch(model4, ControlConfig("label"))
    with pytest.raises(ValueError, match="depth <= 2"):
        ControlBranch(model4, ControlConfig("image", depth=5))
    branch = ControlBranch(model4, ControlConfig("image", 1, depth=1))
    raw, inputs = _inputs(model4)
    with (
        pytest.raises(ValueError, match=r"expected \(b, 1, 8, 8\)"),
        controlled(model4, branch, torch.zeros(4, 2, 8, 8)),
    ):
        _outputs(model4, inputs)
    with (
        controlled(model4, branch, torch.zeros(4, 1, 8, 8)),
        pytest.raises(ValueError, match="already wrapped"),
        controlled(model4, branch, torch.zeros(4, 1, 8, 8)),
    ):
        pass


@pytest.mark.slow
def test_cli_control_trains_saves_and_measures(tmp_path, capsys):
    import json

    from anydit.cli import main
    from anydit.run_config import model_file

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {source: digits}\nmodel: {preset: debug}\n"
        "train: {steps: 2, batch_size: 8, checkpoint_every: 2, tensorboard: false}\n"
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    args = ["control", str(tmp_path / "run"), "--control", "lowres:2", "--steps", "3"]
    more = ["--batch-size", "8", "--evaluate", "val", "--strengths", "0,1"]
    assert main([*args, *more, "--out", str(tmp_path / "c")]) == 0
    assert "strength 0.0: judge accuracy" in capsys.readouterr().out
    report = json.loads((tmp_path / "c" / "control.json").read_text())
    assert report["steps"] == 3 and report["stream"] == "image" and report["others"] == "drop"
    measured = report["evaluation"]
    assert measured["count"] == 100 and set(measured["strengths"]) == {"0.0", "1.0"}
    assert measured["real_accuracy"] > 0.9  # the judge reads real val digits
    page = (tmp_path / "c" / "gallery" / "index.html").read_text()  # map, 2 strengths, real
    assert "map, strength 0.0, strength 1.0, real" in page and "control_7.png" in page
    from PIL import Image

    strip = Image.open(tmp_path / "c" / "gallery" / "control_0.png")
    assert strip.width > 3.5 * strip.height  # four pictures side by side
    model = anydit.load_model(model_file(str(tmp_path / "run")))
    branch = load_control(tmp_path / "c" / "control.safetensors", model)
    assert branch.cfg == ControlConfig("image", 1, 2, "lowres:2")
    edges = ["control", str(tmp_path / "run"), "--control", "edges", "--steps", "2", "--depth", "1"]
    assert main([*edges, "--batch-size", "8", "--out", str(tmp_path / "e")]) == 0
    assert load_control(tmp_path / "e" / "control.safetensors", model).cfg.depth == 1
    import numpy as np

    source = tmp_path / "source.npy"
    np.save(source, (np.random.default_rng(0).random((1, 8, 8)) * 2 - 1).astype(np.float32))
    base = ["sample", "--checkpoint", str(tmp_path / "run"), "--generate", "image", "-n", "2",
            "--steps", "2"]  # fmt: skip
    ctrl = [
        "--control",
        str(tmp_path / "c" / "control.safetensors"),
        "--control-input",
        str(source),
    ]

    def arrays(name, *more):
        assert main([*base, *more, "--out", str(tmp_path / name)]) == 0
        return np.load(tmp_path / name / "samples.npz")["image"]

    plain = arrays("s0")
    assert np.array_equal(arrays("s1", *ctrl, "--control-strength", "0"), plain)
    assert not np.allclose(arrays("s2", *ctrl), plain, atol=1e-5)
    ref = ["--reference", f"image={source}"]
    assert np.array_equal(arrays("s3", *ref, "--reference-weight", "0"), plain)
    assert not np.array_equal(arrays("s4", *ref), plain)  # a barely trained model: small
    assert main([*base, "--control", ctrl[1], "--out", str(tmp_path / "s5")]) == 2
    assert "--control and --control-input go together" in capsys.readouterr().err
    assert main([*base, *ctrl, *ref, "--out", str(tmp_path / "s6")]) == 2
    assert "--control and --reference do not combine" in capsys.readouterr().err
    assert main([*base, "--control-strength", "2", "--out", str(tmp_path / "s7")]) == 2
    assert "--control-strength and --control-guidance need --control" in capsys.readouterr().err
    guided = arrays("s8", *ctrl, "--control-guidance", "3")
    assert not np.allclose(guided, arrays("s9", *ctrl), atol=1e-6)
    assert main([*args, "--stream", "label", "--out", str(tmp_path / "x")]) == 2
    assert "is not an image stream" in capsys.readouterr().err
    assert main([*args[:3], "blur", "--steps", "1", "--out", str(tmp_path / "y")]) == 2
    assert "expected one of ('lowres', 'edges')" in capsys.readouterr().err
