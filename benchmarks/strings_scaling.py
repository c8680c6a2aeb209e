"""How the four-word digit-strings tasks move with training steps, far past what a 2-core CPU
trains in 15 minutes: meant for one GPU. Trains the recipe (1-frame audio tokens, audio loss
weight 8 and shift 3: docs/video.md) once for ``--steps`` (or as many as ``--seconds`` give,
measured over a short first run), keeps ``--evals`` evenly spaced checkpoints and scores each
one's EMA weights on every task (``evaluate_strings``, 100 test clips, the demo's sampling).
Epochs hold ``data.strings_clips`` 25,600 clips, so DataLoader workers start once per 200
steps instead of once per 10. ``--runs`` trains several recipes instead, each for the same
steps and scored once at its end: ``NAME:KEY=VALUE;KEY=VALUE`` (overrides as for ``--set``).
The step count ``--seconds`` fits undershoots the time (250 s asked gave 380 s on an H200:
the short first run misses the epochs' worker start-up) and ignores ``--runs``' overrides.

    python benchmarks/strings_scaling.py --device cuda --seconds 250
    python benchmarks/strings_scaling.py --device cuda --steps 1400 \\
        --runs 'lr1e-3:train.lr=0.001' 'lr2e-3:train.lr=0.002'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RECIPE = [
    "modalities.audio.patch=1",
    "modalities.audio.rate=1.0",
    "modalities.audio.loss_weight=8",
    "modalities.audio.shift=3",
    "train.tensorboard=false",
    "data.strings_clips=25600",
]


def train_run(work: Path, steps: int, overrides: list[str], seed: int) -> float:
    """Train the recipe with ``overrides`` into ``work`` for ``steps``; the wall seconds."""
    from anydit.demo_strings import strings_config
    from anydit.train.loop import train

    cfg = strings_config([*RECIPE, *overrides, f"train.steps={steps}"], seed=seed)
    start = time.perf_counter()
    train(cfg, work, False, False)
    return time.perf_counter() - start


def score(weights: Path, device: str, clips: int, seed: int) -> dict:
    """Every digit-strings task on ``clips`` test clips, with the seconds it took."""
    from anydit.demo_strings import SAMPLING
    from anydit.eval.strings_tasks import STRING_TASKS, evaluate_strings
    from anydit.model import load_model

    model = load_model(weights).to(device).eval()
    start = time.perf_counter()
    got = evaluate_strings(model, clips, SAMPLING, seed=seed, tasks=STRING_TASKS)
    return {"eval_s": time.perf_counter() - start, **{k: round(v, 4) for k, v in got.items()}}


def seconds_per_step(work: Path, base: list[str], seed: int, steps: int = 60) -> float:
    """Median seconds a step over a short run, its first log interval left out. It
    undershoots a long run's: 0.044 s measured, 0.068 s over 5,600 steps on an H200."""
    from anydit.demo_strings import strings_config

    train_run(work, steps, [*base, f"train.log_every={steps // 6}"], seed)
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "samples_per_s" in r]
    rates = sorted(r["samples_per_s"] for r in rows[1:])
    batch = strings_config([*RECIPE, *base]).train.batch_size
    return batch / rates[len(rates) // 2]


def parse_run(spec: str) -> tuple[str, list[str]]:
    """``NAME:KEY=VALUE;KEY=VALUE`` -> (name, overrides); the steps are the benchmark's."""
    name, _, sets = spec.partition(":")
    extra = [x.strip() for x in sets.split(";") if x.strip()]
    if not name.strip():
        raise SystemExit(f"--runs {spec!r}: give each run a name, NAME:KEY=VALUE;...")
    ours = ("train.steps", "train.checkpoint_every")
    fixed = [x for x in extra if x.split("=")[0].strip() in ours]
    if fixed:
        raise SystemExit(f"--runs {spec!r}: {fixed} are the benchmark's (--steps)")
    return name.strip(), extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, help="training steps (instead of --seconds)")
    p.add_argument("--seconds", type=float, default=250.0, help="training time to fit (roughly)")
    p.add_argument("--evals", type=int, default=4, help="checkpoints scored, evenly spaced")
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="DataLoader processes (default: cores - 2)")
    p.add_argument("--runs", nargs="*", default=[], help="NAME:KEY=VALUE;... recipes")
    p.add_argument("--out", type=Path, help="default benchmarks/strings_scaling[_runs].json")
    args = p.parse_args()
    runs = [parse_run(spec) for spec in args.runs]
    if args.out is None:
        name = "strings_scaling_runs.json" if runs else "strings_scaling.json"
        args.out = Path(__file__).parent / name
    if args.steps is not None and not runs and args.steps % args.evals:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --evals {args.evals}")
    cores = max(0, (os.cpu_count() or 2) - 2)
    workers = args.workers if args.workers is not None else min(cores, 12)
    base = [f"train.device={args.device}", f"data.workers={workers}"]
    import torch

    results: dict = {
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "workers": workers,
        "recipe": RECIPE,
        "runs": [],
    }
    if torch.device(args.device).type == "cuda":
        results["gpu"] = torch.cuda.get_device_name()

    def save(row: dict) -> None:
        print(json.dumps(row), flush=True)
        results["runs"].append(row)
        args.out.write_text(json.dumps(results, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = args.steps
        if steps is None:
            per = seconds_per_step(work / "calibration", base, args.seed)
            steps = max(400, int(args.seconds / per) // 400 * 400)
            steps -= steps % args.evals
            results["seconds_per_step"] = per
        if runs:
            for name, extra in runs:
                run = [*base, *extra, f"train.checkpoint_every={steps}"]
                secs = train_run(work / name, steps, run, args.seed)
                got = score(work / name / "model.safetensors", args.device, args.clips, args.seed)
                save({"run": name, "overrides": extra, "steps": steps, "train_s": secs, **got})
            return
        every = max(1, steps // args.evals)
        keep = [f"train.checkpoint_every={every}", f"train.keep_checkpoints={args.evals}"]
        secs = train_run(work / "main", steps, [*base, *keep, "train.log_every=100"], args.seed)
        results["train_s"], results["steps"] = secs, steps
        for ckpt in sorted((work / "main" / "checkpoints").glob("step_*")):
            got = score(ckpt / "ema.safetensors", args.device, args.clips, args.seed)
            save({"step": int(ckpt.name.split("_")[1]), "of": steps, **got})


if __name__ == "__main__":
    main()
