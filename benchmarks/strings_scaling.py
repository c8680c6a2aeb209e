"""How the four-word digit-strings tasks move with training steps, far past what a 2-core CPU
trains in 15 minutes: meant for one GPU. Trains the recipe (1-frame audio tokens, audio loss
weight 8 and shift 3: docs/video.md) once for ``--steps`` (or as many as ``--seconds`` give,
measured over a short first run), keeps ``--evals`` evenly spaced checkpoints and scores each
one's EMA weights on every task (``evaluate_strings``, 100 test clips, the demo's sampling).
Epochs hold ``data.strings_clips`` 25,600 clips, so DataLoader workers start once per 200
steps instead of once per 10. ``--runs`` trains several recipes instead, each scored once at
its end: ``NAME:KEY=VALUE;KEY=VALUE`` (overrides as for ``--set``), for ``--steps`` or its own
``train.steps``; ``--parallel`` trains and scores the runs side by side, one process each (one
thread, ``--workers`` DataLoader processes, default 1), which a GPU with spare cores takes at
nearly the speed of one; ``--keep DIR`` keeps each run's folder (its
``model.safetensors``). The step count ``--seconds`` fits undershoots the time (250 s asked
gave 380 s on an H200: the short first run misses the epochs' worker start-up) and ignores
``--runs``' overrides.

    python benchmarks/strings_scaling.py --device cuda --seconds 250
    python benchmarks/strings_scaling.py --device cuda --steps 1400 \\
        --runs 'lr1e-3:train.lr=0.001' 'lr2e-3:train.lr=0.002'
    python benchmarks/strings_scaling.py --device cuda --parallel --workers 1 \\
        --out benchmarks/strings_budget.json --runs \\
        'b32_lr2:train.batch_size=32;train.lr=0.002;train.steps=1150' ...   # docs/video.md
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
    """``NAME:KEY=VALUE;KEY=VALUE`` -> (name, overrides), ``train.steps`` among them if the run
    names its own (else ``--steps``'s)."""
    name, _, sets = spec.partition(":")
    extra = [x.strip() for x in sets.split(";") if x.strip()]
    if not name.strip():
        raise SystemExit(f"--runs {spec!r}: give each run a name, NAME:KEY=VALUE;...")
    fixed = [x for x in extra if x.split("=")[0].strip() == "train.checkpoint_every"]
    if fixed:
        raise SystemExit(f"--runs {spec!r}: {fixed} is the benchmark's (the run's steps)")
    for x in extra:
        key, _, value = x.partition("=")
        if key.strip() == "train.steps" and not (value.strip().isdigit() and int(value) > 0):
            raise SystemExit(f"--runs {spec!r}: train.steps must be an integer > 0, got {value!r}")
    return name.strip(), extra


def run_steps(extra: list[str], default: int | None) -> tuple[int | None, list[str]]:
    """A run's own ``train.steps`` if it names one (taken out of ``extra``), else ``default``."""
    own = [x for x in extra if x.split("=")[0].strip() == "train.steps"]
    rest = [x for x in extra if x not in own]
    return (int(own[-1].split("=", 1)[1]) if own else default), rest


def one_run(name: str, extra: list[str], steps: int, base: list[str], args, work: Path) -> dict:
    """Train one ``--runs`` recipe for ``steps`` and score its final weights: a result row."""
    run = [*base, *extra, f"train.steps={steps}", f"train.checkpoint_every={steps}"]
    secs = train_run(work / name, steps, run, args.seed)
    got = score(work / name / "model.safetensors", args.device, args.clips, args.seed)
    return {"run": name, "overrides": extra, "steps": steps, "train_s": secs, **got}


def side_by_side(specs: list[str], args, workers: int, save) -> None:
    """Each ``--runs`` spec in its own process (``--child``), one thread each; each row is
    saved as its run ends. A failed run stops the others."""
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = [
        "--device", args.device, "--clips", str(args.clips), "--seed", str(args.seed),
        "--workers", str(workers),
        *(["--steps", str(args.steps)] if args.steps is not None else []),
        *(["--keep", str(args.keep)] if args.keep is not None else []),
    ]  # fmt: skip
    procs = {
        spec: subprocess.Popen(
            [sys.executable, __file__, *common, "--child", spec], stdout=subprocess.PIPE, env=env
        )
        for spec in specs
    }
    while procs:
        time.sleep(1)
        for spec, proc in list(procs.items()):
            if proc.poll() is None:
                continue
            out = proc.stdout.read().decode() if proc.stdout else ""
            del procs[spec]
            if proc.returncode:
                for other in procs.values():
                    other.kill()
                raise SystemExit(f"--runs {spec!r} failed (exit {proc.returncode})")
            save(json.loads(out.strip().splitlines()[-1]))


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
    p.add_argument("--parallel", action="store_true", help="--runs side by side, a process each")
    p.add_argument("--keep", type=Path, help="keep each run's folder here (default: discard)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # --parallel: one run, its row to stdout
    p.add_argument("--out", type=Path, help="default benchmarks/strings_scaling[_runs].json")
    args = p.parse_args()
    cores = max(0, (os.cpu_count() or 2) - 2)
    workers = args.workers if args.workers is not None else min(cores, 12)
    if args.parallel and args.workers is None:
        workers = 1  # each run's own DataLoader processes, side by side
    base = [f"train.device={args.device}", f"data.workers={workers}"]
    if args.child:
        import torch

        torch.set_num_threads(1)
        name, extra = parse_run(args.child)
        steps, extra = run_steps(extra, args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            row = one_run(name, extra, steps, base, args, args.keep or Path(tmp))
        print(json.dumps(row), flush=True)
        return
    runs = [parse_run(spec) for spec in args.runs]
    names = [name for name, _ in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SystemExit(f"--runs: each run needs its own name; {twice} appear twice")
    if args.parallel and not runs:
        raise SystemExit("--parallel trains --runs side by side: give --runs")
    if args.parallel and args.steps is None:
        stepless = [n for n, extra in runs if run_steps(extra, None)[0] is None]
        if stepless:
            raise SystemExit(f"--parallel: give --steps or train.steps=N in runs {stepless}")
    if args.out is None:
        name = "strings_scaling_runs.json" if runs else "strings_scaling.json"
        args.out = Path(__file__).parent / name
    if args.steps is not None and not runs and args.steps % args.evals:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --evals {args.evals}")
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

    if args.parallel:
        side_by_side(args.runs, args, workers, save)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        steps = args.steps
        own = bool(runs) and all(run_steps(extra, None)[0] is not None for _, extra in runs)
        if steps is None and not own:
            per = seconds_per_step(work / "calibration", base, args.seed)
            steps = max(400, int(args.seconds / per) // 400 * 400)
            steps -= steps % args.evals
            results["seconds_per_step"] = per
        if runs:
            for name, extra in runs:
                run, extra = run_steps(extra, steps)
                save(one_run(name, extra, run, base, args, work))
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
