"""The image -> label specialist the demo is compared with: the demo's network (same width,
depth, heads, recipe, two training processes) with only the image and label streams, trained
only on image -> label (image always given, label always generated) for the same wall time as a
demo's training,
then judged like the demo's image -> label (the same 200 test images, steps and seed; unguided,
as it never learns the label without the image).

usage: python scripts/specialist.py --demo-steps 2000 --out DIR [--seed N]
       python scripts/specialist.py --seconds S | --steps K --out DIR [--seed N]

``--seconds``: the training wall time to match (a demo's ``train_seconds``); the step count is
fitted to it from a few timed steps on this machine (as ``anydit demo --minutes`` does).
``--demo-steps N`` gives it the time of N demo steps instead (the ratio of the two step times,
measured here, times N: loading and logging overheads cancel). ``--steps`` fixes the count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from anydit.data.digits import digits_modalities, load_digit_images
from anydit.demo import (
    DEMO_PROCESSES,
    DEMO_TREE,
    MODALITY_TREE,
    TASK_SAMPLING,
    demo_config,
    demo_sampling,
    time_per_step,
)
from anydit.eval.metrics import _real_per_class, conditional_task
from anydit.model import load_model
from anydit.run_config import config_from_tree
from anydit.train.distributed import run_local
from anydit.train.loop import train


def specialist_config(steps: int, seed: int):
    """The demo's tree with two streams: image (always given) and label (always generated)."""
    mods = {
        m.name: {**dataclasses.asdict(m), **MODALITY_TREE.get(m.name, {})}
        for m in digits_modalities()
    }  # the demo's image stream: the same patches
    tree = {
        **DEMO_TREE,
        "train": {**DEMO_TREE["train"], "steps": steps, "seed": seed},
        "data": {**DEMO_TREE["data"], "seed": seed},
        "modalities": [
            {**mods["image"], "p_given": 1.0, "p_drop": 0.0},
            {**mods["label"], "p_given": 0.0, "p_drop": 0.0},
        ],
    }
    return config_from_tree(tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument(
        "--demo-steps",
        type=int,
        default=None,
        help="match the time of this many demo steps (both step times measured here, now)",
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = specialist_config(args.steps or 1, args.seed)
    if args.steps is None and args.demo_steps is not None:
        per_step = time_per_step(cfg, DEMO_PROCESSES, 12)
        demo_step = time_per_step(demo_config(), DEMO_PROCESSES, 12)
        cfg.train.steps = max(1, round(args.demo_steps * demo_step / per_step))
        print(
            f"{per_step:.3f} s per step (demo {demo_step:.3f}): {cfg.train.steps} steps take "
            f"the time of {args.demo_steps} demo steps"
        )
    elif args.steps is None:
        if args.seconds is None:
            parser.error("give --seconds, --demo-steps or --steps")
        per_step = time_per_step(cfg, DEMO_PROCESSES)
        cfg.train.steps = max(1, int(args.seconds / per_step))
        print(f"{per_step:.3f} s per step: {cfg.train.steps} steps in {args.seconds:.0f} s")
    start = time.perf_counter()
    run_local(train, (cfg, args.out, False, False), DEMO_PROCESSES)  # as the demo trains
    train_seconds = time.perf_counter() - start
    model = load_model(args.out / "model.safetensors")

    labels = torch.arange(10).repeat_interleave(20)  # as evaluate_digits: 20 per digit
    images, image_labels = load_digit_images("test")
    given = _real_per_class(images, image_labels, labels)  # (200, 1, 8, 8)
    # unguided: the specialist never sees the image dropped, so it has no unconditional
    own = {"image_to_label": replace(TASK_SAMPLING["image_to_label"], guidance=1.0)}
    judged = conditional_task(
        model, "image_to_label", {"image": given}, labels, demo_sampling(), own, args.seed
    )
    accuracy = float((judged["predicted"] == labels.numpy()).mean())
    report = {
        "steps": cfg.train.steps,
        "processes": DEMO_PROCESSES,
        "train_seconds": train_seconds,
        "image_to_label": accuracy,
        "seed": args.seed,
    }
    (args.out / "specialist.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
