"""Own data: arrays, manifests and image folders round-trip; partial pairing; bad input."""

from __future__ import annotations

import json
import os
import pickle
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import anydit
from anydit.cli import main
from anydit.config import DataConfig, ModalityConfig
from anydit.data import own
from anydit.data.sources import EpochReader, build_dataset, make_collate, open_training_data
from anydit.demo import demo_config
from anydit.flow.objective import make_inputs
from anydit.modalities import build_modalities


def _mods(classes=("cat", "dog"), text_len=12):
    return [
        ModalityConfig("image", "image", (1, 8, 8), patch=2),
        ModalityConfig("label", "label", classes=classes),
        ModalityConfig("text", "text", (text_len,)),
        ModalityConfig("vec", "vector", (3,)),
    ]


def _grey(seed: int) -> np.ndarray:
    """An 8x8 uint8 image; its [-1, 1] value is exactly u8 / 127.5 - 1."""
    return np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)


def _png(path, u8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(u8).save(path)
    return path


def _as_float(u8):
    return torch.from_numpy(u8.astype(np.float32) / 127.5 - 1.0)[None]  # (1, 8, 8)


def test_arrays_npz_and_npy_folder_round_trip(tmp_path):
    image = np.random.default_rng(0).uniform(-1, 1, (5, 1, 8, 8)).astype(np.float32)
    label = np.array([0, 1, 1, 0, 1])
    vec = np.arange(15, dtype=np.float32).reshape(5, 3)
    np.savez(tmp_path / "d.npz", image=image, label=label, vec=vec)
    folder = tmp_path / "npy"
    folder.mkdir()
    for k, v in {"image": image, "label": label, "vec": vec}.items():
        np.save(folder / f"{k}.npy", v)
    model = anydit.MMDiT(_mods(), anydit.preset("debug"))
    for path in (tmp_path / "d.npz", folder):
        ds = build_dataset(DataConfig("arrays", str(path)), "train", _mods())
        assert len(ds) == 5
        batch, present = make_collate(model.modalities)([ds[i] for i in range(5)])
        torch.testing.assert_close(batch["image"], torch.from_numpy(image))
        assert batch["label"].tolist() == label.tolist()
        torch.testing.assert_close(batch["vec"], torch.from_numpy(vec))
        assert list(present) == ["text"] and not present["text"].any()  # no text array: dropped


def test_manifest_jsonl_csv_parquet_round_trip(tmp_path):
    imgs = [_grey(i) for i in range(3)]
    rows = [
        {"image": f"img/{i}.png", "label": ["cat", "dog", "cat"][i], "text": f"pet {i}"}
        for i in range(3)
    ]
    for i, u8 in enumerate(imgs):
        _png(tmp_path / "img" / f"{i}.png", u8)
    rows[0]["vec"] = [1.0, 2.0, 3.0]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    csv_lines = ["image,label,text,vec"] + [
        f'{r["image"]},{r["label"]},{r["text"]},"{",".join(map(str, r.get("vec", [])))}"'
        for r in rows
    ]
    (tmp_path / "m.csv").write_text("\n".join(csv_lines))
    paths = [tmp_path / "m.jsonl", tmp_path / "m.csv"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
        paths.append(tmp_path / "m.parquet")
    except ImportError:
        pass
    model = anydit.MMDiT(_mods(), anydit.preset("debug"))
    for path in paths:
        ds = build_dataset(DataConfig("manifest", str(path)), "train", _mods())
        batch, present = make_collate(model.modalities)([ds[i] for i in range(3)])
        torch.testing.assert_close(batch["image"], torch.stack([_as_float(u) for u in imgs]))
        assert batch["label"].tolist() == [0, 1, 0]
        assert model.modalities["text"].decode(batch["text"]) == ["pet 0", "pet 1", "pet 2"]
        torch.testing.assert_close(batch["vec"][0], torch.tensor([1.0, 2.0, 3.0]))
        assert present["vec"].tolist() == [True, False, False], path.suffix  # partial pairing


def test_image_folder_classes_from_data_and_fit(tmp_path):
    _png(tmp_path / "pets" / "dog" / "a.png", _grey(1))
    _png(tmp_path / "pets" / "cat" / "b.png", _grey(2))
    big = np.full((16, 24), 255, np.uint8)
    big[:, :2] = big[:, 22:] = 0  # black side bands that a centre crop cuts away
    _png(tmp_path / "pets" / "cat" / "c.png", big)
    mods = _mods(classes=())
    mods = [m for m in mods if m.name in ("image", "label")]
    ds, skipped = open_training_data(DataConfig("folder", str(tmp_path / "pets")), mods, log=print)
    assert skipped == {} and mods[1].classes == ("cat", "dog")
    items = [ds[i] for i in range(3)]
    assert [it["label"] for it in items] == ["cat", "cat", "dog"]
    assert items[1]["image"].shape == (1, 8, 8) and items[1]["image"].min() > 0.5  # crop
    stretched = build_dataset(
        DataConfig("folder", str(tmp_path / "pets"), image_fit="stretch"), "train", mods
    )[1]["image"]
    assert stretched.min() < 0  # stretch keeps the black borders
    with pytest.raises(own.DataError, match="expected 8x8 pixels"):
        build_dataset(
            DataConfig("folder", str(tmp_path / "pets"), image_fit="exact"), "train", mods
        )[1]


def test_absent_modality_is_dropped_for_that_sample():
    model = anydit.MMDiT(_mods(), anydit.preset("debug"))
    items = [
        {"image": torch.zeros(1, 8, 8), "label": "cat", "text": "a", "vec": torch.ones(3)},
        {"image": torch.zeros(1, 8, 8), "label": "dog", "vec": torch.ones(3)},
    ]
    batch, present = make_collate(model.modalities)(items)
    assert list(present) == ["text"] and present["text"].tolist() == [True, False]
    flow = anydit.FlowConfig()
    g = torch.Generator().manual_seed(0)
    inputs = make_inputs(model.modalities, batch, flow, False, present, g)
    assert not inputs.scored["text"][1].any()  # sample 1 has no text: nothing to learn there
    assert float(inputs.times["text"][1].float().max()) == 0.0  # held at t = 0: dropped
    # the other samples keep the roles drawn for them
    g = torch.Generator().manual_seed(0)
    full = make_inputs(model.modalities, batch, flow, False, None, g)
    torch.testing.assert_close(full.times["text"][0], inputs.times["text"][0])
    torch.testing.assert_close(full.times["image"], inputs.times["image"])


def _bad_manifest(tmp_path):
    ok = _png(tmp_path / "ok.png", _grey(0))
    (tmp_path / "junk.png").write_bytes(b"not a png")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 2), np.float32))
    rows = [
        {"image": "ok.png", "label": "cat"},
        {"image": "missing.png", "label": "cat"},
        {"image": "junk.png", "label": "dog"},
        {"image": "ok.png", "label": "cow"},
        {"image": "ok.png", "text": "x" * 40},
        {"image": "ok.png", "vec": [1.0, float("nan"), 2.0]},
        {"image": "ok.png", "vec": "wrong.npy"},
        {"image": str(ok), "label": "dog"},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_bad_rows_name_file_row_and_reason(tmp_path):
    ds = build_dataset(DataConfig("manifest", str(_bad_manifest(tmp_path))), "train", _mods())
    assert len(ds) == 8
    expected = {
        1: ("row 2, column 'image'", "missing.png", "missing file"),
        2: ("row 3, column 'image'", "junk.png", "unreadable file"),
        3: ("row 4, column 'label'", "unknown label 'cow'", "unknown label"),
        4: ("row 5, column 'text'", "more than the maximum length", "over-long text"),
        5: ("row 6, column 'vec'", "NaN or inf", "not finite"),
        6: ("row 7, column 'vec'", "wrong.npy", "wrong shape"),
    }
    for row, (where, what, kind) in expected.items():
        with pytest.raises(own.DataError) as info:
            ds[row]
        assert where in str(info.value) and what in str(info.value), str(info.value)
        assert info.value.kind == kind
    report = own.scan(ds)
    assert report.good == [0, 7]
    assert report.counts == {
        "missing file": 1,
        "unreadable file": 1,
        "unknown label": 1,
        "over-long text": 1,
        "not finite": 1,
        "wrong shape": 1,
    }


def test_manifest_level_errors(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "colour": "red"}))
    with pytest.raises(own.DataError, match=r"column\(s\) \['colour'\] match no modality"):
        build_dataset(DataConfig("manifest", str(tmp_path / "m.jsonl")), "train", _mods())
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(own.DataError, match="no samples to train on"):
        open_training_data(DataConfig("manifest", str(tmp_path / "e.jsonl")), _mods())
    (tmp_path / "b.jsonl").write_text('{"image": "a.png"}\n{oops\n')
    with pytest.raises(own.DataError, match="line 2: not valid JSON"):
        build_dataset(DataConfig("manifest", str(tmp_path / "b.jsonl")), "train", _mods())
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        build_dataset(DataConfig("manifest", str(tmp_path / "nothing.jsonl")), "train", _mods())
    np.savez(tmp_path / "a.npz", image=np.zeros((3, 1, 8, 8)), vec=np.zeros((2, 3)))
    with pytest.raises(own.DataError, match="same number of samples"):
        build_dataset(DataConfig("arrays", str(tmp_path / "a.npz")), "train", _mods())


