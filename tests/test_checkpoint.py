import pytest
import torch
from conftest import four_modalities, randomize

import anydit


def test_save_load_round_trip(tmp_path):
    mods, cfg = four_modalities(single_depth=1)
    model = anydit.MMDiT(mods, cfg)
    randomize(model)
    path = anydit.save_model(model, tmp_path / "m.safetensors")
    loaded = anydit.load_model(path)
    assert loaded.cfg == model.cfg and loaded.modality_configs == model.modality_configs
    a = anydit.sample(model, {"image": "generate", "label": 1}, n=2, steps=2)
    b = anydit.sample(loaded, {"image": "generate", "label": 1}, n=2, steps=2)
    assert torch.equal(a["image"], b["image"])
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not list(tmp_path.glob("*.tmp"))


def test_damaged_checkpoints_are_named(tmp_path):
    mods, cfg = four_modalities()
    path = anydit.save_model(anydit.MMDiT(mods, cfg), tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.safetensors does not exist"):
        anydit.load_model(tmp_path / "nope.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="checkpoint .*cut.safetensors"):
        anydit.load_model(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        anydit.load_model(junk)
