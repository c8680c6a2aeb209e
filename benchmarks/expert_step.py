"""The cost of a training step with experts, against dense, on the digits demo's model: each
variant's steps interleaved round by round in one process (one thread, as each of the demo's
two processes runs), so the machine's drift hits every variant alike. A step is what the
training loop does: forward and backward on one process's share of the batch (128 samples),
clip and update, EMA. Not counted: the gradient all-reduce between processes, which grows with
the parameters. Reports each variant's median seconds per step, the median of its per-round
ratio to dense, its parameters and its forward FLOPs per sample (``torch.utils.flop_counter``).

    python benchmarks/expert_step.py [--rounds 30] [--out benchmarks/expert_step.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

FINE = [
    "model.experts=4",
    "model.expert_routing=expert_choice",
    "model.expert_capacity=1",
    "model.expert_shared=true",
    "model.expert_hidden=0.5",
    "model.expert_scale=4",
]
VARIANTS = {
    "dense": [],
    "4 experts, expert choice, capacity 1": FINE[:3],
    "4 half-width experts + shared half, scale 4": FINE,
    "the same, image stream only": [*FINE, "model.expert_streams=[image]"],
    "the same, audio stream only": [*FINE, "model.expert_streams=[audio]"],
}


def forward_flops(model, batch, present) -> float:
    """Forward FLOPs per sample, every stream at time 0.5."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    n = next(iter(batch.values())).shape[0]
    tokens = {k: model.modalities[k].tokenize(v) for k, v in batch.items()}
    times = {k: torch.full((n,), 0.5) for k in tokens}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(tokens, times)
    return counter.get_total_flops() / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds (after 3 warm-up)")
    ap.add_argument("--out", default="benchmarks/expert_step.json")
    args = ap.parse_args()

    import torch

    from anydit.data.sources import build_dataset, make_collate
    from anydit.demo import demo_config
    from anydit.model import MMDiT
    from anydit.train.ema import ema_update, make_ema
    from anydit.train.optim import make_optimizer
    from anydit.train.step import clip_and_step, forward_backward, micro_inputs

    torch.set_num_threads(1)
    runs = {}
    for name, overrides in VARIANTS.items():
        cfg = demo_config(overrides)
        torch.manual_seed(0)
        model = MMDiT(cfg.modalities, cfg.model)
        data = build_dataset(cfg.data, "train", cfg.modalities)
        batch, present = make_collate(model.modalities)([data[i] for i in range(128)])
        runs[name] = {
            "model": model,
            "ema": make_ema(model),
            "optimizer": make_optimizer(model.parameters(), 1e-4),
            "flow": cfg.flow,
            "batch": batch,
            "present": present,
            "generator": torch.Generator().manual_seed(0),
            "times": [],
            "flops": forward_flops(model, batch, present),
        }
    for round_ in range(args.rounds + 3):
        for r in runs.values():
            start = time.perf_counter()
            micro = micro_inputs(r["model"], r["batch"], r["present"], r["flow"], r["generator"])
            forward_backward(r["model"], r["model"], micro, "fp32")
            clip_and_step(r["model"], r["optimizer"], 1.0)
            ema_update(r["ema"], r["model"], 0.995)
            if round_ >= 3:
                r["times"].append(time.perf_counter() - start)
    dense = runs["dense"]
    rows = {}
    for name, r in runs.items():
        ratios = [a / b for a, b in zip(r["times"], dense["times"], strict=True)]
        rows[name] = {
            "overrides": VARIANTS[name],
            "s_per_step": statistics.median(r["times"]),
            "ratio_to_dense": statistics.median(ratios),
            "params_m": sum(p.numel() for p in r["model"].parameters()) / 1e6,
            "forward_mflops_per_sample": r["flops"] / 1e6,
        }
        row = rows[name]
        print(
            f"{name}: {row['s_per_step']:.3f} s/step, {row['ratio_to_dense']:.3f}x dense, "
            f"{row['params_m']:.2f}M parameters, {row['forward_mflops_per_sample']:.1f} MFLOPs"
        )
    Path(args.out).write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
