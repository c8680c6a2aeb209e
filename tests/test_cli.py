"""The command line end to end on a debug-size model: train, sample every role, eval, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import anydit
from anydit.cli import main
from anydit.data.digits import load_digit_audio, load_digit_images
from anydit.run_config import load_config

CONFIG = """
data: {source: digits}
model: {preset: debug}
train: {steps: 4, batch_size: 8, warmup: 1, log_every: 2, checkpoint_every: 2, precision: bf16}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "config.yaml"
    cfg.write_text(CONFIG)
    out = root / "run"
    assert (
        main(["train", str(cfg), "--out", str(out), "--no-progress", "--set", "model.depth=1"]) == 0
    )
    return out


def test_train_writes_model_logs_and_checkpoints(run_dir):
    assert (run_dir / "model.safetensors").is_file()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    assert {
        "loss/image",
        "loss/label",
        "loss/text",
        "loss/audio",
        "lr",
        "grad_norm",
        "samples_per_s",
    } <= set(lines[0])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step_00000002",
        "step_00000004",
    ]
    model = anydit.load_model(run_dir / "model.safetensors")
    assert model.cfg.depth == 1  # the --set override reached the model


ROLE_CASES = [  # CLI flags, generated modalities, the same task and settings in Python
    (["--generate", "image", "--given", "label=7"], {"image"}, {"label": 7}, {}),
    (
        ["--generate", "image", "--given", "text=a handwritten seven"],
        {"image"},
        {"text": "a handwritten seven"},
        {},
    ),
    (
        ["--generate", "label,text", "--given", "image=IMAGE"],
        {"label", "text"},
        {"image": "IMAGE"},
        {},
    ),
    (["--generate", "audio", "--given", "label=seven"], {"audio"}, {"label": 7}, {}),
    (["--generate", "image", "--given", "audio=WAV"], {"image"}, {"audio": "WAV"}, {}),
    (["--generate", "image,audio,label"], {"image", "audio", "label"}, {}, {}),
    (
        ["--generate", "image", "--given", "label=3", "--drop", "text", "--guidance", "2"],
        {"image"},
        {"label": 3, "text": "drop"},
        {"guidance": 2.0},
    ),
    (
        ["--generate", "image", "--given", "audio=NPY", "--solver", "heun"],
        {"image"},
        {"audio": "NPY"},
        {"solver": "heun"},
    ),
    (
        ["--generate", "image", "--given", "label=3", "--guidance", "label=2"],
        {"image"},
        {"label": 3},
        {"guidance": {"label": 2.0}},
    ),
    (
        ["--generate", "image,audio", "--guidance", "3", "--guidance-interval", "0.3,1"],
        {"image", "audio"},
        {},
        {"guidance": 3.0, "guidance_interval": (0.3, 1.0)},
    ),
    (
        ["--generate", "image", "--given", "label=3", "--shift", "3"],
        {"image"},
        {"label": 3},
        {"shift": 3.0},
    ),
    (
        ["--generate", "image,audio", "--given", "label=3", "--isolation", "2"],
        {"image", "audio"},
        {"label": 3},
        {"isolation": 2.0},
    ),
    (
        ["--generate", "image,audio", "--given", "label=3", "--stream-guidance", "audio=3"],
        {"image", "audio"},
        {"label": 3},
        {"stream_guidance": {"audio": 3.0}},
    ),
    (
        ["--generate", "image,label", "--discrete-first"],
        {"image", "label"},
        {},
        {"discrete_first": True},
    ),
    (
        ["--generate", "image,label", "--first", "label"],
        {"image", "label"},
        {},
        {"first": ("label",)},
    ),
    (
        [
            "--generate",
            "image",
            "--given",
            "label=3",
            "--solver",
            "midpoint",
            "--cache",
            "region",
            "--cache-ratio",
            "0.25",
            "--cache-interval",
            "9",
        ],
        {"image"},
        {"label": 3},
        {"solver": "midpoint", "cache": "region", "cache_ratio": 0.25, "cache_interval": 9},
    ),
    (
        ["--generate", "image", "--given", "audio=NPY", "--kv-reuse"],
        {"image"},
        {"audio": "NPY"},
        {"kv_reuse": True},
    ),
]


