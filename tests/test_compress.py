"""Quantization (int8 / int4 weights, int8 activations per time bucket) and depth pruning."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import perturb

import anydit
from anydit.cli import main
from anydit.compress import calibrate, quantize, quantize_weight, remove_blocks, weight_bytes
from anydit.compress.quantize import PeakRecorder
from anydit.data.digits import digits_modalities
from anydit.model.quant import QuantLinear, pack_int4, unpack_int4
from anydit.train.optim import bf16_is_fast, resolve_precision

CFG = anydit.SampleConfig(steps=4)
TASK = {"image": "generate", "label": 3}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = anydit.MMDiT(digits_modalities(), anydit.preset("debug", depth=2))
    perturb(m, seed=1, std=0.05)
    return m


@pytest.mark.parametrize("bits", [8, 4])
def test_weights_round_to_the_nearest_level_per_output_channel(bits):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 32, generator=g) * torch.logspace(-2, 1, 16)[:, None]  # ranges differ
    q, scale = quantize_weight(w, bits)
    top = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and int(q.abs().max()) == top
    torch.testing.assert_close(scale, w.abs().amax(1) / top)  # one scale per output channel
    err = (w - q.float() * scale[:, None]).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()  # the nearest level, everywhere
    if bits == 4:
        assert torch.equal(unpack_int4(pack_int4(q)), q)
        assert pack_int4(q).shape == (16, 16) and pack_int4(q).dtype == torch.uint8


def test_a8_layer_computes_the_fake_quantized_product_exactly():
    """QuantLinear's integer path equals (round(x / s) s) (q s_w)^T + b in float64."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(8, 24, generator=g), torch.randn(8, generator=g)
    layer = QuantLinear(24, 8, 8, 8, "shared", None)
    q, scale = quantize_weight(w, 8)
    layer.weight_q.copy_(q)
    layer.weight_scale.copy_(scale)
    layer.bias.data.copy_(b)
    layer.act_scale.fill_(0.02)
    x = torch.randn(3, 5, 24, generator=g)
    xq = (x.double() / 0.02).round().clamp(-127, 127) * 0.02
    want = xq @ (q.double() * scale.double()[:, None]).T + b.double()
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [8, 4])
def test_the_int8_kernel_and_the_float_path_give_the_same_numbers(monkeypatch, bits):
    """``torch._int_mm`` (int32 sums) where it wins, float32 sums elsewhere: bit-equal, with a
    per-sample scale (time buckets) and a batch of tokens."""
    import anydit.model.quant as quant

    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 64, generator=g)
    layer = QuantLinear(64, 16, bits, 8, "shared", None)
    q, scale = quantize_weight(w, bits)
    layer.weight_q.copy_(pack_int4(q) if bits == 4 else q)
    layer.weight_scale.copy_(scale)
    layer.act_scale.fill_(0.03)
    x = torch.randn(4, 9, 64, generator=g)
    measure = quant.int8_matmul_wins.__wrapped__  # the measurement itself, uncached
    out = {}
    for on in (True, False):
        monkeypatch.setattr(quant, "int8_matmul_wins", lambda on=on: on)
        out[on] = layer(x)
    assert torch.equal(out[True], out[False])
    assert isinstance(measure(), bool)


def test_calibration_keeps_one_scale_per_time_bucket(model):
    """Inputs 10x larger at t = 0.1 than at t = 0.9: the image embedding's peaks per bucket
    are exactly the inputs' largest magnitudes at those times."""
    recorder = PeakRecorder(model, buckets=8)
    g = torch.Generator().manual_seed(0)
    tokens = {n: m.tokenize(m.placeholder(2)) for n, m in model.modalities.items()}
    image = model.modalities["image"]
    loud = torch.randn(2, image.num_tokens, image.token_dim, generator=g) * 10
    quiet = torch.randn(2, image.num_tokens, image.token_dim, generator=g)
    times = {n: torch.ones(2) for n in model.names}
    with torch.no_grad():
        model({**tokens, "image": loud}, {**times, "image": torch.full((2,), 0.1)})
        model({**tokens, "image": quiet}, {**times, "image": torch.full((2,), 0.9)})
    peaks = recorder.close()["embed.image"]
    assert peaks[0] == loud.abs().max() and peaks[7] == quiet.abs().max()
    assert peaks[1:7].eq(0).all() and peaks[8] == 0  # never seen; t = 1 is its own bucket
    # on the model's own trajectories, scales really differ between times
    config = anydit.SampleConfig(steps=8)
    table = calibrate(model, rounds=1, n=4, config=config)["embed.image"]  # the image state
    seen = table[table > 0]
    assert len(seen) == 9 and seen.max() > 1.1 * seen.min()  # every bucket, not one scale


