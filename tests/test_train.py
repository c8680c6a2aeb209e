"""The training loop's options and fault handling, in one process on a debug model."""

import math
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import anydit
from anydit.run_config import config_from_tree
from anydit.train.checkpoint import latest_checkpoint
from anydit.train.loop import train

pytestmark = pytest.mark.slow  # whole trainings

TREE = {
    "data": {"source": "digits"},
    "model": {"preset": "debug", "depth": 1},
    "train": {
        "steps": 6,
        "batch_size": 8,
        "warmup": 1,
        "log_every": 1,
        "checkpoint_every": 2,
        "precision": "fp32",
        "tensorboard": False,
    },
}


def _cfg(**train_kw):
    tree = {**TREE, "train": {**TREE["train"], **train_kw}}
    return config_from_tree(tree)


def _weights(path):
    return anydit.load_model(path).state_dict()


def _same(a, b, tol=0.0):
    return all((a[k] - b[k]).abs().max().item() <= tol for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train(_cfg(), out, progress=False)
    return out


def test_kill_during_checkpoint_write_keeps_previous(straight, tmp_path):
    """SIGKILL while step 4's checkpoint is being written: step 2's stays loadable, and the
    resumed run ends bit-identical to the straight one."""
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, torch
        import anydit.train.checkpoint as S
        from anydit.run_config import config_from_tree
        from anydit.train.loop import train
        save = torch.save
        def dying_save(obj, path, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, path, *a, **k)
        S.torch.save = dying_save
        train(config_from_tree({TREE!r}), {str(out)!r}, progress=False)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert r.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "step_00000004.tmp").is_dir()  # the torn write
    assert latest_checkpoint(out).name == "step_00000002"
    result = train(_cfg(), out, progress=False)
    assert result.step == 6
    assert [r["step"] for r in result.history] == [3, 4, 5, 6]  # resumed, not started over
    assert _same(_weights(straight / "model.safetensors"), _weights(out / "model.safetensors"))


def test_keeps_last_k_checkpoints(straight):
    kept = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert kept == ["step_00000004", "step_00000006"]


def test_grad_accumulation_same_step_smaller_micro_batches(straight, tmp_path):
    seen = []
    cfg = _cfg(grad_accum=2)
    from anydit.model import mmdit

    forward = mmdit.MMDiT.forward

    def spy(self, tokens, times):
        seen.append(next(iter(tokens.values())).shape[0])
        return forward(self, tokens, times)

    mmdit.MMDiT.forward = spy
    try:
        train(cfg, tmp_path, progress=False)
    finally:
        mmdit.MMDiT.forward = forward
    assert set(seen) == {4}  # micro-batches of 8 / 2
    assert _same(
        _weights(straight / "model.safetensors"), _weights(tmp_path / "model.safetensors"), 1e-6
    )


def test_non_finite_losses_skip_then_stop(tmp_path, monkeypatch):
    import anydit.train.step as step
    from anydit.flow import Loss

    real = step.training_objective
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls["n"] += 1
        return Loss(loss.total * float("nan"), loss.parts) if calls["n"] in (2, 3) else loss

    monkeypatch.setattr(step, "training_objective", flaky)
    with pytest.warns(UserWarning, match="non-finite loss; step skipped"):
        result = train(_cfg(steps=3), tmp_path / "a", progress=False)
    assert result.step == 3 and calls["n"] == 5

    monkeypatch.setattr(
        step, "training_objective", lambda *a, **k: Loss(real(*a, **k).total * float("inf"), {})
    )
    with (
        pytest.warns(UserWarning),
        pytest.raises(FloatingPointError, match="3 non-finite losses in a row"),
    ):
        train(_cfg(steps=3, max_bad_steps=3), tmp_path / "b", progress=False)


def test_unwritable_output_fails_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="output folder .* cannot be written"):
        train(_cfg(), blocker / "run", progress=False)


def test_tensorboard_and_sample_grids(tmp_path):
    train(_cfg(steps=2, tensorboard=True, sample_every=2), tmp_path, progress=False)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "samples" / "image_step00000002.png").is_file()
    record = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    for key in ("loss/audio", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "memory_mb"):
        assert key in record