@pytest.mark.parametrize(("args", "generated", "given", "settings"), ROLE_CASES)
def test_sample_roles(run_dir, tmp_path, args, generated, given, settings):
    """Each CLI call writes exactly what ``anydit.sample`` gives for the same task."""
    from PIL import Image

    from anydit.data.digits import mel_params
    from anydit.modalities.logmel import mel_to_wave, read_logmel, write_wav

    img = ((load_digit_images("test")[0][0, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "seven.png")
    mel = load_digit_audio("test")[0][0]
    write_wav(tmp_path / "word.wav", mel_to_wave(mel, mel_params(), iters=4), 16000)
    mels = load_digit_audio("test")[0][:3]
    np.save(tmp_path / "mels.npy", mels.numpy())
    files = {
        "IMAGE": tmp_path / "seven.png",
        "WAV": tmp_path / "word.wav",
        "NPY": tmp_path / "mels.npy",
    }
    values = {  # the given files' values, read independently of the CLI
        "IMAGE": torch.from_numpy(img).float()[None] / 127.5 - 1.0,
        "WAV": read_logmel(tmp_path / "word.wav", mel_params(), (32, 32)),
        "NPY": mels,
    }
    for key, path in files.items():
        args = [a.replace(f"={key}", f"={path}") for a in args]
    out = tmp_path / "out"
    code = main(
        [
            "sample",
            "--checkpoint",
            str(run_dir),
            *args,
            "-n",
            "3",
            "--steps",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    task = {name: "generate" for name in generated}
    task.update({k: values.get(v, v) if isinstance(v, str) else v for k, v in given.items()})
    model = anydit.load_model(run_dir / "model.safetensors")
    want = anydit.sample(model, task, n=3, steps=2, seed=0, **settings)
    with np.load(out / "samples.npz") as npz:
        assert set(npz.files) == set(want)
        for name in generated:
            np.testing.assert_array_equal(npz[name], want[name].numpy(), err_msg=name)
        if given.get("label") is not None:
            assert npz["label"].tolist() == [given["label"]] * 3
    if "image" in generated:
        assert (out / "image_grid.png").is_file() and (out / "image_00002.png").is_file()
    if "audio" in generated:
        assert (out / "audio_00000.wav").is_file()
    if "label" in generated:
        rows = [json.loads(x) for x in (out / "label.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(0 <= r["id"] < 10 for r in rows)


def test_eval_writes_metrics(run_dir, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run_dir),
                "--out",
                str(tmp_path),
                "--n-per-class",
                "2",
                "--steps",
                "2",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "label_to_image",
        "text_to_image",
        "audio_to_image",
        "label_to_audio",
        "image_to_label",
        "image_to_text",
        "audio_to_label",
        "joint",
        "diversity_ratio",
        "judge_image_real_acc",
    ):
        assert key in metrics
    assert "label -> image" in capsys.readouterr().out


def _err(capsys, argv) -> str:
    code = main(argv)
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_inputs_end_in_one_clear_message(run_dir, tmp_path, capsys):
    ck = [
        "sample",
        "--checkpoint",
        str(run_dir),
        "-n",
        "2",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "o"),
    ]
    assert "missing.png" in _err(
        capsys, [*ck, "--generate", "label", "--given", "image=missing.png"]
    )
    bad = tmp_path / "big.png"
    from PIL import Image

    Image.new("L", (9, 8)).save(bad)
    err = _err(capsys, [*ck, "--generate", "label", "--given", f"image={bad}"])
    assert "big.png" in err and "expected 8x8 pixels (H x W), found 8x9" in err
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....not audio")
    assert "junk.wav" in _err(capsys, [*ck, "--generate", "image", "--given", f"audio={junk}"])
    assert "unknown modality" in _err(capsys, [*ck, "--generate", "image", "--given", "depth=3"])
    assert "unknown label 'eleven'" in _err(
        capsys, [*ck, "--generate", "image", "--given", "label=eleven"]
    )
    assert "unknown modalities ['video']" in _err(capsys, [*ck, "--generate", "video"])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((run_dir / "model.safetensors").read_bytes()[:500])
    assert "cut.safetensors" in _err(
        capsys, ["sample", "--checkpoint", str(cut), "--generate", "image"]
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _err(
        capsys,
        [
            "sample",
            "--checkpoint",
            str(run_dir),
            "--generate",
            "image",
            "--out",
            str(blocker / "sub"),
        ],
    )
    assert "output folder" in err and "cannot be written" in err


def test_bad_sampler_options_are_usage_errors(run_dir, tmp_path, capsys):
    ck = ["sample", "--checkpoint", str(run_dir), "--generate", "image", "--out", str(tmp_path)]
    for flag, value, want in [
        ("--guidance", "label:2", "expected a number or NAME=W pairs"),
        ("--guidance-interval", "0.5", "expected LOW,HIGH"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*ck, flag, value])
        assert exit_info.value.code == 2
        assert want in capsys.readouterr().err
    for args, want in [  # values checked once, by SampleConfig: one line, exit 2
        (["--guidance-interval", "0.8,0.2"], "sample.guidance_interval: expected two times"),
        (["--guidance", "nan"], "sample.guidance: expected a finite number"),
        (["--guidance", "inf"], "sample.guidance: expected a finite number"),
        (["--guidance", "label=nan"], "sample.guidance['label']: expected a finite number"),
        (["--steps", "-3"], "sample.steps: expected an integer >= 1, got -3"),
        (["--steps", "0"], "sample.steps: expected an integer >= 1, got 0"),
        (["--shift", "0"], "sample.shift: expected a number > 0"),
        (["--temperature", "-1"], "sample.temperature: expected a number > 0"),
        (["-n", "0"], "-n: expected an integer >= 1, got 0"),
    ]:
        assert want in _err(capsys, [*ck, *args]), args
    err = _err(capsys, [*ck, "--given", "label=3", "--guidance", "text=2"])
    assert "guidance names ['text'], which are not given" in err


def test_bad_config_names_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG + "\nmodel: {preset: debug, depht: 2}\n")
    assert "unknown key(s) ['depht']" in _err(
        capsys, ["train", str(cfg), "--out", str(tmp_path / "o")]
    )
    cfg.write_text(CONFIG)
    assert "train.lr: expected a number > 0, got -1" in _err(
        capsys, ["train", str(cfg), "--set", "train.lr=-1", "--out", str(tmp_path / "o")]
    )
    assert "does not exist" in _err(capsys, ["train", str(tmp_path / "none.yaml")])


def test_debug_flag_shows_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["train", str(tmp_path / "none.yaml"), "--debug"])


@pytest.mark.slow
def test_module_entry_point_runs():
    r = subprocess.run(
        [sys.executable, "-m", "anydit", "--help"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and "demo" in r.stdout


class Crash(Exception):
    pass


@pytest.mark.slow
def test_crash_and_resume_continue_exactly(tmp_path):
    """6 straight steps == 5 steps, a crash, and a resume from the step-4 checkpoint."""
    import yaml

    from anydit.run_config import config_from_tree
    from anydit.train.loop import train

    tree = yaml.safe_load(CONFIG)
    tree["train"].update(steps=6, precision="fp32", log_every=1)
    cfg = config_from_tree(tree)
    train(cfg, tmp_path / "straight", progress=False)

    def crash(record):
        if record["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, tmp_path / "split", progress=False, on_log=crash)
    assert (tmp_path / "split" / "checkpoints" / "step_00000004").is_dir()
    result = train(cfg, tmp_path / "split", progress=False)
    assert result.step == 6
    assert [r["step"] for r in result.history] == [5, 6]  # resumed, not started over
    for name in ("model.safetensors",):
        a = anydit.load_model(tmp_path / "straight" / name).state_dict()
        b = anydit.load_model(tmp_path / "split" / name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    raw_a = anydit.load_model(
        tmp_path / "straight/checkpoints/step_00000006/model.safetensors"
    ).state_dict()
    raw_b = anydit.load_model(
        tmp_path / "split/checkpoints/step_00000006/model.safetensors"
    ).state_dict()
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)


def test_eval_flags_replace_that_field_of_every_task(run_dir, tmp_path, monkeypatch):
    """``--guidance`` / ``--steps`` win over the tasks' own settings; ``via`` stays."""
    import anydit.eval.report as report

    seen = {}

    def fake(model, out, n_per_class, config, **kw):
        seen.update(kw, config=config)
        return {}

    monkeypatch.setattr(report, "run_eval", fake)
    argv = ["eval", "--checkpoint", str(run_dir), "--out", str(tmp_path)]
    assert main([*argv, "--guidance", "3", "--steps", "5"]) == 0
    tasks = seen["per_task"]
    assert all(t.guidance is None and t.steps is None for t in tasks.values())
    assert tasks["image_to_audio"].via == ("label",) and seen["config"].steps == 5
    assert tasks["label_to_image"].solver == "heun"  # not named on the command line: kept
    assert seen["seed"] == load_config(run_dir / "config.yaml").train.seed
    assert main([*argv, "--seed", "9"]) == 0 and seen["seed"] == 9
    assert seen["per_task"]["image_to_label"].steps == 1  # the demo's own


def test_stream_guidance_flag_takes_name_weight_pairs_only():
    import argparse

    from anydit.cli import _weights

    assert _weights("audio=3,video=1.5") == {"audio": 3.0, "video": 1.5}
    for bad in ("3", "audio=x", "audio"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=W pairs"):
            _weights(bad)