def _config(tmp_path, data: dict, mods=None) -> str:
    tree = {
        "modalities": [
            {k: list(v) if isinstance(v, tuple) else v for k, v in vars(m).items()}
            for m in (mods or _mods())
        ],
        "data": data,
        "model": {"preset": "debug", "depth": 1},
        "train": {"steps": 2, "batch_size": 2, "warmup": 1, "log_every": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_data_check_reports_every_problem(tmp_path, capsys):
    cfg = _config(tmp_path, {"source": "manifest", "path": str(_bad_manifest(tmp_path))})
    assert main(["data", "check", cfg]) == 1
    out = capsys.readouterr().out
    assert "8 samples, 2 readable" in out
    assert "missing file 1" in out and "unknown label 1" in out and "not finite 1" in out
    assert "missing.png" in out and "junk.png" in out


@pytest.mark.slow
def test_train_skip_policy_and_classes_in_checkpoint(tmp_path, capsys):
    mods = _mods(classes=())
    data = {"source": "manifest", "path": str(_bad_manifest(tmp_path)), "on_error": "skip"}
    cfg = _config(tmp_path, data, mods)
    out_dir = tmp_path / "run"
    assert main(["train", cfg, "--out", str(out_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "missing.png" in printed
    problems = json.loads((out_dir / "data_problems.json").read_text())
    assert problems == {  # "cow" is a class here: the classes come from the data
        "missing file": 1,
        "unreadable file": 1,
        "over-long text": 1,
        "not finite": 1,
        "wrong shape": 1,
    }
    model = anydit.load_model(out_dir / "model.safetensors")
    assert model.modalities["label"].cfg.classes == ("cat", "cow", "dog")  # from the data
    code = main(
        ["sample", "--checkpoint", str(out_dir), "--generate", "image", "--given", "label=cow"]
        + ["-n", "2", "--steps", "1", "--out", str(tmp_path / "s")]
    )
    assert code == 0
    # the same manifest with the default policy stops at the first bad row, naming it
    cfg = _config(tmp_path, {"source": "manifest", "path": data["path"]}, mods)
    assert main(["train", cfg, "--out", str(tmp_path / "run2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"anydit train: error: manifest '.*bad.jsonl', row \d, column", err), err


def _pets_manifest(tmp_path, n=12):
    rows = []
    for i in range(n):
        _png(tmp_path / "img" / f"{i}.png", _grey(i))
        row = {"image": f"img/{i}.png", "label": ["cat", "dog"][i % 2], "text": f"pet {i}"}
        if i % 3:
            row["vec"] = [float(i), 0.5, -1.0]
        rows.append(row)
    path = tmp_path / "pets.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _canon(item: dict) -> tuple:
    """A sample as a hashable value, for comparing sets of samples."""
    vec = tuple(torch.as_tensor(item["vec"]).tolist()) if "vec" in item else None
    return (item["image"].numpy().tobytes(), item["label"], item["text"], vec)


def test_pack_shards_stream_the_manifest_samples_split_across_ranks(tmp_path):
    from anydit.data.shards import ShardStream

    manifest = _pets_manifest(tmp_path)
    run = _config(tmp_path, {"source": "manifest", "path": str(manifest)})
    assert main(["data", "pack", run, "--out", str(tmp_path / "sh"), "--shard-size", "3"]) == 0
    index = json.loads((tmp_path / "sh" / "shards.json").read_text())
    assert index["counts"] == [3, 3, 3, 3]
    want = sorted(
        _canon(x) for x in build_dataset(DataConfig("manifest", str(manifest)), "train", _mods())
    )
    one = ShardStream(tmp_path / "sh", _mods())
    assert sorted(_canon(x) for x in one) == want  # what goes in is what comes out
    parts = []
    for rank in (0, 1):
        stream = ShardStream(tmp_path / "sh", _mods(), rank=rank, world=2)
        stream.set_epoch(3)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        parts.append([_canon(x) for x in loader])
    assert len(parts[0]) == len(parts[1]) == 6
    assert not set(parts[0]) & set(parts[1])  # no overlap
    assert sorted(parts[0] + parts[1]) == want  # no loss
    assert one.batches_per_epoch(2) == 6


@pytest.mark.slow
def test_train_from_shards_and_check(tmp_path, capsys):
    manifest = _pets_manifest(tmp_path)
    run = _config(tmp_path, {"source": "manifest", "path": str(manifest)})
    assert main(["data", "pack", run, "--out", str(tmp_path / "sh"), "--shard-size", "5"]) == 0
    cfg = _config(tmp_path, {"source": "shards", "path": str(tmp_path / "sh"), "workers": 1})
    assert main(["data", "check", cfg]) == 0
    assert "12 samples, 12 readable" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["train", cfg, "--out", str(out), "--no-progress", "--set", "train.steps=7"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 8))  # 6 batches of 2 an epoch, then more


def _train_weights(tmp_path, name, data):
    from anydit.run_config import config_from_tree
    from anydit.train.loop import train

    tree = yaml.safe_load(Path(_config(tmp_path, data)).read_text())
    # 10 steps of 4-batch epochs: two epoch ends crossed, the last epoch left part-read
    cfg = config_from_tree(tree, ["train.steps=10", "train.checkpoint_every=100"])
    train(cfg, tmp_path / name, resume=False, progress=False)
    return anydit.load_model(tmp_path / name / "model.safetensors").state_dict()


@pytest.mark.slow
def test_loader_workers_train_the_same_run(tmp_path):
    manifest = str(_pets_manifest(tmp_path, n=8))
    a = _train_weights(tmp_path, "w0", {"source": "manifest", "path": manifest})
    b = _train_weights(tmp_path, "w2", {"source": "manifest", "path": manifest, "workers": 2})
    assert all(torch.equal(a[k], b[k]) for k in a)


class _EpochItems(torch.utils.data.Dataset):
    """Items that say which epoch and which process read them (and, given a file, each read
    is logged there as it happens)."""

    def __init__(self, log: Path | None = None):
        self.epoch, self.log = 0, log

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{self.epoch} {i}\n")
        return self.epoch, i, os.getpid()


def test_reader_workers_read_on_across_epochs_each_as_its_own(tmp_path):
    def rows_of(epoch: int) -> list[list[int]]:
        return [[(epoch + 5) % 8, 1], [2, 3], [4, 0]]

    def items(batches):
        return [[(e, i) for e, i, _ in b] for b in batches]

    def expected(epoch: int):
        return [[(epoch, i) for i in r] for r in rows_of(epoch)]

    log = tmp_path / "reads"
    reader = EpochReader(_EpochItems(log), collate=list, workers=2)
    assert items(reader(0, rows_of(0), 0, rows_of)) == expected(0)
    for _ in range(100):  # epoch 0 is read; the workers go on into epoch 1 before it is asked
        if any(line.startswith("1 ") for line in log.read_text().splitlines()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the workers did not read ahead into epoch 1: {log.read_text()}")
    pids = set()
    for epoch in range(3):
        got = list(reader(epoch, rows_of(epoch), 0, rows_of))
        assert items(got) == expected(epoch)
        pids |= {pid for b in got for *_, pid in b}
    assert len(pids) == 2 and os.getpid() not in pids  # one pair of workers, not one an epoch
    first = reader(3, rows_of(3), 0, rows_of)
    next(first)  # an epoch left part-read, then the next one: nothing of the first leaks in
    assert items(reader(4, rows_of(4), 0, rows_of)) == expected(4)
    # a resume in the middle of an epoch, then on into the next
    assert items(reader(6, rows_of(6)[1:], 1, rows_of)) == expected(6)[1:]
    assert items(reader(7, rows_of(7), 0, rows_of)) == expected(7)
    assert items(reader(9, rows_of(9), 0, rows_of)) == expected(9)  # an epoch skipped


def test_reader_workers_give_the_epochs_items_of_no_workers():
    collate = make_collate(build_modalities(demo_config([]).modalities))
    rows = [[3, 9, 27], [81, 243, 729]]
    plain = EpochReader(build_dataset(DataConfig("digits"), "train"), collate, 0)
    # its own dataset, never moved off epoch 0 here: epoch 1 is read ahead by the workers,
    # so only their own set_epoch can give its pairings and captions
    workers = EpochReader(build_dataset(DataConfig("digits"), "train"), collate, 2)
    for epoch in (0, 1):
        ahead = list(workers(epoch, rows, 0, lambda e: rows))
        for (a, _), (b, _) in zip(plain(epoch, rows), ahead, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(next(plain(0, rows))[0]["audio"], next(plain(1, rows))[0]["audio"])
    with pytest.raises(RuntimeError, match="took over"):  # only the latest call's iterator
        old = workers(2, rows, 0, lambda e: rows)
        next(workers(0, rows))
        next(old)


def test_what_workers_take_pickles_for_spawn():
    mods = build_modalities(demo_config([]).modalities)
    dataset = build_dataset(DataConfig("digits"), "train")
    items = [dataset[i] for i in range(4)]
    again = pickle.loads(pickle.dumps(make_collate(mods)))
    for a, b in zip(make_collate(mods)(items), again(items), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert pickle.loads(pickle.dumps(dataset))[0]["label"] == items[0]["label"]


def test_worker_errors_name_the_row(tmp_path, capsys):
    path = _bad_manifest(tmp_path)
    cfg = _config(tmp_path, {"source": "manifest", "path": str(path), "workers": 2})
    assert main(["train", cfg, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: manifest '.*bad.jsonl', row \d, column '\w+': ", err), err
    assert "Traceback" not in err


def test_vector_standardised_with_stored_statistics(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pose = rng.normal([100.0, -3.0, 0.5], [5.0, 0.1, 2.0], size=(64, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", vec=pose, label=np.arange(64) % 2)
    mods = [
        ModalityConfig("vec", "vector", (3,), standardize=True),
        ModalityConfig("label", "label", num_classes=2),
    ]
    ds, _ = open_training_data(DataConfig("arrays", str(tmp_path / "d.npz")), mods, log=print)
    np.testing.assert_allclose(mods[0].mean, pose.mean(0), rtol=1e-5)
    np.testing.assert_allclose(mods[0].std, pose.std(0, ddof=1), rtol=1e-4)
    model = anydit.MMDiT(mods, anydit.preset("debug"))
    x = torch.from_numpy(pose)
    tokens = model.modalities["vec"].tokenize(x)  # (64, 1, 3): standardised
    torch.testing.assert_close(tokens.mean((0, 1)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.std((0, 1)), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(model.modalities["vec"].detokenize(tokens), x)  # original units
    fresh = [  # no statistics yet: the training run computes and stores them
        ModalityConfig("vec", "vector", (3,), standardize=True),
        ModalityConfig("label", "label", num_classes=2),
    ]
    cfg = _config(tmp_path, {"source": "arrays", "path": str(tmp_path / "d.npz")}, fresh)
    out = tmp_path / "run"
    assert main(["train", cfg, "--out", str(out), "--no-progress"]) == 0
    loaded = anydit.load_model(out / "model.safetensors")
    assert loaded.modalities["vec"].cfg.mean == mods[0].mean  # stored in the checkpoint
    s = anydit.sample(loaded, {"vec": "generate", "label": 1}, n=4, steps=2)
    assert s["vec"].shape == (4, 3) and s["vec"][:, 0].abs().mean() > 20  # back in data units
