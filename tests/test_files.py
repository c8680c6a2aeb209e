"""Human files in and out: reading ``--given`` values, writing PNG / WAV / JSONL / npz."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anydit
from anydit.data.digits import digits_modalities
from anydit.modalities import build_modality
from anydit.modalities.logmel import logmel_image, resample, write_wav
from anydit.modalities.outputs import write_outputs
from anydit.modalities.pictures import image_grid, to_uint8_image, write_png


@pytest.fixture(scope="module")
def mods() -> dict:
    """The digits modalities plus a vector and an RGB image."""
    cfgs = [
        *digits_modalities("bytes"),
        anydit.ModalityConfig("vec", "vector", (3,)),
        anydit.ModalityConfig("rgb", "image", (3, 4, 6), patch=2),
    ]
    return {c.name: build_modality(c) for c in cfgs}


def _image(seed: int = 0, shape=(1, 8, 8)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", ["image", "rgb"])
def test_png_round_trip(tmp_path: Path, mods: dict, name: str) -> None:
    m = mods[name]
    x = _image(1, m.shape)
    write_png(tmp_path / "x.png", x)
    back = m.read_value(str(tmp_path / "x.png"), None)
    assert back.dtype == torch.float32 and back.shape == m.shape
    assert (back - x).abs().max() <= 2 / 255
    assert m.prepare(back, 3).shape == (3, *m.shape)


def test_png_upscaled_and_grid(tmp_path: Path) -> None:
    x = _image()
    write_png(tmp_path / "big.png", x, scale=8)
    with Image.open(tmp_path / "big.png") as img:
        assert img.size == (64, 64) and img.mode == "L"
    grid = image_grid(torch.stack([x] * 5), nrow=3, scale=2, pad=1)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 17 + 1, 3 * 17 + 1)
    assert to_uint8_image(torch.full((3, 2, 2), 1.0)).shape == (2, 2, 3)


def test_wrong_size_png_names_file_and_sizes(tmp_path: Path, mods: dict) -> None:
    path = tmp_path / "big.png"
    write_png(path, _image(), scale=2)
    with pytest.raises(ValueError, match=r"big\.png.*expected 8x8.*found 16x16"):
        mods["image"].read_value(str(path), None)


def test_corrupt_png_names_file(tmp_path: Path, mods: dict) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ValueError, match=r"broken\.png.*'image'.*expected"):
        mods["image"].read_value(str(path), None)


def test_missing_file(tmp_path: Path, mods: dict) -> None:
    missing = str(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match=r"nope\.png.*'image'.*does not exist"):
        mods["image"].read_value(missing, None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mods["label"].read_value("some/dir/seven", None)


def test_wav_gives_logmel_of_the_right_shape(tmp_path: Path, mods: dict) -> None:
    m = mods["audio"]
    params = m.mel
    t = torch.arange(params.sample_rate // 2) / params.sample_rate
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t)  # half a second, shorter than 32 frames
    write_wav(tmp_path / "a.wav", tone, params.sample_rate)
    mel = m.read_value(str(tmp_path / "a.wav"), None)
    assert mel.shape == m.shape and mel.min() >= -1 and mel.max() <= 1
    write_wav(tmp_path / "b.wav", tone[::2], params.sample_rate // 2)  # resampled on reading
    mel_b = m.read_value(str(tmp_path / "b.wav"), None)
    assert mel_b.shape == m.shape
    assert mel.argmax(dim=1).mode().values == mel_b.argmax(dim=1).mode().values  # same band


def test_resample_keeps_a_tone() -> None:
    t = torch.arange(8000) / 8000
    up = resample(torch.sin(2 * math.pi * 100 * t), 8000, 16000)
    want = torch.sin(2 * math.pi * 100 * torch.arange(16000) / 16000)
    assert up.shape == (16000,) and (up - want).abs().max() < 1e-3


def test_npy_one_value_and_one_per_sample(tmp_path: Path, mods: dict) -> None:
    m = mods["image"]
    one, many = _image(0).numpy(), torch.stack([_image(i) for i in range(4)]).numpy()
    np.save(tmp_path / "one.npy", one)
    np.save(tmp_path / "many.npy", many)
    assert m.prepare(m.read_value(str(tmp_path / "one.npy"), 4), 4).shape == (4, 1, 8, 8)
    x = m.read_value(str(tmp_path / "many.npy"), 4)
    assert torch.equal(m.prepare(x, 4), torch.from_numpy(many))
    with pytest.raises(ValueError, match=r"many\.npy.*'image'"):
        m.read_value(str(tmp_path / "many.npy"), 3)
    np.save(tmp_path / "labels.npy", np.arange(4))
    ids = mods["label"].read_value(str(tmp_path / "labels.npy"), 4)
    assert mods["label"].prepare(ids, 4).tolist() == [0, 1, 2, 3]


def test_literals(tmp_path: Path, mods: dict) -> None:
    label = mods["label"]
    assert label.prepare(label.read_value("seven", 2), 2).tolist() == [7, 7]
    assert label.prepare(label.read_value("3", 1), 1).tolist() == [3]
    text = mods["text"]
    assert text.read_value("the digit 7", 1) == "the digit 7"
    assert text.decode(text.prepare(text.read_value("a/b", 1), 1)) == ["a/b"]
    (tmp_path / "cap.txt").write_text("  a handwritten two\n")
    assert text.read_value(str(tmp_path / "cap.txt"), 1) == "a handwritten two"
    vec = mods["vec"].read_value("0.5, -1,2e0", 1)
    assert vec.tolist() == [0.5, -1.0, 2.0] and vec.dtype == torch.float32
    with pytest.raises(ValueError, match=r"'vec'.*comma-separated numbers.*'1,x'"):
        mods["vec"].read_value("1,x", 1)
    with pytest.raises(ValueError, match=r"'image'.*expected a file"):
        mods["image"].read_value("seven", 1)


def test_extension_that_does_not_fit_the_kind(tmp_path: Path, mods: dict) -> None:
    (tmp_path / "x.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'\.wav'.*'image' of kind 'image'"):
        mods["image"].read_value(str(tmp_path / "x.wav"), 1)
    write_png(tmp_path / "x.png", _image())
    with pytest.raises(ValueError, match=r"'\.png'.*'audio' of kind 'sequence'"):
        mods["audio"].read_value(str(tmp_path / "x.png"), 1)


@pytest.fixture(scope="module")
def model() -> anydit.MMDiT:
    torch.manual_seed(0)
    return anydit.MMDiT(digits_modalities(), anydit.preset("debug"))


def test_write_outputs(tmp_path: Path, model: anydit.MMDiT) -> None:
    task = {"image": "generate", "audio": "generate", "text": "generate", "label": [1, 2, 3]}
    samples = anydit.sample(model, task, n=3, steps=2)
    written = write_outputs(tmp_path / "out", model.modalities, samples, prefix="run_")
    out = tmp_path / "out"
    for name in ("run_image_00002.png", "run_image_grid.png", "run_audio_00000.wav"):
        assert (out / name).is_file(), name
    assert (out / "run_audio_grid.png").is_file()
    with Image.open(out / "run_image_00000.png") as img:
        assert img.size == (64, 64)
    with Image.open(out / "run_audio_grid.png") as img:  # spectrograms: mels vertical
        assert img.height > 32
    labels = [json.loads(line) for line in (out / "run_label.jsonl").read_text().splitlines()]
    assert labels[2] == {"index": 2, "id": 3, "name": "three"}
    texts = [json.loads(line) for line in (out / "run_text.jsonl").read_text().splitlines()]
    assert len(texts) == 3 and set(texts[0]) == {"index", "text"}
    with np.load(out / "run_samples.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(samples)
        for name in model.modalities:
            np.testing.assert_array_equal(npz[name], samples[name].numpy())
    assert [r["text"] for r in texts] == model.modalities["text"].decode(samples["text"])
    assert all(Path(p).is_file() for paths in written.values() for p in paths)
    assert written["samples.npz"] == [str(out / "run_samples.npz")]


def test_logmel_image_puts_low_frequencies_at_the_bottom() -> None:
    mel = torch.full((4, 6), -1.0)
    mel[:, 0] = 1.0  # lowest band loud
    pic = logmel_image(mel)
    assert pic.shape == (1, 6, 4) and bool((pic[0, -1] == 1).all())


def test_unwritable_out_dir(tmp_path: Path, model: anydit.MMDiT) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    samples = {"label": torch.tensor([1, 2])}
    with pytest.raises(OSError, match="file/out"):
        write_outputs(blocker / "out", model.modalities, samples)
