"""Sampling speed and quality against steps, solver and time shift, on a trained digits model.

    python benchmarks/sampling.py --checkpoint runs/demo [--out benchmarks/sampling.json]

Speed: samples/s of label -> image (200 samples in one batch) at 8, 16, 32 and 64 model
evaluations per sample (Euler 8-64 steps; Heun and midpoint, two evaluations a step, 4-32).
Quality: for each solver x steps x shift, the judges' accuracy on label -> image and
label -> audio and the Frechet distances in the judges' feature spaces (``anydit.eval``'s
metrics, same seeds), so a user can pick the cheapest setting that keeps quality. Guidance and
its interval default to the demo's for labels (1.5 on [0.3, 1]).
"""

from __future__ import annotations

import argparse
import json
import time

STEPS = {"euler": (8, 16, 32, 64), "heun": (4, 8, 16, 32), "midpoint": (4, 8, 16, 32)}
SHIFTS = (1.0, 3.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="model.safetensors or a run folder")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--guidance-interval", type=float, nargs=2, default=(0.3, 1.0))
    ap.add_argument("--n-per-class", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/sampling.json")
    args = ap.parse_args()

    from pathlib import Path

    import torch

    import anydit
    from anydit.eval.metrics import evaluate_digits

    path = Path(args.checkpoint)
    model = anydit.load_model(path / "model.safetensors" if path.is_dir() else path)
    n = 10 * args.n_per_class
    labels = torch.arange(10).repeat_interleave(args.n_per_class)  # (n,)
    rows = []
    for solver, solver_steps in STEPS.items():
        for steps in solver_steps:
            for shift in SHIFTS:
                t0 = time.perf_counter()
                anydit.sample(
                    model,
                    {"image": "generate", "label": labels},
                    n=n,
                    steps=steps,
                    solver=solver,
                    guidance=args.guidance,
                    guidance_interval=tuple(args.guidance_interval),
                    shift=shift,
                )
                seconds = time.perf_counter() - t0
                m = evaluate_digits(
                    model,
                    n_per_class=args.n_per_class,
                    steps=steps,
                    solver=solver,
                    guidance=args.guidance,
                    guidance_interval=tuple(args.guidance_interval),
                    tasks=("label_to_image", "label_to_audio"),
                    shift=shift,
                )
                row = {
                    "solver": solver,
                    "steps": steps,
                    "evals": steps * (1 if solver == "euler" else 2),
                    "shift": shift,
                    "samples_per_s": n / seconds,
                    **{
                        k: m[k]
                        for k in ("label_to_image", "label_to_audio", "fid_image", "fid_audio")
                    },
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nguidance {args.guidance} on {args.guidance_interval}, {n} samples per task\n")
    print(
        "| solver | steps | model evals | shift | samples/s (label -> image) | label -> image "
        "| label -> audio | FID image | FID audio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['solver']} | {r['steps']} | {r['evals']} | {r['shift']:g} | "
            f"{r['samples_per_s']:.0f} | {100 * r['label_to_image']:.1f}% | "
            f"{100 * r['label_to_audio']:.1f}% | {r['fid_image']:.2f} | {r['fid_audio']:.2f} |"
        )
    with open(args.out, "w") as f:
        json.dump({"checkpoint": str(args.checkpoint), "guidance": args.guidance, "rows": rows}, f)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
