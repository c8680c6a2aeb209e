"""Masked-token training at equal wall time, on a task large enough for dropping to matter:
label -> image on the digits upscaled to 32x32 (256 tokens of 2x2 patches, 64x the demo's 4).

    python benchmarks/token_drop.py --minutes 10 --ratio 0.7 --out benchmarks/token_drop.json

Each variant trains the same network (width 128, depth 4, the demo's) from the same seed on two
processes, its step count fitted to its wall-time budget (``anydit.demo.time_per_step``, as
``anydit demo --minutes`` does; the cosine schedule ends with the budget): dense for
``--minutes`` and for ``--ratio`` x that (``dense short``), each ``token_drop`` variant (with
``--mixer`` light blocks before the tokens leave) for ``--ratio`` x that. Every model is judged
on the 360 held-out digits, each image made from its own label (16 Euler steps, guidance 2 from
t = 0.3): the image judge reads the made image pooled back to 8x8, and the Fréchet distance is
taken in the judge's features against the real held-out images pooled the same way. Also
written: each variant's steps, training seconds (measured), tokens per second through the
backbone, and FLOPs per training sample (``torch.utils.flop_counter``, forward + backward).
``--experts E`` adds a model whose stream MLPs are E top-1 experts (the dense model's active
parameters plus routers) at the dense budget; ``--only NAMES`` trains those variants alone and
adds them to an existing ``--out`` table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PROCESSES = 2


def upscaled(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's digits, (N, 1, size, size) in [-1, 1] (bilinear), and their labels (N,)."""
    from anydit.data.digits import load_digit_images

    images, labels = load_digit_images(split)  # (N, 1, 8, 8), (N,)
    big = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return big.clamp(-1, 1), labels


def pooled(images: torch.Tensor) -> np.ndarray:
    """Images (N, 1, S, S) averaged back to 8x8, as the judge reads them."""
    return F.adaptive_avg_pool2d(images.float(), 8).clamp(-1, 1).numpy()


def variant_tree(
    data: Path, size: int, patch: int, drop: float, mixer: int, seed: int, experts: int = 0
) -> dict:
    image = {"name": "image", "kind": "image", "shape": [1, size, size], "patch": patch}
    image |= {"p_given": 0.0, "p_drop": 0.0, "token_drop": drop}
    label = {"name": "label", "kind": "label", "shape": [], "num_classes": 10}
    label |= {"generate": False, "p_drop": 0.2}
    model = {"preset": "small", "width": 128, "depth": 4, "heads": 2, "head_dim": 64}
    model["mixer_depth"] = mixer if drop > 0 else 0
    model["experts"] = experts  # top-1 of E: the dense model's active parameters + routers
    return {
        "data": {"source": "arrays", "path": str(data), "seed": seed},
        "modalities": [image, label],
        "model": model,
        "train": {
            "steps": 1, "batch_size": 128, "lr": 1e-3, "warmup": 100, "schedule": "cosine",
            "ema": 0.995, "precision": "fp32", "log_every": 25, "checkpoint_every": 200,
            "sample_every": 0, "tensorboard": False, "seed": seed,
        },
    }  # fmt: skip