def test_compile_option_compiles_blocks():
    from anydit.train.distributed import DistInfo, parallelize

    model = anydit.MMDiT(_cfg().modalities, _cfg().model)
    parallelize(model, DistInfo(), compile=False)
    assert model.blocks[0]._compiled_call_impl is None
    parallelize(model, DistInfo(), compile=True)
    assert model.blocks[0]._compiled_call_impl is not None


def test_bf16_precision_changes_the_numbers(tmp_path):
    a = train(_cfg(steps=2), tmp_path / "fp32", progress=False).history[-1]["loss"]
    b = train(_cfg(steps=2, precision="bf16"), tmp_path / "bf16", progress=False).history[-1][
        "loss"
    ]
    assert a != b and abs(a - b) < 0.05 * abs(a)


def test_schedules():
    from anydit.train.loop import lr_lambda

    cosine = lr_lambda(_cfg(steps=100, warmup=10).train)
    constant = lr_lambda(_cfg(steps=100, warmup=10, schedule="constant").train)
    assert cosine(0) == pytest.approx(0.1) and constant(4) == pytest.approx(0.5)  # warm-up
    assert cosine(10) == pytest.approx(1.0) and cosine(55) == pytest.approx(0.5)
    assert cosine(100) == pytest.approx(0.0, abs=1e-12)
    # a quarter of the way through the decay: cosine, not linear (0.75)
    assert cosine(32.5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert constant(100) == 1.0


def test_weight_decay_and_seed_change_the_weights(straight, tmp_path):
    ref = _weights(straight / "model.safetensors")
    train(_cfg(weight_decay=0.5), tmp_path / "wd", progress=False)
    train(_cfg(seed=1), tmp_path / "seed", progress=False)
    assert not _same(ref, _weights(tmp_path / "wd" / "model.safetensors"), 1e-7)
    assert not _same(ref, _weights(tmp_path / "seed" / "model.safetensors"), 1e-7)


def test_device_option():
    from anydit.train.distributed import setup

    assert setup("cpu").device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.device: expected 'cpu' or 'auto'"):
            setup("cuda")


def test_frozen_streams_stay_bit_identical(tmp_path):
    """train.freeze: the named streams' weights (and their EMA) do not move; the rest does."""
    from anydit.run_config import config_from_tree
    from anydit.train.loop import train

    tree = {
        "data": {"source": "digits"},
        "model": {"preset": "debug", "depth": 1},
        "train": {"steps": 3, "batch_size": 8, "warmup": 1, "freeze": ["text", "label"]},
    }
    cfg = config_from_tree(tree)
    torch.manual_seed(cfg.train.seed)
    init = anydit.MMDiT(cfg.modalities, cfg.model).state_dict()
    train(cfg, tmp_path / "run", resume=False, progress=False)
    final = anydit.load_model(tmp_path / "run" / "model.safetensors")
    streams = {k: final.stream_of(k) for k in init}
    assert {"text", "label", "image", "audio", "shared"} <= set(streams.values())
    after = final.state_dict()
    for k, v in init.items():
        if streams[k] in ("text", "label"):
            assert torch.equal(after[k], v), k
    moved = [k for k, v in init.items() if streams[k] == "image" and not torch.equal(after[k], v)]
    assert moved  # the image stream trained
    with pytest.raises(anydit.config.ConfigError, match=r"train.freeze: expected names among"):
        config_from_tree({**tree, "train": {"freeze": ["txt"]}})


def test_frozen_run_resumes_exactly(tmp_path):
    import shutil

    tree = {
        "data": {"source": "digits"},
        "model": {"preset": "debug", "depth": 1},
        "train": {"steps": 4, "batch_size": 8, "warmup": 1, "freeze": ["text"]},
    }
    cfg = config_from_tree(tree, ["train.checkpoint_every=2", "train.log_every=1"])
    train(cfg, tmp_path / "a", resume=False, progress=False)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "a" / "checkpoints" / "step_00000002",
        tmp_path / "b" / "checkpoints" / "step_00000002",
    )
    result = train(cfg, tmp_path / "b", resume=True, progress=False)  # trainable weights only
    assert [r["step"] for r in result.history] == [3, 4]  # resumed, not started over
    a = anydit.load_model(tmp_path / "a" / "model.safetensors").state_dict()
    b = anydit.load_model(tmp_path / "b" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
