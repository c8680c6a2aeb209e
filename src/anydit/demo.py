"""``anydit demo``: one model learns four modalities of the built-in digits, then does every
cross-modal task with them, within a wall-clock budget.

The step count is fitted to the budget: a few timed steps measure this machine, and the run
is given as many steps as fit (minus a reserve for evaluation and the gallery). The schedule is
then fixed, so a resumed demo continues the same run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import yaml

from anydit.config import Config, SampleConfig, from_dict
from anydit.run_config import config_from_tree

# Why these values: the digits are tiny (49 tokens in all), so a narrow, shallow model sees
# many more samples in ten minutes than a wide one, and that is what the metrics reward.
DEMO_TREE = {
    "data": {"source": "digits"},
    "model": {"preset": "small", "width": 128, "depth": 4, "heads": 2, "head_dim": 64},
    "train": {
        "batch_size": 128,
        "lr": 1e-3,
        "warmup": 100,
        "schedule": "cosine",
        "ema": 0.995,
        "precision": "bf16",
        "log_every": 25,
        "checkpoint_every": 200,
    },
}
EVAL_RESERVE_S = 130.0  # evaluation (8 tasks x 200 samples x 32 steps, guided) and gallery
# Evaluation guidance per given modality, off while t < 0.3 (near noise, where guidance narrows
# diversity most). Labels are the condition the model learns best (label -> image 90% with no
# guidance), so they need least; captions, images, speech and joint agreement need more. On
# one 10-minute model, 2.5 everywhere gave label -> image 99.0% at 0.78 of the real per-class
# diversity; 1.5 for labels gave 96.5% at 0.87. Joint agreement on three 10-minute models:
# 81.5-82.5% at 2.5, 79.5-84.5% at 3, 83.0-85.5% at 4, 85.5-87.0% at 5.
GUIDANCE = {"label": 1.5, "text": 2.5, "image": 2.5, "audio": 2.5, "joint": 4.0}
GUIDANCE_INTERVAL = (0.3, 1.0)
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


def demo_config(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The demo's config; ``overrides`` are ``key=value`` strings as for ``--set``."""
    from anydit.data.digits import digits_modalities

    tree = dict(DEMO_TREE)
    tree["modalities"] = [
        {**dataclasses.asdict(m), **ROLE_RATES[m.name]} for m in digits_modalities()
    ]
    return config_from_tree(tree, overrides)


def time_per_step(cfg: Config, steps: int = 6) -> float:
    """Seconds per training step of ``cfg`` on this machine (median of a few, after warm-up):
    the training step itself (``train.step``), on real batches."""
    import torch

    from anydit.data.sources import build_dataset, make_collate
    from anydit.model import MMDiT
    from anydit.train.optim import make_optimizer
    from anydit.train.step import forward_backward, micro_inputs

    model = MMDiT(cfg.modalities, cfg.model)
    opt = make_optimizer(model.parameters(), 1e-4)
    data = build_dataset(cfg.data, "train")
    batch, present = make_collate(model.modalities)([data[i] for i in range(cfg.train.batch_size)])
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        micro = micro_inputs(model, batch, present, cfg.flow, gen)
        forward_backward(model, model, micro, cfg.train.precision)
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[2:])[len(times[2:]) // 2]


def demo_sampling(
    guidance: float | dict[str, float] | None = None,
    guidance_interval: tuple[float, float] | None = None,
) -> SampleConfig:
    """The demo's evaluation settings: 32 Euler steps, confidence-ordered unmasking, guidance
    per task source within the interval."""
    return SampleConfig(
        steps=32,
        unmasking="confidence",
        guidance=dict(GUIDANCE) if guidance is None else guidance,
        guidance_interval=guidance_interval or GUIDANCE_INTERVAL,
    )


def run_demo(
    out: Path,
    minutes: float = 10.0,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = True,
    progress: bool = True,
    guidance: float | dict[str, float] | None = None,
    guidance_interval: tuple[float, float] = GUIDANCE_INTERVAL,
    eval_per_class: int = 20,
) -> dict:
    """Train, evaluate and write the gallery into ``out``; returns the metrics."""
    from anydit.eval.report import run_eval
    from anydit.model import load_model
    from anydit.storage import check_writable
    from anydit.train.loop import train

    start = time.perf_counter()
    check_writable(out)
    saved = out / "config.yaml"
    if resume and saved.is_file():
        cfg = from_dict(Config, yaml.safe_load(saved.read_text()))
        print(f"resuming the demo in {out} ({cfg.train.steps} steps in all)")
    else:
        cfg = demo_config(overrides)
        if not any(o.split("=", 1)[0].strip() == "train.steps" for o in overrides):
            per_step = time_per_step(cfg)
            budget = max(0.0, minutes * 60 - EVAL_RESERVE_S - (time.perf_counter() - start))
            cfg.train.steps = max(MIN_STEPS, int(budget / per_step))
            print(
                f"{per_step:.3f} s per step here: "
                f"{cfg.train.steps} steps fit in {minutes:g} minutes"
            )
    result = train(cfg, out, resume=resume, progress=progress)
    model = load_model(result.model_path)
    metrics = run_eval(
        model,
        out,
        n_per_class=eval_per_class,
        config=demo_sampling(guidance, guidance_interval),
        gallery=True,
        progress=progress,
    )
    wall = time.perf_counter() - start
    metrics["wall_seconds"] = wall
    metrics["train_steps"] = result.step
    print(f"demo done in {wall / 60:.1f} minutes; everything is in {out}")
    return metrics