SCHEMES = [("w8", 0.01, 0.34), ("w8a8", 0.02, 0.34), ("w4a8", 0.08, 0.22)]  # bound, bytes


@pytest.mark.parametrize(("scheme", "bound", "ratio"), SCHEMES)
def test_quantized_models_sample_close_and_round_trip(model, tmp_path, scheme, bound, ratio):
    ref = anydit.sample(model, TASK, n=8, seed=0, config=CFG)
    q = quantize(model, scheme, rounds=1, n=8, config=CFG)
    out = anydit.sample(q, TASK, n=8, seed=0, config=CFG)
    err = float((out["image"] - ref["image"]).norm() / ref["image"].norm())
    assert 0 < err < bound, err
    assert weight_bytes(q) <= ratio * weight_bytes(model)
    path = anydit.save_model(q, tmp_path / "q.safetensors")
    again = anydit.sample(anydit.load_model(path), TASK, n=8, seed=0, config=CFG)
    assert torch.equal(again["image"], out["image"])
    assert json.loads(anydit.model.file.read_metadata(path)["quantization"])["scheme"] == scheme
    with pytest.raises(ValueError, match="quantized already"):
        quantize(q, scheme)


def _tiny_sd3(layers: int):
    """diffusers' SD3 transformer at a debug size, random weights, imported."""
    diffusers = pytest.importorskip("diffusers")
    from conftest import randomize

    tiny = dict(
        sample_size=8, patch_size=2, in_channels=4, num_layers=layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16,
    )  # fmt: skip
    theirs = diffusers.SD3Transformer2DModel(**tiny).eval()
    randomize(theirs, std=0.2)
    return anydit.import_diffusers(theirs, "sd3", height=8, width=8, text_tokens=6)


def test_an_imported_sd3_quantizes_within_its_bound():
    ours = _tiny_sd3(layers=2)
    g = torch.Generator().manual_seed(0)
    task = {
        "image": "generate",
        "text": torch.randn(2, 6, 16, generator=g),
        "pooled": torch.randn(2, 8, generator=g),
    }
    ref = anydit.sample(ours, task, n=2, seed=0, config=CFG)
    for scheme, bound in (("w8", 0.01), ("w8a8", 0.03)):
        q = quantize(ours, scheme, rounds=1, n=4, config=CFG)
        out = anydit.sample(q, task, n=2, seed=0, config=CFG)
        assert float((out["image"] - ref["image"]).norm() / ref["image"].norm()) < bound


def test_pruning_nothing_changes_nothing_and_blocks_are_renumbered(model):
    same = remove_blocks(model, [])
    a = anydit.sample(model, TASK, n=4, seed=1, config=CFG)
    assert torch.equal(a["image"], anydit.sample(same, TASK, n=4, seed=1, config=CFG)["image"])
    one = remove_blocks(model, [0])
    assert one.cfg.depth == 1
    assert torch.equal(one.state_dict()["blocks.0.streams.image.qkv.weight"],
                       model.state_dict()["blocks.1.streams.image.qkv.weight"])  # fmt: skip
    with pytest.raises(ValueError, match="the model has 2 blocks; cannot remove"):
        remove_blocks(model, [0, 1])
    with pytest.raises(ValueError, match="cannot remove \\[5\\]"):
        remove_blocks(model, [5])


