"""Is the loader or the model the bottleneck? Reading a PNG manifest vs the training step.

    python benchmarks/data_loading.py [--n 512] [--batch 32] [--size 64] [--preset small]

Writes ``n`` random RGB PNGs (``size`` x ``size``) with a label and a caption into a temporary
manifest, then measures samples/s of (a) reading, decoding and collating batches through
``anydit``'s own-data path with 0, 1 and 2 DataLoader workers (no model), and (b) the training
step of a ``preset`` model on the same modalities (bf16 autocast). The loader keeps up when (a)
is above (b).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import anydit
from anydit.config import DataConfig, ModalityConfig
from anydit.data.sources import build_dataset, epoch_loader, make_collate
from anydit.train.optim import make_optimizer
from anydit.train.step import forward_backward, micro_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--preset", default="small")
    args = ap.parse_args()
    mods = [
        ModalityConfig("image", "image", (3, args.size, args.size), patch=4),
        ModalityConfig("label", "label", classes=("a", "b", "c")),
        ModalityConfig("text", "text", (32,)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        rows = []
        for i in range(args.n):
            u8 = rng.integers(0, 256, (args.size + 16, args.size + 16, 3), dtype=np.uint8)
            Image.fromarray(u8).save(root / f"{i}.png")  # 16 px larger: resized and cropped
            rows.append({"image": f"{i}.png", "label": "abc"[i % 3], "text": f"sample {i}"})
        (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        dataset = build_dataset(DataConfig("manifest", str(root / "m.jsonl")), "train", mods)
        model = anydit.MMDiT(mods, anydit.preset(args.preset))
        collate = make_collate(model.modalities)
        order = torch.randperm(args.n, generator=torch.Generator().manual_seed(0))
        batches = [order[i : i + args.batch] for i in range(0, args.n - args.batch + 1, args.batch)]
        results = {}
        for workers in (0, 1, 2):
            t0 = time.perf_counter()
            count = sum(
                len(b["image"]) for b, _ in epoch_loader(dataset, batches, collate, workers)
            )
            results[f"loader_{workers}_workers"] = count / (time.perf_counter() - t0)
        batch, present = collate([dataset[i] for i in range(args.batch)])
        opt = make_optimizer(model.parameters(), 1e-4)
        gen = torch.Generator().manual_seed(0)

        def step():  # the training step the loop runs
            micro = micro_inputs(model, batch, present, anydit.FlowConfig(), gen)
            forward_backward(model, model, micro, "bf16")
            opt.step()

        step()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        results["train_step"] = args.batch / sorted(times)[2]
    print(
        f"{args.n} PNGs {args.size}x{args.size} (+16 px, cropped), batch {args.batch}, "
        f"model preset '{args.preset}' (bf16)\n"
    )
    print("| what | samples/s |\n|---|---:|")
    for key, value in results.items():
        print(f"| {key.replace('_', ' ')} | {value:.0f} |")


if __name__ == "__main__":
    main()
