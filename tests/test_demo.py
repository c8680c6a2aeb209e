"""``anydit demo`` end to end at a tiny size: the fixed recipe, the seed, resume, the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import anydit.demo as demo
from anydit.cli import main
from anydit.demo import DEMO_STEPS, demo_config, run_demo
from anydit.eval.metrics import TASKS

TINY = [
    "model.width=32",
    "model.depth=1",
    "model.heads=1",
    "model.head_dim=32",
    "train.batch_size=8",
    "train.steps=3",
    "train.warmup=1",
    "train.log_every=1",
    "train.checkpoint_every=2",
]


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in TASKS or k.endswith("_ratio")}


def _run(out: Path, seed: int | None, overrides=TINY) -> dict:
    return run_demo(out, overrides=overrides, progress=False, eval_per_class=2, seed=seed)


def _weights(out: Path) -> dict:
    return load_file(str(out / "model.safetensors"))


def test_the_recipe_is_fixed_and_seeded() -> None:
    cfg = demo_config()
    assert cfg.train.steps == DEMO_STEPS and cfg.train.seed == 0 and cfg.data.seed == 0
    seeded = demo_config(seed=3)
    assert seeded.train.seed == 3 and seeded.data.seed == 3
    assert seeded.train.steps == DEMO_STEPS  # the step count never depends on the machine
    assert demo_config(["train.steps=7"], seed=3).train.steps == 7


def test_a_tiny_demo_end_to_end(tmp_path: Path, capsys) -> None:
    a = _numbers(_run(tmp_path / "a", seed=1))
    assert set(TASKS) <= set(a) and all(0.0 <= a[t] <= 1.0 for t in TASKS)
    record = json.loads((tmp_path / "a" / "demo.json").read_text())
    assert record["seed"] == 1 and record["train_steps"] == 3
    assert 0 < record["train_seconds"] < record["wall_seconds"]
    assert (tmp_path / "a" / "gallery" / "index.html").is_file()
    # the same seed in another folder: the same weights and numbers
    assert _numbers(_run(tmp_path / "b", seed=1)) == a
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all((wa[k] == wb[k]).all() for k in wa)
    # another seed: other training (weights) and other numbers
    c = _numbers(_run(tmp_path / "c", seed=2))
    wc = _weights(tmp_path / "c")
    assert any(not (wa[k] == wc[k]).all() for k in wa) and c != a
    # a finished folder resumes with its own seed: no more training, the same numbers
    assert _numbers(_run(tmp_path / "a", seed=None)) == a
    with pytest.raises(ValueError, match="holds a demo with seed 1, not 4"):
        _run(tmp_path / "a", seed=4)
    # `anydit eval` on the folder reproduces the demo's table (its seed, its settings)
    want = json.loads((tmp_path / "a" / "metrics.json").read_text())
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(tmp_path / "a"), "--out", str(out), "--n-per-class", "2"]
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text()) == want
    assert main([*argv, "--split", "val"]) == 0
    assert json.loads((out / "metrics.json").read_text()) == want  # val never overwrites test
    val = json.loads((out / "metrics_val.json").read_text())
    assert val["split"] == "val" and val["seed"] == 1 and val != want


def test_minutes_fits_the_steps_to_a_budget(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo, "time_per_step", lambda cfg, processes=1: 0.4)  # as if measured
    monkeypatch.setattr(demo, "EVAL_RESERVE_S", 0.0)
    overrides = [o for o in TINY if not o.startswith("train.steps")]
    run_demo(tmp_path, minutes=0.5, overrides=overrides, progress=False, eval_per_class=2)
    steps = json.loads((tmp_path / "demo.json").read_text())["train_steps"]
    assert 65 <= steps <= 75  # (30 s - the seconds already spent) / 0.4 s, not DEMO_STEPS


def test_two_processes_train_the_model_one_process_trains(tmp_path: Path) -> None:
    """The recipe's data-parallel training (two local processes, gloo) computes what one
    process computes for the same global batch: the same weights up to rounding."""
    one = run_demo(tmp_path / "one", overrides=TINY, progress=False, eval_per_class=2, processes=1)
    two = run_demo(tmp_path / "two", overrides=TINY, progress=False, eval_per_class=2, processes=2)
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(w1) == set(w2)
    # rounding of the all-reduced gradients: ~1e-5; a wrong split or no all-reduce: ~lr = 1e-3
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    assert json.loads((tmp_path / "two" / "demo.json").read_text())["processes"] == 2
    assert one["train_steps"] == two["train_steps"] == 3
