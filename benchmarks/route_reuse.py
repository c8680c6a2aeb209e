"""Routing reuse (``sample.route_reuse``, MoDE's routing cache) on a model with routers,
measured: for each threshold, the share of network calls whose routers ran, samples/s of
label -> image (200 samples, the demo's 32 steps, fp32), sampling FLOPs against the dense
network (dynamic width), and the demo's 13 judge accuracies (``evaluate_digits`` with the
demo's sampler settings, ``--per-class`` samples per digit). Every number from this one run.

    python benchmarks/route_reuse.py --checkpoint runs/demo-slim [--thresholds 0,0.05,0.1,0.25]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a model file or run folder with routers")
    ap.add_argument("--thresholds", default="0,0.05,0.1,0.25", help="route_reuse values")
    ap.add_argument("--per-class", type=int, default=20, help="evaluation samples per digit")
    ap.add_argument("--out", default="benchmarks/route_reuse.json")
    args = ap.parse_args()

    import torch

    import anydit
    from anydit.demo import TASK_SAMPLING, demo_sampling
    from anydit.eval.metrics import TASKS, evaluate_digits
    from anydit.sampling import settings

    path = Path(args.checkpoint)
    model = anydit.load_model(path / "model.safetensors" if path.is_dir() else path)
    labels = torch.arange(10).repeat_interleave(20)
    rows = {}
    for threshold in [float(t) for t in args.thresholds.split(",")]:
        config = anydit.SampleConfig(
            steps=32, guidance=1.5, guidance_interval=(0.3, 1.0), route_reuse=threshold
        )
        task = {"image": "generate", "label": labels}
        anydit.sample(model, {"image": "generate", "label": labels[:10]}, n=10, config=config)
        stats: dict = {}
        start = time.perf_counter()
        anydit.sample(model, task, n=200, config=config, stats=stats)
        speed = 200 / (time.perf_counter() - start)
        calls = stats.get("route_calls", 0)
        metrics = evaluate_digits(
            model,
            n_per_class=args.per_class,
            config=settings(demo_sampling(), route_reuse=threshold),
            per_task=TASK_SAMPLING,
            progress=False,
        )
        metrics.pop("samples")
        metrics["mean_accuracy"] = sum(metrics[t] for t in TASKS) / len(TASKS)
        rows[f"{threshold:g}"] = {
            "samples_per_s": speed,
            "routed_share": stats["routings"] / calls if calls else 1.0,
            **{k: v for k, v in metrics.items() if isinstance(v, float)},
        }
        print(threshold, json.dumps({k: round(v, 4) for k, v in rows[f"{threshold:g}"].items()}))
    Path(args.out).write_text(json.dumps(rows, indent=2))
    tasks = [*TASKS, "mean_accuracy"]
    print("\n| route_reuse | calls routed | samples/s | sampling FLOPs | "
          + " | ".join(t.replace("_to_", " → ") for t in tasks) + " |")  # fmt: skip
    print("|---|" + "---:|" * (3 + len(tasks)))
    for name, r in rows.items():
        accs = " | ".join(f"{100 * r[t]:.1f}%" for t in tasks)
        print(f"| {name} | {100 * r['routed_share']:.0f}% | {r['samples_per_s']:.1f} | "
              f"{r.get('flops_share', 1.0):.2f}x | {accs} |")  # fmt: skip


if __name__ == "__main__":
    main()