def test_removing_an_imported_model_s_last_block_keeps_it_exact_where_it_can():
    """The new last block's condition streams only lend keys and values (SD3): their unused
    weights go, their modulation keeps (shift, scale) -- and K = 0 is the identity."""
    ours = _tiny_sd3(layers=3)
    pruned = remove_blocks(ours, [2])
    assert pruned.cfg.depth == 2
    assert pruned.blocks[1].streams["text"].pre_only and not hasattr(
        pruned.blocks[1].streams["text"], "mlp"
    )


@pytest.mark.slow
def test_cli_quantize_and_prune_a_run(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {source: digits}\nmodel: {preset: debug, depth: 3}\n"
        "train: {steps: 4, batch_size: 16, checkpoint_every: 4, tensorboard: false}\n"
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = tmp_path / "q.safetensors"
    args = ["quantize", str(tmp_path / "run"), "--scheme", "w8a8", "--calibrate", "1"]
    assert main([*args, "--out", str(out)]) == 0
    assert "w8a8" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(out), "--generate", "image", "--given", "label=3",
                 "-n", "2", "--steps", "2", "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    args = ["prune", str(tmp_path / "run"), "--remove", "1", "--steps", "3", "--batch-size", "8"]
    assert main([*args, "--out", str(tmp_path / "p")]) == 0
    report = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert len(report["removed"]) == 1 and report["distill_steps"] == 3
    assert report["precision"] == resolve_precision("auto")  # the default
    other = "fp32" if report["precision"] == "bf16" else "bf16"
    assert main([*args, "--precision", other, "--out", str(tmp_path / "p1")]) == 0
    changed = json.loads((tmp_path / "p1" / "prune.json").read_text())
    assert changed["precision"] == other
    assert changed["distill_loss"][1] != report["distill_loss"][1]  # other arithmetic
    assert (report["lr"], report["layer_weight"]) == (1e-3, 0.1)
    assert main([*args, "--layer-weight", "0", "--lr", "1e-4", "--out", str(tmp_path / "p0")]) == 0
    plain = json.loads((tmp_path / "p0" / "prune.json").read_text())
    assert (plain["lr"], plain["layer_weight"]) == (1e-4, 0.0)
    assert plain["distill_loss"][0] < report["distill_loss"][0]  # no hidden-state term
    assert anydit.load_model(tmp_path / "p" / "model.safetensors").cfg.depth == 2
    assert (
        main(["eval", "--checkpoint", str(tmp_path / "p"), "--n-per-class", "1", "--steps", "1"])
        == 0
    )
    negative = ["prune", str(tmp_path / "run"), "--remove", "1", "--layer-weight", "-1"]
    assert main([*negative, "--out", str(tmp_path / "p3")]) == 2
    assert "expected lr > 0, layer_weight >= 0 and task_share in [0, 1]" in capsys.readouterr().err
    bad = ["prune", str(tmp_path / "run"), "--remove", "3", "--steps", "1"]
    assert main([*bad, "--out", str(tmp_path / "p2")]) == 2
    assert "expected 0 <= remove < 3" in capsys.readouterr().err
    chosen = ["prune", str(tmp_path / "run"), "--blocks", "0", "--steps", "2", "--processes", "2"]
    assert main([*chosen, "--batch-size", "8", "--out", str(tmp_path / "p4")]) == 0
    report = json.loads((tmp_path / "p4" / "prune.json").read_text())
    assert report["removed"] == [0] and report["processes"] == 2 and report["distill_steps"] == 2
    assert main([*chosen[:3], "5", "--out", str(tmp_path / "p5")]) == 2
    assert "prune: blocks: expected indices in 0..2" in capsys.readouterr().err


def test_auto_precision_is_bf16_exactly_where_it_is_native():
    assert resolve_precision("auto") == ("bf16" if bf16_is_fast() else "fp32")
    assert resolve_precision("auto", "cuda") == "bf16"
    assert (resolve_precision("fp32"), resolve_precision("bf16")) == ("fp32", "bf16")
