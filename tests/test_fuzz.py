"""Random configs and random file bytes: every one ends in success or one clear line.

The config loader, the CLI's ``data check`` over manifests, arrays and shards, and each kind's
file reader get mutated or random input from a fixed seed; anything but a result or a one-line
error (``anydit ...: error: ...``, exit 1 or 2) fails the test, naming the input.
"""

from __future__ import annotations

import copy
import io
import json
import random
import tarfile

import numpy as np
import pytest
import yaml
from PIL import Image

from anydit.cli import main
from anydit.config import ConfigError
from anydit.data.digits import digits_modalities
from anydit.modalities import build_modality
from anydit.run_config import config_from_tree

VALID = {
    "modalities": [
        {"name": "image", "kind": "image", "shape": [1, 8, 8], "patch": 2},
        {"name": "label", "kind": "label", "classes": ["a", "b"]},
        {"name": "caption", "kind": "text", "shape": [12]},
        {"name": "pose", "kind": "vector", "shape": [3], "standardize": True},
        {"name": "clip", "kind": "video", "shape": [2, 1, 4, 4], "patch": 2, "clock": "c"},
        {"name": "wave", "kind": "sequence", "shape": [8, 4], "patch": 2, "clock": "c", "rate": 2},
    ],
    "data": {"source": "digits", "image_fit": "crop", "workers": 0},
    "model": {"preset": "debug", "depth": 1, "heads": 2, "mlp_ratio": 2.0},
    "flow": {"logit_mean": 0.0, "logit_std": 1.0},
    "train": {"steps": 10, "batch_size": 8, "lr": 1e-3, "grad_accum": 1, "ema": 0.9},
    "sample": {"steps": 4, "guidance": 2.0, "guidance_interval": [0.1, 1.0]},
}
ODD_VALUES = [
    None, -1, 0, 1, 7, 8.7, 1e30, 2**40, -0.5, float("nan"), float("inf"), "", "x", "1e-6",
    True, [], [1, 2], [[1]], {}, {"a": 1}, "logmel", "vae", "bytes", [0.5], "../../etc/passwd",
]  # fmt: skip


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(tree, list) and tree and isinstance(tree[0], dict):
        for i, v in enumerate(tree):
            yield from _leaves(v, (*path, i))
    yield path


def _set(tree, path, value):
    node = tree
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def test_random_configs_load_or_name_the_field():
    rng = random.Random(0)
    leaves = [p for p in _leaves(VALID) if p]
    for case in range(400):
        tree = copy.deepcopy(VALID)
        changed = set()
        for _ in range(rng.choice((1, 1, 2))):
            path = rng.choice(leaves)
            try:
                _set(tree, path, copy.deepcopy(rng.choice(ODD_VALUES)))
            except (TypeError, KeyError, IndexError):
                continue  # an earlier mutation replaced a parent
            changed |= {str(p) for p in path if isinstance(p, str)}
            if path[0] == "modalities" and len(path) > 2:  # the modality, by name
                changed.add(VALID["modalities"][path[1]]["name"])
        try:
            config_from_tree(tree)
        except ConfigError as err:
            message = str(err)
            assert message and "\n" not in message, (case, tree)
            assert any(word in message for word in changed), (case, message, changed)
        except Exception as err:  # noqa: BLE001 - what the test is about
            pytest.fail(
                f"case {case}: {type(err).__name__}: {err} for {json.dumps(tree, default=str)}"
            )


MEMBERS = ["00.image.png", "00.label.txt", "01.caption.json", "x", "00.pose.json", "a.b.c.d"]


def _random_bytes(rng: random.Random, kind: str) -> bytes:
    """Random bytes, or a valid file of the kind with random damage."""
    if rng.random() < 0.4:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    buf = io.BytesIO()
    if kind == ".png":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    elif kind == ".npy":
        np.save(buf, np.zeros((1, 8, 8), np.float32))
    elif kind == ".wav":
        import soundfile as sf

        sf.write(buf, np.zeros(400, np.float32), 16000, format="WAV")
    data = bytearray(buf.getvalue())
    for _ in range(rng.randint(1, 6)):
        if data:
            data[rng.randrange(len(data))] = rng.getrandbits(8)
    return bytes(data[: rng.randint(0, len(data))] if rng.random() < 0.3 else data)