def train_flops(cfg) -> float:
    """Multiply-adds x 2 of one training sample's forward and backward (a batch of 8)."""
    from torch.utils.flop_counter import FlopCounterMode

    from anydit.data.sources import build_dataset, make_collate
    from anydit.model import MMDiT
    from anydit.train.step import forward_backward, micro_inputs

    model = MMDiT(cfg.modalities, cfg.model)
    data = build_dataset(cfg.data, "train", cfg.modalities)
    batch, present = make_collate(model.modalities)([data[i] for i in range(8)])
    micro = micro_inputs(model, batch, present, cfg.flow, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        forward_backward(model, model, micro, cfg.train.precision)
    return counter.get_total_flops() / 8


def judge(model, size: int, n: int | None, seed: int) -> dict:
    """Label -> image on the held-out digits: judge accuracy and Fréchet distance (8x8)."""
    from anydit.config import SampleConfig
    from anydit.eval.judges import get_judges
    from anydit.eval.metrics import frechet_distance
    from anydit.sampling import sample

    real, labels = upscaled("test", size)
    if n is not None:
        real, labels = real[:n], labels[:n]
    config = SampleConfig(steps=16, guidance=2.0, guidance_interval=(0.3, 1.0))
    t0 = time.perf_counter()
    got = sample(model, {"image": "generate", "label": labels}, n=len(labels), config=config,
                 seed=seed)["image"].cpu()  # fmt: skip
    seconds = time.perf_counter() - t0
    j = get_judges()[0]
    made, truth = pooled(got), pooled(real)
    return {
        "accuracy": float((j.predict(made) == labels.numpy()).mean()),
        "fid": frechet_distance(j.features(made), j.features(truth)),
        "real_accuracy": float((j.predict(truth) == labels.numpy()).mean()),
        "samples_per_s": len(labels) / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=8.0, help="dense training wall time")
    ap.add_argument("--ratio", type=float, default=0.7, help="token-drop budgets: this x dense")
    ap.add_argument("--drops", default="0.5,0.75", help="token_drop shares to train")
    ap.add_argument("--mixer", type=int, default=1, help="mixer_depth of the dropping variants")
    ap.add_argument("--experts", type=int, default=0, help="E > 1: add E top-1 experts, dense time")
    ap.add_argument("--only", help="train only these variants (comma-separated names)")
    ap.add_argument("--size", type=int, default=32, help="image side (a multiple of 8)")
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--n", type=int, help="held-out digits judged (default: all 360)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/token_drop", help="folder for data and models")
    ap.add_argument("--out", default="benchmarks/token_drop.json")
    args = ap.parse_args()

    import anydit
    from anydit.demo import time_per_step
    from anydit.run_config import config_from_tree
    from anydit.train.distributed import run_local
    from anydit.train.loop import train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    images, labels = upscaled("train", args.size)
    data = work / f"digits{args.size}.npz"
    np.savez(data, image=images.numpy(), label=labels.numpy())
    tokens = (args.size // args.patch) ** 2
    result: dict = {"size": args.size, "patch": args.patch, "image_tokens": tokens}
    result |= {"minutes": args.minutes, "ratio": args.ratio, "mixer": args.mixer, "variants": {}}
    # dense at the short budget too: if it matched dense at the full one, the comparison
    # would say nothing about dropping
    variants = [("dense", 0.0, args.minutes), ("dense short", 0.0, args.minutes * args.ratio)]
    variants += [(f"drop {d}", float(d), args.minutes * args.ratio) for d in args.drops.split(",")]
    if args.experts > 1:
        variants.append((f"experts {args.experts}", 0.0, args.minutes))
    if args.only:
        variants = [v for v in variants if v[0] in args.only.split(",")]
    out_file = Path(args.out)
    if args.only and out_file.is_file():  # add to the table of an earlier run
        result["variants"] = json.loads(out_file.read_text())["variants"]
    for name, drop, minutes in variants:
        experts = int(name.split()[1]) if name.startswith("experts") else 0
        cfg = config_from_tree(
            variant_tree(data, args.size, args.patch, drop, args.mixer, args.seed, experts)
        )
        per_step = time_per_step(cfg, PROCESSES)
        cfg.train.steps = max(1, int(minutes * 60 / per_step))
        out = work / name.replace(" ", "-")
        t0 = time.perf_counter()
        run_local(train, (cfg, out, False, False), PROCESSES)
        seconds = time.perf_counter() - t0
        model = anydit.load_model(out / "model.safetensors").eval()
        row = {"token_drop": drop, "budget_minutes": minutes, "steps": cfg.train.steps}
        row |= {"train_seconds": seconds, "step_seconds_probe": per_step}
        kept = round(tokens * (1 - drop))
        row["backbone_image_tokens_per_s"] = kept * cfg.train.batch_size * cfg.train.steps / seconds
        row["train_gflops_per_sample"] = train_flops(cfg) / 1e9
        row |= judge(model, args.size, args.n, args.seed)
        result["variants"][name] = row
        print(name, json.dumps(row), flush=True)
        out_file.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
