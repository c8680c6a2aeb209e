"""Start from a pretrained MM-DiT: import, add a stream, freeze, adapt with LoRA, train, save,
export. The backbone is diffusers' tiny SD3.5 test configuration with random weights."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import anydit
from anydit.cli import main
from anydit.config import ModalityConfig
from anydit.model.extend import extend
from anydit.run_config import config_from_tree
from anydit.train.loop import train

diffusers = pytest.importorskip("diffusers")

from test_interop import SD35_TINY, _randomize  # noqa: E402

AUDIO = ModalityConfig("audio", "sequence", (16, 8), patch=2)


@pytest.fixture
def sd35(tmp_path):
    """A diffusers SD3.5 transformer folder (random weights) and its import at 8 x 8 latents."""
    theirs = diffusers.SD3Transformer2DModel(**{**SD35_TINY, "num_layers": 2}).eval()
    _randomize(theirs, 0)
    theirs.save_pretrained(tmp_path / "sd35")
    return theirs, tmp_path / "sd35"


def test_extend_keeps_every_imported_weight(sd35):
    theirs, folder = sd35
    base = anydit.import_diffusers(folder, "sd3", height=8, width=8, text_tokens=10)
    grown = extend(base, [AUDIO])
    assert grown.names == ["audio", "image", "pooled", "text"]
    assert grown.outputs == ["audio", "image"]
    old = base.state_dict()
    new = grown.state_dict()
    for k, v in old.items():
        assert torch.equal(new[k], v), k
    fresh = sorted({grown.stream_of(k) for k in set(new) - set(old)})
    assert fresh == ["audio"]
    # the new stream joins the attention (so the image prediction moves a little) and has
    # its own output
    g = torch.Generator().manual_seed(0)
    raw = {n: torch.randn(2, *m.shape, generator=g) for n, m in grown.modalities.items()}
    tokens = {n: m.tokenize(raw[n]) for n, m in grown.modalities.items()}
    times = {n: torch.ones(2) for n in grown.names}
    times["image"] = times["audio"] = torch.tensor([0.3, 0.6])
    with torch.no_grad():
        out = grown(tokens, times)
        alone = base(
            {n: v for n, v in tokens.items() if n != "audio"},
            {n: v for n, v in times.items() if n != "audio"},
        )
    assert out["audio"].shape == (2, 8, 16) and out["image"].shape == (2, 64, 4)
    assert (out["audio"] == 0).all()  # a zero-initialised output layer
    assert not torch.allclose(out["image"], alone["image"])  # audio tokens joined the attention


def _arrays(tmp_path, n=12):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(
        path,
        image=rng.standard_normal((n, 4, 8, 8)).astype(np.float32),
        text=rng.standard_normal((n, 10, 32)).astype(np.float32),
        pooled=rng.standard_normal((n, 64)).astype(np.float32),
        audio=rng.standard_normal((n, 16, 8)).astype(np.float32),
    )
    return path


@pytest.mark.slow
def test_train_a_new_stream_on_a_frozen_imported_backbone(sd35, tmp_path):
    """The README recipe in miniature: anydit import -> add audio -> freeze the backbone
    (LoRA on the image stream) -> train -> the backbone is bit-identical, the rest moved."""
    _, folder = sd35
    model_file, run_yaml = tmp_path / "base.safetensors", tmp_path / "run.yaml"
    assert (
        main(
            [
                "import", "sd3", str(folder), "--out", str(model_file), "--height", "8",
                "--width", "8", "--text-tokens", "10", "--config-out", str(run_yaml),
            ]
        )
        == 0
    )  # fmt: skip
    import yaml

    tree = yaml.safe_load(run_yaml.read_text())
    assert tree["train"]["init"] == str(model_file)
    tree["modalities"].append({"name": "audio", "kind": "sequence", "shape": [16, 8], "patch": 2})
    tree["model"].update(lora_rank=2, lora_streams=["image"])
    tree["data"] = {"source": "arrays", "path": str(_arrays(tmp_path))}
    tree["train"].update(
        sample_every=3,  # the sample grid of a model with condition-only streams
        steps=3,
        batch_size=4,
        warmup=1,
        ema=0.0,
        precision="fp32",
        freeze=["image", "text", "pooled"],
    )
    cfg = config_from_tree(tree)
    result = train(cfg, tmp_path / "run", progress=False)
    before = load_file(str(model_file))
    after = load_file(str(result.model_path))
    for k, v in before.items():
        assert torch.equal(after[k], v), f"frozen weight {k} moved"
    # latents (codec "latent") cannot be shown, so the sample grid writes no picture; the
    # joint sampling it runs, with condition-only streams dropped, works
    assert not (tmp_path / "run" / "samples").exists()
    assert result.model_path.is_file()
    moved = [
        k
        for k in after
        if k not in before and not torch.equal(after[k], torch.zeros_like(after[k]))
    ]
    assert any(k.startswith("embed.audio") for k in moved)
    assert any(".lora_b" in k for k in moved)  # the adapters trained (they start at zero)
    loaded = anydit.load_model(result.model_path)
    assert loaded.outputs == ["audio", "image"]
    both = anydit.sample(loaded, {n: "generate" for n in loaded.outputs}, n=2, steps=2)
    assert both["image"].shape == (2, 4, 8, 8) and torch.isfinite(both["audio"]).all()
    assert (
        json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] >= 1
    )

    # export the adapted backbone: LoRA merged; the audio stream has no place in SD3
    with pytest.raises(ValueError, match="modality 'audio' has no place"):
        anydit.export_diffusers(loaded, "sd3")


def test_cli_import_export_round_trip(sd35, tmp_path):
    theirs, folder = sd35
    out = tmp_path / "m.safetensors"
    assert main(["import", "sd3", str(folder), "--out", str(out)]) == 0
    assert main(["export", "sd3", str(out), "--out", str(tmp_path / "back")]) == 0
    back = load_file(str(tmp_path / "back" / "diffusion_pytorch_model.safetensors"))
    ref = theirs.state_dict()
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["_class_name"] == "SD3Transformer2DModel" and cfg["num_layers"] == 2


def test_cli_import_errors_are_one_line(sd35, tmp_path, capsys):
    _, folder = sd35
    (folder / "config.json").write_text(json.dumps({**SD35_TINY, "num_layers": 3}))
    assert main(["import", "sd3", str(folder), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert re.search(r"missing key\(s\):.*transformer_blocks\.2\.", err)
    assert (
        "transformer_blocks.1.norm1_context.linear.weight: expected (192, 32), found (64, 32)"
        in err
    )


def test_init_refuses_weights_it_has_no_place_for(sd35, tmp_path):
    _, folder = sd35
    base = anydit.import_diffusers(folder, "sd3", height=8, width=8, text_tokens=10)
    path = anydit.save_model(base, tmp_path / "b.safetensors")
    mods = [m for m in base.modality_configs if m.name != "pooled"]
    smaller = anydit.MMDiT(mods, base.cfg)
    from anydit.model.extend import init_from_file

    with pytest.raises(ValueError, match=r"no place in this model: \['pooled_embed.pooled"):
        init_from_file(smaller, path)


def test_export_merges_lora_into_the_backbone(sd35):
    """An adapted (not extended) backbone exports as plain diffusers weights computing the
    same prediction."""
    theirs, _ = sd35
    base = anydit.import_diffusers(theirs, "sd3", height=8, width=8, text_tokens=10)
    adapted = extend(base, [], lora_rank=2, lora_streams=("image", "text"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if ".lora_b" in name:
                p.normal_(std=0.05, generator=g)
    raw = {n: torch.randn(2, *m.shape, generator=g) for n, m in adapted.modalities.items()}
    tokens = {n: m.tokenize(raw[n]) for n, m in adapted.modalities.items()}
    times = {n: torch.ones(2) for n in adapted.names}
    times["image"] = torch.tensor([0.2, 0.7])
    cfg, state = anydit.export_diffusers(adapted, "sd3", 32)
    d = diffusers.SD3Transformer2DModel(**{k: v for k, v in cfg.items() if k != "_class_name"})
    d.load_state_dict(state)  # a diffusers model of the exported config and weights
    back = anydit.import_diffusers(d.eval(), "sd3", height=8, width=8, text_tokens=10)
    with torch.no_grad():
        want = adapted(tokens, times)["image"]
        got = back(tokens, times)["image"]
        plain = base(tokens, times)["image"]
    assert not torch.allclose(want, plain, atol=1e-4)  # the adapters do something
    assert torch.allclose(got, want, atol=1e-5)


def test_new_streams_start_silent_in_the_old_streams_conditioning(sd35):
    theirs, _ = sd35
    base = anydit.import_diffusers(theirs, "sd3", height=8, width=8, text_tokens=10)
    guidance = ModalityConfig("scale", "vector", (1,), pooled="time")
    grown = extend(base, [AUDIO, guidance])
    g = torch.Generator().manual_seed(0)
    raw = {n: torch.randn(2, *m.shape, generator=g) for n, m in grown.modalities.items()}
    tokens = {n: m.tokenize(raw[n]) for n, m in grown.modalities.items()}
    times = {n: torch.rand(2, generator=g) for n in grown.names}
    with torch.no_grad():
        x = {n: grown.embed[n](tokens[n]) for n in grown.streams}
        pooled = {n: tokens[n] for n in grown.pooled_embed}
        c_new = grown.conditioning(times, x, pooled)
        old_times = {n: times[n] for n in base.names}
        c_old = base.conditioning(old_times, x, {"pooled": tokens["pooled"]})
    assert torch.equal(c_new["image"], c_old["image"])  # audio's time and the scale add 0


def test_export_refuses_what_the_layout_cannot_hold(sd35):
    import dataclasses

    from anydit.interop.weights import WeightsError

    theirs, _ = sd35
    base = anydit.import_diffusers(theirs, "sd3", height=8, width=8, text_tokens=10)
    other = anydit.MMDiT(
        base.modality_configs, dataclasses.replace(base.cfg, conditioning="summary")
    )
    with pytest.raises(
        WeightsError, match=r"settings differ.*'conditioning': \('summary', 'sum'\)"
    ):
        anydit.export_diffusers(other, "sd3")
    pooled = anydit.MMDiT(base.modality_configs, dataclasses.replace(base.cfg, pooled_cond=True))
    with pytest.raises(WeightsError, match="pooled_cond"):
        anydit.export_diffusers(pooled, "sd3")
    bf16 = anydit.import_diffusers(theirs, "sd3", height=8, width=8, text_tokens=10)
    _, state = anydit.export_diffusers(bf16.to(torch.bfloat16), "sd3")
    assert state["proj_out.weight"].dtype == torch.bfloat16
