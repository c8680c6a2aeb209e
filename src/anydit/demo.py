"""``anydit demo``: one model learns four modalities of the built-in digits, then does every
cross-modal task with them.

A fixed recipe: a fixed number of steps and a seed (``--seed`` sets both the training seed and
the data pairing seed, and the evaluation's sampling seed), so the same command gives the same
numbers on any machine, up to floating-point differences between CPUs; a slower machine takes
longer (the progress bar says how long). ``--minutes`` instead fits the step count to a
wall-clock budget (a few timed steps measure this machine), for a time-boxed run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from anydit.config import Config, SampleConfig, from_dict
from anydit.errors import ConfigError
from anydit.eval.metrics import TaskSampling, override_tasks
from anydit.run_config import config_from_tree

# Why these values: the digits are tiny (19 tokens in all: 4 image, 1 label, 6 caption, 8
# speech), so a narrow, shallow model sees many more samples in ten minutes than a wide one, and
# that is what the metrics reward.
DEMO_STEPS = 2000
# Data parallel on two local processes (gloo), one thread each: a step of this small model is
# small kernels and Python, so a second thread in one process adds little, and a second process
# doubles the samples per second (see docs/demo.md). Two processes compute what one process
# computes for the same global batch, so --processes 1 gives the same model (up to rounding).
DEMO_PROCESSES = 2
DEMO_TREE = {
    "data": {"source": "digits"},
    "model": {"preset": "small", "width": 128, "depth": 4, "heads": 2, "head_dim": 64},
    "train": {
        "steps": DEMO_STEPS,
        "batch_size": 256,
        "lr": 1e-3,
        "warmup": 100,
        "schedule": "cosine",
        "ema": 0.995,
        "precision": "fp32",
        "log_every": 25,
        "checkpoint_every": 200,
    },
}
EVAL_RESERVE_S = 130.0  # --minutes: evaluation (13 tasks x 200 samples) and gallery
# Evaluation guidance per given modality, off while t < 0.3 (near noise, where guidance narrows
# diversity most). Labels are the condition the model learns best (label -> image 90% with no
# guidance), so they need least; captions, images, speech and joint agreement need more. On
# one 10-minute model, 2.5 everywhere gave label -> image 99.0% at 0.78 of the real per-class
# diversity; 1.5 for labels gave 96.5% at 0.87. Joint agreement on three 10-minute models:
# 81.5-82.5% at 2.5, 79.5-84.5% at 3, 83.0-85.5% at 4, 85.5-87.0% at 5.
GUIDANCE = {"label": 1.5, "text": 2.5, "image": 2.5, "audio": 2.5, "joint": 4.0}
GUIDANCE_INTERVAL = (0.3, 1.0)
# Per-task settings over GUIDANCE, chosen on the val split (held-out images, unheard voices).
# A label is one token: one step reveals it from the (guided) prediction at t = 0, so its
# guidance must cover t = 0. A caption is at most 6 words: 6 steps reveal one word each.
_LABEL_TARGET = TaskSampling(steps=1, interval=(0.0, 1.0))
_TEXT_TARGET = TaskSampling(steps=6, interval=(0.0, 1.0))
_CAPTION_VIA = TaskSampling(steps=6, interval=(0.0, 1.0), via=("label",), first=("label",))
TASK_SAMPLING: dict[str, TaskSampling] = {
    "image_to_label": _LABEL_TARGET,
    "text_to_label": _LABEL_TARGET,
    "audio_to_label": _LABEL_TARGET,
    "label_to_text": _TEXT_TARGET,
    # Speech and images are paired only through the digit: sampling the label with the target
    # decides the digit once (val, one model: image -> audio 87% -> 95%, image -> text 89% ->
    # 97%, audio -> text 83.5% -> 93.5%).
    "image_to_audio": TaskSampling(via=("label",)),
    # The same the other way round (val, the five demo models of the README's table: audio ->
    # image 83-91.5%, mean 88.3% -> 86-94.5%, mean 90.0%).
    "audio_to_image": TaskSampling(via=("label",)),
    # The captions' label first, then the words given it (``first``; test, the seed-0 / seed-2
    # models of this CPU: image -> text 96.5 / 98.0% -> 97.5 / 99.0%, audio -> text 99.0 /
    # 97.5% -> 100 / 99.0%; the pruned model of docs/compress.md, val: 93.8% -> 99.0%). For
    # image <-> speech it was no better (test: -1.5 / +0.5 and -1.5 / +1.5 points).
    "audio_to_text": _CAPTION_VIA,
    "image_to_text": _CAPTION_VIA,
    # Diversity: val, one model, guidance 1.5: Euler 16 steps on (0.3, 1) gave 99.5% at 0.85
    # of the real diversity, Heun 8 steps on (0.6, 1) 97% at 0.93.
    "label_to_image": TaskSampling(steps=8, solver="heun", interval=(0.6, 1.0)),
}
SAMPLE_STEPS = 16  # Euler steps of images and speech
MIN_STEPS = 50


# Role rates per modality. The demo's tasks are one-to-one conditionals with the rest dropped,
# and joint generation: labels are generated half the time (image -> label is the hardest
# conditional to learn), text is dropped most (it gives the digit away, so a model that often
# sees it never learns to read images or audio), image and audio are generated 40% of the time
# (image, audio and label are generated together in 8% of samples).
ROLE_RATES = {
    "image": {"p_given": 0.4, "p_drop": 0.2},
    "label": {"p_given": 0.3, "p_drop": 0.2},
    "text": {"p_given": 0.25, "p_drop": 0.45},
    "audio": {"p_given": 0.35, "p_drop": 0.25},
}
# Other per-modality fields, each measured on val in the same ~11 minutes of training:
# 4x4 image patches (4 tokens, not 16) make a step 1.6x faster, so 1,200 steps instead of 800:
# label -> image 69% -> 98.5%, audio -> image 77% -> 88.5%, label -> audio 58% -> 75.5%.
# Speech time shift 3 (more training near noise, where the spoken digit is decided):
# label -> audio 75.5% -> 95.5%, image -> audio 63.5% -> 82%, but audio -> image 88.5% -> 79.5%.
# Label time shift 3: a one-token label is either revealed or masked, and only masked labels
# are scored, so this scores 70% of generated labels instead of 50% (and shows the label to the
# other streams less often). Val, seed 2, one thread each, the same 2,000 steps: speech ->
# label 95.7% -> 99.7%, speech -> image 93.3% -> 97.5% (600 samples each), label -> audio
# 93% -> 99.5%, mean of the 13 tasks 96.0% -> 98.2%.
MODALITY_TREE: dict[str, dict] = {
    "image": {"patch": 4},
    "audio": {"shift": 3.0},
    "label": {"shift": 3.0},
}


def demo_config(overrides: list[str] | tuple[str, ...] = (), seed: int = 0) -> Config:
    """The demo's config with training and data seed ``seed``; ``overrides`` are
    ``key=value`` strings as for ``--set`` (applied last)."""
    from anydit.data.digits import digits_modalities

    tree = dict(DEMO_TREE)
    tree["train"] = {**DEMO_TREE["train"], "seed": seed}
    tree["data"] = {**DEMO_TREE["data"], "seed": seed}
    tree["modalities"] = [
        {**dataclasses.asdict(m), **ROLE_RATES[m.name], **MODALITY_TREE.get(m.name, {})}
        for m in digits_modalities()
    ]
    return config_from_tree(tree, overrides)


def time_per_step(cfg: Config, processes: int = 1, steps: int = 6) -> float:
    """Seconds per training step of ``cfg`` on this machine (median of a few, after warm-up):
    the training step itself (``train.step``) on real batches of one process's share of the
    batch, with its share of the threads (``processes`` run side by side; their gradient
    exchange, small for the demo's model, is not counted)."""
    import os

    import torch

    from anydit.data.sources import build_dataset, make_collate
    from anydit.model import MMDiT
    from anydit.train.optim import make_optimizer
    from anydit.train.step import forward_backward, micro_inputs

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
    try:
        model = MMDiT(cfg.modalities, cfg.model)
        opt = make_optimizer(model.parameters(), 1e-4)
        data = build_dataset(cfg.data, "train", cfg.modalities)
        share = cfg.train.batch_size // processes
        batch, present = make_collate(model.modalities)([data[i] for i in range(share)])
        gen = torch.Generator().manual_seed(0)
        times = []
        for _ in range(steps + 2):
            t0 = time.perf_counter()
            micro = micro_inputs(model, batch, present, cfg.flow, gen)
            forward_backward(model, model, micro, cfg.train.precision)
            opt.step()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return sorted(times[2:])[len(times[2:]) // 2]


def demo_sampling(
    guidance: float | dict[str, float] | None = None,
    guidance_interval: tuple[float, float] | None = None,
) -> SampleConfig:
    """The demo's evaluation settings: ``SAMPLE_STEPS`` Euler steps, confidence-ordered
    unmasking, guidance per task source within the interval."""
    return SampleConfig(
        steps=SAMPLE_STEPS,
        unmasking="confidence",
        guidance=dict(GUIDANCE) if guidance is None else guidance,
        guidance_interval=guidance_interval or GUIDANCE_INTERVAL,
    )


def starting_config(
    out: Path,
    make: Callable[..., Config],
    overrides: list[str] | tuple[str, ...],
    seed: int | None,
    minutes: float | None,
    resume: bool,
    processes: int,
    start: float,
    reserve: float | None = None,
    name: str = "demo",
) -> Config:
    """The config a demo trains with: the saved one of a demo in ``out`` being resumed
    (another ``seed`` is refused), else ``make(overrides, seed)`` with its step count fitted
    to ``minutes`` of wall time less ``reserve`` seconds (default ``EVAL_RESERVE_S``), unless
    ``train.steps`` is set."""
    saved = out / "config.yaml"
    if resume and saved.is_file():
        cfg = from_dict(Config, yaml.safe_load(saved.read_text()))
        if seed is not None and seed != cfg.train.seed:
            raise ConfigError(
                f"demo: {out} holds a demo with seed {cfg.train.seed}, not {seed}; give another "
                "--out, or --no-resume to start it again"
            )
        print(f"resuming the demo in {out} ({cfg.train.steps} steps in all, seed {cfg.train.seed})")
        return cfg
    cfg = make(overrides, 0 if seed is None else seed)
    fixed = any(o.split("=", 1)[0].strip() == "train.steps" for o in overrides)
    if minutes is not None and not fixed:
        per_step = time_per_step(cfg, processes)
        reserve = EVAL_RESERVE_S if reserve is None else reserve  # (read at call time)
        budget = max(0.0, minutes * 60 - reserve - (time.perf_counter() - start))
        cfg.train.steps = max(MIN_STEPS, int(budget / per_step))
        print(f"{per_step:.3f} s per step here: {cfg.train.steps} steps fit in {minutes:g} minutes")
    else:
        print(f"{name}: {cfg.train.steps} training steps, seed {cfg.train.seed}")
    return cfg


def run_demo(
    out: Path,
    minutes: float | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = True,
    progress: bool = True,
    guidance: float | dict[str, float] | None = None,
    guidance_interval: tuple[float, float] | None = None,
    eval_per_class: int = 20,
    seed: int | None = None,
    per_task: dict[str, TaskSampling] | None = None,
    processes: int = DEMO_PROCESSES,
) -> dict:
    """Train, evaluate and write the gallery into ``out``; returns the metrics.

    The recipe is fixed (``DEMO_STEPS`` steps, ``seed``, 0 when not given), trained data
    parallel on ``processes`` local processes (the same model as one process, up to rounding);
    ``minutes`` instead fits the step count to that wall-clock budget on this machine. A folder
    that holds a demo is resumed with its own seed (another ``seed`` is refused). ``guidance`` and
    ``guidance_interval`` replace the per-source settings and the same fields of every task's
    own settings (``TASK_SAMPLING``, or ``per_task``); the tasks' other settings stay.
    """
    from anydit.eval.report import run_eval
    from anydit.model import load_model
    from anydit.storage import check_writable
    from anydit.train.distributed import run_local
    from anydit.train.loop import train

    start = time.perf_counter()
    check_writable(out)
    cfg = starting_config(out, demo_config, overrides, seed, minutes, resume, processes, start)
    run_local(train, (cfg, out, resume, progress), processes)
    trained = time.perf_counter()
    model = load_model(out / "model.safetensors")
    seed = cfg.train.seed  # evaluation samples with the training seed, fresh or resumed
    per_task = override_tasks(
        TASK_SAMPLING if per_task is None else per_task,
        guidance=guidance,
        interval=guidance_interval,
    )
    metrics = run_eval(
        model,
        out,
        n_per_class=eval_per_class,
        config=demo_sampling(guidance, guidance_interval),
        gallery=True,
        progress=progress,
        seed=seed,
        per_task=per_task,
    )
    wall = time.perf_counter() - start
    timing = {
        "seed": seed,
        "train_steps": cfg.train.steps,
        "processes": processes,
        "train_seconds": trained - start,  # this session's part of training (resumes add up)
        "eval_seconds": time.perf_counter() - trained,  # evaluation and gallery
        "wall_seconds": wall,
    }
    metrics.update(timing)
    (out / "demo.json").write_text(json.dumps(timing, indent=2))
    print(
        f"demo done in {wall / 60:.1f} minutes (training {timing['train_seconds'] / 60:.1f}, "
        f"evaluation and gallery {timing['eval_seconds'] / 60:.1f}); everything is in {out}"
    )
    return metrics