def test_random_files_read_or_name_the_file(tmp_path):
    rng = random.Random(1)
    mods = {c.name: build_modality(c) for c in digits_modalities()}
    for case in range(150):
        ext = rng.choice([".png", ".npy", ".wav", ".txt", ".jpg"])
        path = tmp_path / f"f{case}{ext}"
        path.write_bytes(_random_bytes(rng, ext))
        for m in mods.values():
            try:
                m.read_value(str(path))
            except (ValueError, FileNotFoundError) as err:
                assert "\n" not in str(err).strip(), (case, m.name)
                assert path.name in str(err), (case, m.name, str(err))
            except Exception as err:  # noqa: BLE001
                pytest.fail(f"case {case} ({ext}) for '{m.name}': {type(err).__name__}: {err}")


def _check(tmp_path, capsys, data: dict, case) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"modalities": VALID["modalities"][:4], "data": data}))
    code = main(["data", "check", str(cfg)])
    out = capsys.readouterr()
    assert code in (0, 1, 2), case
    assert "Traceback" not in out.err, (case, out.err)
    if code == 2:
        assert len(out.err.strip().splitlines()) == 1, (case, out.err)


def test_random_manifests_arrays_and_shards_check_cleanly(tmp_path, capsys):
    rng = random.Random(2)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    for case in range(60):
        which = rng.choice(["jsonl", "csv", "npz", "tar", "index"])
        if which in ("jsonl", "csv"):
            path = tmp_path / f"m{case}.{which}"
            if rng.random() < 0.5:
                path.write_bytes(_random_bytes(rng, which))
            else:
                rows = [
                    {k: rng.choice([*ODD_VALUES[:10], "ok.png", "a", "b", [1, 2, 3]]) for k in
                     rng.sample(["image", "label", "caption", "pose", "id", "other"], 3)}
                    for _ in range(rng.randint(0, 4))
                ]  # fmt: skip
                if which == "jsonl":
                    path.write_text("\n".join(json.dumps(r) for r in rows))
                else:
                    keys = sorted({k for r in rows for k in r}) or ["image"]
                    lines = [",".join(keys)] + [
                        ",".join(str(r.get(k, "")) for k in keys) for r in rows
                    ]
                    path.write_text("\n".join(lines))
            _check(tmp_path, capsys, {"source": "manifest", "path": str(path)}, case)
        elif which == "npz":
            path = tmp_path / f"a{case}.npz"
            arrays = {
                rng.choice(["image", "label", "pose", "caption"]): rng.choice(
                    [np.zeros((2, 1, 8, 8)), np.ones(3), np.array(["a", "b"]), np.zeros((2, 3)),
                     np.full((2, 1, 8, 8), 9.0), np.array([1, 5])]
                )
                for _ in range(2)
            }  # fmt: skip
            np.savez(path, **arrays)
            if rng.random() < 0.4:
                path.write_bytes(path.read_bytes()[: rng.randint(0, 400)])
            _check(tmp_path, capsys, {"source": "arrays", "path": str(path)}, case)
        else:
            folder = tmp_path / f"s{case}"
            folder.mkdir()
            names = []
            if which == "tar":
                with tarfile.open(folder / "a.tar", "w") as tar:
                    for _ in range(rng.randint(0, 4)):
                        name = rng.choice(MEMBERS)
                        payload = _random_bytes(rng, "." + name.rsplit(".", 1)[-1])
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
                names = ["a.tar"]
            index = rng.choice([
                {"shards": names, "counts": [rng.randint(0, 3)] * len(names)},
                {"shards": names}, [], {"shards": ["../a.tar"], "counts": [1]},
                {"shards": [5], "counts": ["x"]},
            ])  # fmt: skip
            (folder / "shards.json").write_text(json.dumps(index))
            _check(tmp_path, capsys, {"source": "shards", "path": str(folder)}, case)
