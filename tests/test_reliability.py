"""Hostile and careless input: each defect found by trying to break anydit, reproduced.

Every test here failed (a hang, a traceback, a silently wrong value, a leaked file) before the
fix it guards.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import anydit
from anydit.cli import main
from anydit.config import ConfigError, DataConfig, ModalityConfig
from anydit.data.shards import ShardStream, pack
from anydit.data.sources import build_dataset, make_collate, open_training_data
from anydit.errors import DataError
from anydit.run_config import config_from_tree
from anydit.train.checkpoint import latest_checkpoint
from anydit.train.loop import train

TREE = {
    "data": {"source": "digits"},
    "model": {"preset": "debug", "depth": 1},
    "train": {
        "steps": 4,
        "batch_size": 8,
        "lr": 2e-3,
        "warmup": 1,
        "log_every": 1,
        "checkpoint_every": 2,
        "precision": "fp32",
        "tensorboard": False,
    },
}


def _cfg(**train):
    tree = json.loads(json.dumps(TREE))
    tree["train"].update(train)
    return config_from_tree(tree)


def _weights(path):
    return anydit.load_model(path).state_dict()


def _png(path: Path, value: int = 128, size=(8, 8)) -> Path:
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


def _mods(**label):
    return [
        ModalityConfig("image", "image", (1, 8, 8), patch=2),
        ModalityConfig("label", "label", **label),
        ModalityConfig("text", "text", (16,)),
    ]


MODS = _mods(classes=["a", "b"])


# --- 1. a kill inside a checkpoint's write -------------------------------------------------
@pytest.mark.slow
def test_kill_inside_state_write_never_blocks_resume(tmp_path):
    """SIGKILL halfway through writing step 4's state.pt: the torn folder is never a
    candidate, it is cleaned up, and the resumed run ends where the straight run ends."""
    straight = tmp_path / "straight"
    train(_cfg(), straight, progress=False)
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import io, os, signal, torch
        import anydit.train.checkpoint as C
        from anydit.run_config import config_from_tree
        from anydit.train.loop import train
        save = torch.save
        def torn_save(obj, path, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == 4:
                buf = io.BytesIO()
                save(obj, buf)
                with open(path, "wb") as f:  # half the bytes reach the file, then the kill
                    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, path, *a, **k)
        C.torch.save = torn_save
        train(config_from_tree({TREE!r}), {str(out)!r}, progress=False)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    torn = out / "checkpoints" / "step_00000004.tmp"
    assert (torn / "state.pt").is_file()  # a partial state.pt, as a full disk would leave
    assert latest_checkpoint(out).name == "step_00000002"
    result = train(_cfg(), out, progress=False)
    assert result.step == 4 and not torn.exists()
    assert [r["step"] for r in result.history] == [3, 4]  # resumed from step 2
    a, b = _weights(straight / "model.safetensors"), _weights(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_files_are_flushed_before_the_rename(tmp_path, monkeypatch):
    import anydit.storage as storage

    synced: list[str] = []
    real = storage.os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(storage.os, "fsync", spy)
    train(_cfg(steps=2), tmp_path, progress=False)
    names = {Path(p).name for p in synced}
    assert {"state.pt", "model.safetensors", "ema.safetensors", "config.yaml"} <= names
    assert "step_00000002.tmp" in names and "checkpoints" in names  # folder entries too


def test_disk_full_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    import anydit.train.checkpoint as C

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 64 vs 0")

    monkeypatch.setattr(C.torch, "save", full)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(TREE))
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "step_00000002" in err and "MiB free" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "r" / "checkpoints").glob("*.tmp"))


# --- 2. shards whose stream is shorter than the index claims -------------------------------
def _manifest(tmp_path: Path, n: int = 12, bad: int | None = None) -> Path:
    rows = []
    for i in range(n):
        name = f"{i}.png"
        if i == bad:
            (tmp_path / name).write_bytes(b"not a png")
        else:
            _png(tmp_path / name, 10 * i)
        rows.append({"image": name, "label": ["a", "b"][i % 2], "text": f"n {i}"})
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _alarm(seconds: int):
    def hang(*_):
        raise TimeoutError(f"no progress in {seconds} s: training loops forever")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)


@pytest.mark.slow
def test_skipped_shard_samples_end_the_epoch_instead_of_looping(tmp_path):
    pack(_manifest(tmp_path, 12, bad=3), tmp_path / "shards", MODS, shard_size=4)
    tree = {
        "modalities": [vars(m) | {"shape": list(m.shape)} for m in _mods(classes=["a", "b"])],
        "data": {"source": "shards", "path": str(tmp_path / "shards"), "on_error": "skip"},
        "model": {"preset": "debug", "depth": 1},
        "train": {"steps": 7, "batch_size": 4, "checkpoint_every": 100, "tensorboard": False},
    }
    _alarm(120)
    try:
        result = train(config_from_tree(tree), tmp_path / "run", progress=False)
    finally:
        signal.alarm(0)
    # 11 readable samples = 2 batches of 4 per epoch (the index promised 3): 7 steps take four
    # epochs; the bad sample is met in each of the first three (the fourth may stop before it)
    assert result.step == 7 and result.skipped["unreadable file"] >= 3


def test_an_index_that_overstates_a_count_is_an_error(tmp_path):
    pack(_manifest(tmp_path, 8), tmp_path / "shards", MODS, shard_size=4)
    index = json.loads((tmp_path / "shards" / "shards.json").read_text())
    index["counts"][1] = 6
    (tmp_path / "shards" / "shards.json").write_text(json.dumps(index))
    stream = ShardStream(tmp_path / "shards", _mods(classes=["a", "b"]))
    with pytest.raises(
        DataError, match="says shard 'shard-000001.tar' holds 6 samples, it holds 4"
    ):
        list(stream)


# --- 3. --no-resume in a used folder -------------------------------------------------------
@pytest.mark.slow
def test_no_resume_moves_the_old_run_aside(tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(steps=6), out, progress=False)  # steps 2, 4, 6; keeps 4 and 6
    train(_cfg(steps=2, lr=1e-3), out, resume=False, progress=False)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    (aside,) = out.glob("replaced-*")
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == [
        "step_00000004",
        "step_00000006",
    ]
    assert "moved to" in capsys.readouterr().out
    # a rerun resumes the new run (2 steps done), not the old one
    result = train(_cfg(steps=4, lr=1e-3), out, progress=False, allow_changes=True)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 4 and steps == [1, 2, 3, 4]


# --- 4. resuming with another config; two runs on one folder -------------------------------
@pytest.mark.slow
def test_resume_refuses_a_changed_config_naming_each_change(tmp_path):
    out = tmp_path / "run"
    train(_cfg(steps=2), out, progress=False)
    with pytest.raises(ConfigError) as info:
        train(_cfg(steps=4, lr=5e-3, seed=3), out, progress=False)
    message = str(info.value)
    assert "train.lr: 0.002 -> 0.005" in message and "train.seed: 0 -> 3" in message
    assert "train.steps: 2 -> 4" in message and "--allow-changes" in message
    first = (out / "config.yaml").read_text()
    # a field that does not change what is computed may change freely
    train(_cfg(steps=2, log_every=5, checkpoint_every=7), out, progress=False)
    assert (out / "config.until_step_00000002.yaml").read_text() == first
    saved = (out / "config.yaml").read_text()
    # asked for: the new values apply and config.yaml keeps describing what ran
    result = train(_cfg(steps=4, lr=5e-3), out, progress=False, allow_changes=True)
    assert result.step == 4
    from anydit.train.optim import lr_lambda

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    new = _cfg(steps=4, lr=5e-3).train
    assert records[-2]["step"] == 3
    assert records[-2]["lr"] == pytest.approx(5e-3 * lr_lambda(new)(3))  # the new schedule
    assert (out / "config.until_step_00000002.2.yaml").read_text() == saved
    assert "lr: 0.005" in (out / "config.yaml").read_text()


def test_a_second_run_on_the_same_folder_refuses(tmp_path):
    holder = subprocess.Popen(  # another process holding the folder, as a running train would
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from anydit.train.folder import claim;"
            f"h = claim(Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OSError, match=f"output folder {tmp_path} is in use by another"):
            train(_cfg(steps=1), tmp_path, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert train(_cfg(steps=1, checkpoint_every=1), tmp_path, progress=False).step == 1


# --- 5. integer labels with classes from the data ------------------------------------------
@pytest.mark.parametrize("source", ["manifest", "arrays"])
def test_integer_labels_from_data_keep_their_names(tmp_path, source):
    values = [1, 2, 3, 2]
    if source == "manifest":
        for i in range(4):
            _png(tmp_path / f"{i}.png")
        rows = [{"image": f"{i}.png", "label": v} for i, v in enumerate(values)]
        (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        data = DataConfig("manifest", str(tmp_path / "m.jsonl"))
    else:
        np.savez(tmp_path / "a.npz", image=np.zeros((4, 1, 8, 8), np.float32), label=values)
        data = DataConfig("arrays", str(tmp_path / "a.npz"))
    mods = _mods()
    dataset, _ = open_training_data(data, mods, log=lambda *_: None)
    label = anydit.MMDiT(mods, anydit.preset("debug")).modalities["label"]
    assert label.cfg.classes == ("1", "2", "3")
    batch, _ = make_collate({"label": label})([dataset[i] for i in range(4)])
    assert label.decode(batch["label"]) == ["1", "2", "3", "2"]  # 1 trains as '1', not '2'
    # in Python, strings are names and integers ids: sample()'s output fed back means the same
    assert label.prepare("1").tolist() == [0] and label.prepare("3").tolist() == [2]
    assert label.prepare(torch.tensor([0, 2])).tolist() == [0, 2]
    with pytest.raises(ValueError, match="unknown label '0'"):
        label.prepare("0")  # not a name here, and no silent id
    model = anydit.MMDiT(mods, anydit.preset("debug"))
    out = anydit.sample(model, {"label": "generate"}, n=4, steps=2)
    again = anydit.sample(model, {"image": "generate", "label": out["label"]}, n=4, steps=2)
    assert label.decode(again["label"]) == label.decode(out["label"])


# --- 6. reserved modality names ------------------------------------------------------------
@pytest.mark.parametrize("name", ["key", "id", "shared"])
def test_reserved_modality_names_are_refused(name):
    with pytest.raises(ConfigError, match=f"modality '{name}'.name: expected a name other than"):
        ModalityConfig(name, "label", num_classes=3)


# --- 7. sampling arguments, validated once -------------------------------------------------
@pytest.mark.parametrize(
    "kw, want",
    [
        ({"guidance": float("nan")}, "sample.guidance: expected a finite number"),
        ({"guidance": float("inf")}, "sample.guidance: expected a finite number"),
        ({"guidance": {"label": float("nan")}}, "sample.guidance\\['label'\\]: expected a finite"),
        ({"steps": -3}, "sample.steps: expected an integer >= 1, got -3"),
        ({"steps": 0}, "sample.steps: expected an integer >= 1, got 0"),
        ({"steps": 2.5}, "sample.steps: expected an integer >= 1, got 2.5"),
        ({"solver": "rk4"}, "sample.solver"),
        ({"n": 0}, "n must be an integer >= 1"),
    ],
)
def test_sample_arguments_are_checked(kw, want):
    model = anydit.MMDiT(_mods(num_classes=3), anydit.preset("debug"))
    with pytest.raises(ValueError, match=want):
        anydit.sample(model, {"image": "generate", "label": 1}, **{"n": 2, **kw})


# --- 8. .npy images: uint8 are pixels, floats must be in range -----------------------------
def test_npy_images_are_scaled_like_png_and_checked(tmp_path):
    (image,) = [
        m
        for m in anydit.MMDiT(_mods(num_classes=3), anydit.preset("debug")).modalities.values()
        if m.kind == "image"
    ]
    pixels = np.arange(64, dtype=np.uint8).reshape(1, 8, 8) * 4
    np.save(tmp_path / "u8.npy", pixels)
    Image.fromarray(pixels[0]).save(tmp_path / "same.png")
    from_npy = image.read_value(str(tmp_path / "u8.npy"))
    torch.testing.assert_close(from_npy, image.read_value(str(tmp_path / "same.png")))
    np.save(tmp_path / "raw.npy", pixels.astype(np.float32))  # 0..252: not [-1, 1]
    with pytest.raises(ValueError, match="raw.npy.*pixel values must lie in \\[-1, 1\\].*252"):
        image.read_value(str(tmp_path / "raw.npy"))
    np.savez(tmp_path / "a.npz", image=pixels[None].astype(np.float32))
    with pytest.raises(DataError, match="sample 0, modality 'image'.*must lie in"):
        build_dataset(DataConfig("arrays", str(tmp_path / "a.npz")), "train", _mods(num_classes=3))[
            0
        ]


# --- 9. one rule for a text cell that names a file -----------------------------------------
def test_pack_and_manifest_read_a_text_cell_alike(tmp_path):
    (tmp_path / "secret.txt").write_text("the secret")
    _png(tmp_path / "0.png")
    rows = [
        {"image": "0.png", "label": "a", "text": "secret.txt"},
        {"image": "0.png", "label": "b"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    mods = _mods(classes=["a", "b"])
    direct = build_dataset(DataConfig("manifest", str(tmp_path / "m.jsonl")), "train", mods)[0]
    pack(tmp_path / "m.jsonl", tmp_path / "shards", mods)
    streamed = next(iter(ShardStream(tmp_path / "shards", mods)))
    assert direct["text"] == streamed["text"] == "secret.txt"  # a literal, never a file


# --- 10. local files outside the data folder -----------------------------------------------
def test_manifests_and_shards_never_reach_outside_their_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    outside = _png(tmp_path / "outside.png")
    _png(data / "in.png")
    mods = _mods(classes=["a", "b"])
    for cell in (str(outside), "../outside.png"):
        rows = [{"image": "in.png", "label": "a"}, {"image": cell, "label": "b"}]
        (data / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        ds = build_dataset(DataConfig("manifest", str(data / "m.jsonl")), "train", mods)
        with pytest.raises(DataError, match="row 2, column 'image': file .* lies outside"):
            ds[1]
        with pytest.raises(DataError, match="row 2, column 'image': file .* lies outside"):
            pack(data / "m.jsonl", tmp_path / "shards", mods)
        trusting = DataConfig("manifest", str(data / "m.jsonl"), allow_outside=True)
        assert build_dataset(trusting, "train", mods)[1]["image"].shape == (1, 8, 8)
    # a shard member is data: an absolute path in a text member stays text, and an image
    # member holding a path is not a file reference
    (data / "s").mkdir()
    mods = [*mods[:2], ModalityConfig("text", "text", (128,))]
    for member, want in (("text", None), ("image", "expected a file")):
        with tarfile.open(data / "s" / "shard-000000.tar", "w") as tar:
            payload = str(outside).encode()
            info = tarfile.TarInfo(f"00000000.{member}.txt")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        index = {"shards": ["shard-000000.tar"], "counts": [1]}
        (data / "s" / "shards.json").write_text(json.dumps(index))
        if want is None:
            assert list(ShardStream(data / "s", mods)) == [{"text": str(outside)}]
        else:
            with pytest.raises(DataError, match=f"sample 00000000: .*{want}"):
                list(ShardStream(data / "s", mods))
    for bad in ("../shard.tar", "/etc/passwd"):
        (data / "s" / "shards.json").write_text(json.dumps({"shards": [bad], "counts": [1]}))
        with pytest.raises(DataError, match="is not a file name inside"):
            ShardStream(data / "s", mods)


# --- 11. declared sizes are checked before decoding ----------------------------------------
def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares width x height (its data is an 8x8 image)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [50_000, 12_000])
def test_huge_declared_images_are_refused_before_decoding(tmp_path, side):
    image = anydit.MMDiT(_mods(num_classes=3), anydit.preset("debug")).modalities["image"]
    path = _png_declaring(tmp_path / "bomb.png", side, side)
    assert path.stat().st_size < 1000
    with pytest.raises(ValueError, match=r"bomb\.png.* is too large: it declares"):
        image.read_value(str(path))
    rows = [{"image": "bomb.png", "label": 1}, {"image": "ok.png", "label": 2}]
    _png(tmp_path / "ok.png")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig("manifest", str(tmp_path / "m.jsonl"), on_error="skip")
    dataset, problems = open_training_data(cfg, _mods(num_classes=3), log=lambda *_: None)
    assert len(dataset) == 1 and sum(problems.values()) == 1  # skipped, not a traceback


def test_audio_with_absurd_rate_or_length_is_refused(tmp_path):
    from anydit.data.digits import digits_modalities

    audio = anydit.modalities.build_modality(digits_modalities()[3])
    sf.write(tmp_path / "slow.wav", np.zeros(16, np.float32), 1)  # declares 1 Hz
    with pytest.raises(ValueError, match="sample rate 1 Hz is outside"):
        audio.read_value(str(tmp_path / "slow.wav"))
    sf.write(tmp_path / "long.wav", np.zeros(8000 * 70, np.int16), 8000, subtype="PCM_16")
    with pytest.raises(ValueError, match="long.wav.*too large: 70.0 s"):
        audio.read_value(str(tmp_path / "long.wav"))


def test_shards_are_read_in_memory_leaving_no_files(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    pack(_manifest(tmp_path, 4), tmp_path / "shards", MODS)
    items = list(ShardStream(tmp_path / "shards", _mods(classes=["a", "b"])))
    assert len(items) == 4 and not list(scratch.iterdir())


# --- 12. VAE folders: safetensors only -----------------------------------------------------
def test_vae_folder_with_pickled_weights_only_is_refused(tmp_path):
    pytest.importorskip("diffusers")
    from anydit.modalities.vae import LatentCodec

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="pickled .bin weights are never read"):
        LatentCodec(tmp_path)


# --- 13. one clear line for bad configs and files -----------------------------------------
@pytest.mark.parametrize(
    "tree, want",
    [
        ({"model": [1, 2]}, "model: expected a mapping of fields, got [1, 2]"),
        ({"model": 5}, "model: expected a mapping of fields, got 5"),
        ({"model": {"mlp_ratio": float("inf")}}, "model.mlp_ratio: expected a finite number"),
        ({"model": {"mlp_ratio": 1e-6}}, "model.mlp_ratio: expected a ratio giving an MLP"),
        ({"model": {"heads": 1e8}}, "model: these sizes (width"),
        ({"flow": {"logit_mean": float("nan")}}, "flow.logit_mean: expected a finite number"),
        ({"train": {"steps": True}}, "train.steps: expected an integer, got True"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
        (
            {"modalities": [{"name": "x", "kind": "image", "shape": [1, 8.7, 8]}]},
            "shape[1]: expected an integer, got 8.7",
        ),
        (
            {
                "modalities": [
                    {"name": "x", "kind": "vector", "shape": [2], "loss_weight": float("inf")}
                ]
            },
            "loss_weight: expected a finite number",
        ),
        (
            {
                "modalities": [
                    {
                        "name": "a",
                        "kind": "sequence",
                        "shape": [8, 32],
                        "codec": "logmel",
                        "codec_args": [1, 2],
                    }
                ]
            },
            "codec_args: expected a mapping, got [1, 2]",
        ),
        (
            {
                "modalities": [
                    {
                        "name": "a",
                        "kind": "sequence",
                        "shape": [8, 32],
                        "codec": "logmel",
                        "codec_args": {"hop": "x"},
                    }
                ]
            },
            "codec_args.hop: expected a number",
        ),
        (
            {"modalities": [{"name": "t", "kind": "text", "shape": [8], "clock": "c"}]},
            "'t'.clock: does not apply to kind 'text'",
        ),
        (
            {"modalities": [{"name": "i", "kind": "image", "shape": [1, 8, 8], "rate": 2.0}]},
            "'i'.rate: does not apply to kind 'image'",
        ),
        (
            {"modalities": [{"name": "i", "kind": "image", "shape": [1, 8, 8], "patch_t": 2}]},
            "'i'.patch_t: does not apply to kind 'image'",
        ),
        (
            {"modalities": [{"name": "v", "kind": "vector", "shape": [3], "tokenizer": "x.json"}]},
            "'v'.tokenizer: does not apply to kind 'vector'",
        ),
        (
            {"modalities": [{"name": "v", "kind": "vector", "shape": [3], "classes": ["a", "b"]}]},
            "'v'.classes: does not apply to kind 'vector'",
        ),
        (
            {
                "modalities": [
                    {"name": "p", "kind": "vector", "shape": [3], "pooled": "mlp", "width": 64},
                    {"name": "x", "kind": "vector", "shape": [2]},
                ]
            },
            "'p'.width: expected 0 for a pooled vector",
        ),
    ],
)
def test_bad_configs_get_one_line_naming_the_field(tmp_path, capsys, tree, want):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "digits"}, **tree}))
    assert main(["data", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_bad_overrides_get_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(TREE))
    for item, want in [
        ("model=5", "model: expected a mapping of fields, got 5"),
        ("model.heads.x=1", "model.heads: expected an integer, got {'x': 1}"),
        ("train.lr.x=1", "--set train.lr.x: train.lr is a value, not a section"),
        ("train..lr=1", "expected a dotted field name"),
    ]:
        assert main(["data", "check", str(cfg), "--set", item]) == 2
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err, err


def test_bad_files_get_one_line_naming_the_file(tmp_path, capsys):
    mods = [{"name": "image", "kind": "image", "shape": [1, 8, 8], "patch": 2}]
    np.savez(tmp_path / "ok.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:300])
    (tmp_path / "extra.csv").write_text("image\nok.png,surplus\n")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shards.json").write_text(json.dumps({"shards": ["a.tar"]}))
    nodots = tmp_path / "nodots"
    nodots.mkdir()
    with tarfile.open(nodots / "a.tar", "w") as tar:
        info = tarfile.TarInfo("sample")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (nodots / "shards.json").write_text(json.dumps({"shards": ["a.tar"], "counts": [1]}))
    for data, want in [
        ({"source": "arrays", "path": str(tmp_path / "cut.npz")}, "cut.npz"),
        (
            {"source": "manifest", "path": str(tmp_path / "extra.csv")},
            "line 2: 2 cells, but the header names 1",
        ),
        (
            {"source": "shards", "path": str(tmp_path / "shards")},
            "expected 'shards' (file names) and 'counts'",
        ),
        (
            {"source": "shards", "path": str(nodots)},
            "member 'sample' is not named KEY.MODALITY.EXT",
        ),
    ]:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps({"modalities": mods, "data": data}))
        code = main(["data", "check", str(cfg)])
        err = capsys.readouterr()
        text = err.err + err.out
        assert code in (1, 2) and want in text and "Traceback" not in text, text


def test_checkpoint_without_config_metadata_is_named(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file(
        {"w": torch.zeros(1)},
        str(tmp_path / "m.safetensors"),
        metadata={"format": "anydit-model-1"},
    )
    assert main(["sample", "--checkpoint", str(tmp_path / "m.safetensors"), "--generate", "x"]) == 2
    err = capsys.readouterr().err
    assert "lacks a readable 'modalities' entry" in err and "Traceback" not in err


def test_import_height_zero_is_refused(tmp_path, capsys):
    assert (
        main(["import", "sd3", str(tmp_path), "--out", str(tmp_path / "m"), "--height", "0"]) == 2
    )
    assert "--height: expected an integer >= 1, got 0" in capsys.readouterr().err


# --- 14. every LoRA adapter trains ----------------------------------------------------------
def test_every_lora_adapter_of_an_extended_model_trains():
    from conftest import random_batch

    from anydit.model.extend import extend
    from anydit.train import fit

    base = anydit.MMDiT(
        [
            ModalityConfig("image", "image", (1, 8, 8), patch=2),
            ModalityConfig("label", "label", num_classes=3),
        ],
        anydit.preset("debug", conditioning="sum", pooled_cond=False),
    )
    model = extend(base, [], lora_rank=2, lora_streams=("image",))
    before = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" in k}
    assert any(k.startswith("time_embed.image.mlp.2") for k in before)
    g = torch.Generator().manual_seed(0)
    fit(model, (random_batch(model, 16, i) for i in iter(int, 1)), 3, lr=1e-2)
    del g
    after = model.state_dict()
    still = [k for k in before if k.endswith("lora_b") and torch.equal(after[k], before[k])]
    assert not still, f"adapters that never trained: {still}"


# --- 15. options that need another option --------------------------------------------------
def test_p_partial_without_per_token_time_is_an_error_in_every_entry():
    mods = [ModalityConfig("x", "vector", (2,), p_partial=0.5)]
    with pytest.raises(ConfigError, match="'x'.p_partial: expected 0 unless model.per_token_time"):
        anydit.MMDiT(mods, anydit.preset("debug"))
    with pytest.raises(ConfigError, match="p_partial"):
        anydit.Config(modalities=mods, model=anydit.preset("debug"))


# --- found by review --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_with_no_full_batch_is_an_error_not_a_hang(tmp_path, workers):
    pack(_manifest(tmp_path, 8, bad=3), tmp_path / "shards", MODS, shard_size=4)
    tree = {
        "modalities": [vars(m) | {"shape": list(m.shape)} for m in MODS],
        "data": {"source": "shards", "path": str(tmp_path / "shards"), "on_error": "skip"},
        "model": {"preset": "debug", "depth": 1},
        "train": {"steps": 3, "batch_size": 8, "checkpoint_every": 100, "tensorboard": False},
    }
    tree["data"]["workers"] = workers
    _alarm(120)
    try:
        with pytest.raises(DataError, match="epoch 0 of the data gave no full batch of 8"):
            train(config_from_tree(tree), tmp_path / "run", progress=False)
    finally:
        signal.alarm(0)


@pytest.mark.slow
def test_loader_workers_do_not_drop_a_stream_s_batches(tmp_path):
    pack(_manifest(tmp_path, 8), tmp_path / "shards", MODS, shard_size=4)
    tree = {
        "modalities": [vars(m) | {"shape": list(m.shape)} for m in MODS],
        "data": {"source": "shards", "path": str(tmp_path / "shards"), "workers": 2},
        "model": {"preset": "debug", "depth": 1},
        "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 100, "tensorboard": False},
    }
    _alarm(120)
    try:  # 2 workers x 1 shard of 4 each: one batch of 8 an epoch, formed in the trainer
        assert train(config_from_tree(tree), tmp_path / "run", progress=False).step == 2
    finally:
        signal.alarm(0)


def test_leftovers_are_only_anydits_own(tmp_path):
    from anydit.train.checkpoint import remove_leftovers

    (tmp_path / "thesis.tmp").write_text("mine")
    (tmp_path / "build.tmp").mkdir()
    (tmp_path / "checkpoints" / "step_00000004.tmp").mkdir(parents=True)
    (tmp_path / "checkpoints" / "notes.tmp").write_text("mine")
    (tmp_path / "model.safetensors.tmp").write_bytes(b"torn")
    removed = sorted(p.name for p in remove_leftovers(tmp_path))
    assert removed == ["model.safetensors.tmp", "step_00000004.tmp"]
    assert (tmp_path / "thesis.tmp").is_file() and (tmp_path / "build.tmp").is_dir()
    assert (tmp_path / "checkpoints" / "notes.tmp").is_file()


def test_per_modality_guidance_in_the_config(tmp_path):
    from anydit.train.logs import Logger, write_sample_grid

    tree = json.loads(json.dumps(TREE))
    tree["sample"] = {"guidance": {"label": 2.0}, "steps": 2}
    cfg = config_from_tree(tree)  # valid: the grid guides nothing (nothing is given there)
    model = anydit.MMDiT(cfg.modalities, cfg.model)
    write_sample_grid(model, tmp_path, 1, Logger(tmp_path, True, False, False, 1, 0), cfg.sample)
    assert (tmp_path / "samples" / "image_step00000001.png").is_file()
    tree["sample"] = {"guidance": {"colour": 2.0}}
    with pytest.raises(ConfigError, match="sample.guidance: expected modality names among"):
        config_from_tree(tree)


def test_model_files_with_fields_that_never_applied_still_load(tmp_path):
    import dataclasses

    from safetensors.torch import save_file

    model = anydit.MMDiT(_mods(num_classes=3), anydit.preset("debug"))
    mods = [dataclasses.asdict(m) for m in model.modality_configs]
    mods[1]["rate"] = 2.0  # a label with a clock rate, and p_partial without per-token times:
    mods[0]["p_partial"] = 0.3  # older versions accepted both and ignored them
    meta = {
        "format": "anydit-model-1",
        "modalities": json.dumps(mods),
        "model": json.dumps(dataclasses.asdict(model.cfg)),
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "old.safetensors"), metadata=meta)
    with pytest.warns(UserWarning, match=r"stores \['p_partial'\].*|stores \['rate'\]"):
        loaded = anydit.load_model(tmp_path / "old.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_range_checks_only_where_values_are_pixels(tmp_path):
    from anydit.modalities import build_modality

    two = build_modality(ModalityConfig("v", "video", (2, 2, 4, 4), patch=2))  # 2 channels
    assert two.read_array(torch.full((2, 2, 4, 4), 3.0), one=True).max() == 3.0
    grey = build_modality(ModalityConfig("v", "video", (2, 1, 4, 4), patch=2))
    with pytest.raises(ValueError, match="must lie in \\[-1, 1\\]"):
        grey.read_array(torch.full((2, 1, 4, 4), 3.0), one=True)
    image = build_modality(ModalityConfig("i", "image", (1, 8, 8), patch=2))
    with pytest.raises(ValueError, match="from 255 to 255 \\(latents\\? declare codec: latent\\)"):
        image.read_array(torch.full((1, 8, 8), 255, dtype=torch.int64), one=True)
    latent = build_modality(ModalityConfig("i", "image", (4, 8, 8), patch=2, codec="latent"))
    assert latent.read_array(torch.full((4, 8, 8), 5.0), one=True).max() == 5.0


def test_a_caption_that_looks_like_a_file_name_is_text(tmp_path):
    _png(tmp_path / "0.png")
    (tmp_path / "IMG_1234.JPG").write_bytes(b"not read")
    rows = [{"image": "0.png", "label": "a", "text": "IMG_1234.JPG"}]
    (tmp_path / "m.jsonl").write_text(json.dumps(rows[0]))
    direct = build_dataset(DataConfig("manifest", str(tmp_path / "m.jsonl")), "train", MODS)[0]
    pack(tmp_path / "m.jsonl", tmp_path / "shards", MODS)
    streamed = next(iter(ShardStream(tmp_path / "shards", MODS)))
    assert direct["text"] == streamed["text"] == "IMG_1234.JPG"


def test_a_shard_whose_samples_are_scattered_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    with tarfile.open(tmp_path / "s" / "a.tar", "w") as tar:
        for name in ("00.label.txt", "01.label.txt", "00.text.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"a"))
    (tmp_path / "s" / "shards.json").write_text(json.dumps({"shards": ["a.tar"], "counts": [2]}))
    with pytest.raises(DataError, match="the members of sample 00 are not together"):
        list(ShardStream(tmp_path / "s", MODS))


@pytest.mark.slow
def test_a_refused_resume_names_the_modality_field(tmp_path):
    out = tmp_path / "run"
    train(_cfg(steps=2), out, progress=False)
    tree = json.loads(json.dumps(TREE))
    tree["train"]["steps"] = 2
    import dataclasses

    from anydit.data.digits import digits_modalities

    mods = [dataclasses.asdict(m) for m in digits_modalities()]
    mods[1]["p_given"] = 0.3
    tree["modalities"] = mods
    with pytest.raises(ConfigError, match=r"modalities\.label\.p_given: 0\.15 -> 0\.3"):
        train(config_from_tree(tree), out, progress=False)


def test_a_diffusers_index_may_not_point_outside_its_folder(tmp_path):
    from anydit.interop.weights import WeightsError, read_folder

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    index = tmp_path / "m" / "diffusion_pytorch_model.safetensors.index.json"
    for names in (["../other.safetensors"], ["/etc/x.safetensors"]):
        index.write_text(json.dumps({"weight_map": {"w": names[0]}}))
        with pytest.raises(WeightsError, match="expected shard file names inside"):
            read_folder(tmp_path / "m")
    index.write_text("{not json")
    with pytest.raises(WeightsError, match="index.json: not a readable index"):
        read_folder(tmp_path / "m")


def test_sample_settings_take_numpy_and_torch_numbers():
    cfg = anydit.SampleConfig(steps=np.int64(4), guidance=np.float32(2.0))
    assert cfg.steps == 4 and cfg.guidance == 2.0
    assert anydit.SampleConfig(guidance=torch.tensor(1.5)).guidance == 1.5
