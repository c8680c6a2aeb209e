"""Does the best learning rate move with the width? A sweep under the standard parametrisation
and under μP (``model.mup_base_width``), on the demo's digits task.

    python benchmarks/mup_sweep.py [--steps 300] [--out benchmarks/mup.json]

For widths 64 and 256 (head dim 32, so 2 and 8 heads; depth 2) and learning rates 3e-4 to
3e-2, trains the demo's any-to-any recipe (its modalities, role rates and shifts; batch 64,
cosine schedule, no EMA) with ``anydit.train`` and reports the any-to-any loss on the val split
(every draw of roles, times and noise fixed: the same 8 x 100 val inputs for every model). At
width 64 μP is the standard model (its base width), so that column is shared. Each run alone,
one process; the table is the val loss per learning rate, the best marked.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

WIDTHS = (64, 256)
LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
BASE = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/mup.json")
    args = ap.parse_args()

    import torch

    import anydit
    from anydit.data.digits import DigitsDataset
    from anydit.data.sources import make_collate
    from anydit.demo import demo_config
    from anydit.flow.objective import training_loss
    from anydit.train.loop import train

    val_items = list(DigitsDataset("val", seed=0))
    flow = demo_config().flow

    def val_loss(model) -> float:
        batch, present = make_collate(model.modalities)(val_items)
        losses = []
        with torch.no_grad():
            for s in range(8):
                gen = torch.Generator().manual_seed(s)
                losses.append(float(training_loss(model, batch, flow, present, gen).total))
        return sum(losses) / len(losses)

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for width in WIDTHS:
            for mup in (0, BASE):
                if width == BASE and mup:
                    continue  # μP at its base width is the standard model
                key = f"{'mup' if mup else 'standard'} {width}"
                results[key] = {}
                for lr in LRS:
                    cfg = demo_config(
                        [
                            f"model.width={width}",
                            "model.depth=2",
                            "model.head_dim=32",
                            f"model.heads={width // 32}",
                            f"model.mup_base_width={mup}",
                            "train.batch_size=64",
                            f"train.steps={args.steps}",
                            f"train.lr={lr}",
                            "train.warmup=20",
                            "train.ema=0",
                            "train.log_every=50",
                            f"train.checkpoint_every={args.steps}",
                            "train.tensorboard=false",
                        ]  # fmt: skip
                    )
                    run = Path(tmp) / f"{key.replace(' ', '_')}_{lr}"
                    result = train(cfg, run, resume=False, progress=False)
                    loss = val_loss(anydit.load_model(result.model_path))
                    results[key][str(lr)] = loss
                    print(f"{key} lr {lr:g}: val loss {loss:.4f}", flush=True)
    results["standard 64"]["note"] = "also μP 64 (the base width)"  # type: ignore[assignment]
    Path(args.out).write_text(json.dumps({"steps": args.steps, "losses": results}, indent=2))

    print("\n| parametrisation, width | " + " | ".join(f"lr {lr:g}" for lr in LRS) + " | best |")
    print("|---|" + "---:|" * (len(LRS) + 1))
    for key, row in results.items():
        losses = [row[str(lr)] for lr in LRS]
        best = min(range(len(LRS)), key=losses.__getitem__)
        cells = [f"**{v:.4f}**" if i == best else f"{v:.4f}" for i, v in enumerate(losses)]
        print(f"| {key} | " + " | ".join(cells) + f" | {LRS[best]:g} |")


if __name__ == "__main__":
    main()
