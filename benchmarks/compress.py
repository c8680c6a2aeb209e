"""Smaller models from a trained digits model: quantization, depth pruning and timestep-dynamic
width, measured.

    python benchmarks/compress.py --checkpoint runs/demo [--minutes 3]
        [--variants 'bf16,pruned 25%'] [--task 'audio -> image label' --task-share 0.2]
        [--keep 0.4,0.3]

Variants: fp32 (the model as trained), bf16 (the same weights, bf16 autocast), w8, w8a8, w4a8
(``anydit quantize``, 4 calibration rounds), and pruned by 25% and 50% of the blocks with
``--minutes`` of distillation each (``anydit prune --processes 2 --batch-size 128``, bf16
autocast where the CPU has it: the recipe chosen on val), and dynamic width at each ``--keep``
(``anydit slim --groups 8 --keep K``, the same distillation budget and recipe; its rows add the
sampling FLOPs as a share of the dense network's, ``flops_share``). For each: file size,
weight bytes, peak resident memory while sampling and samples/s of label -> image (200 samples,
the demo's 32 steps; each variant in its own process), and the demo's judge accuracies and
Frechet distances (``evaluate_digits`` with the demo's sampler settings, all 13 tasks,
``--per-class`` samples per digit, and their mean). Every number comes from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = """
import json, resource, sys, time, torch
import anydit
from anydit.config import SampleConfig
path, precision = sys.argv[1], sys.argv[2]


def high_water():  # MiB; this process's own (ru_maxrss keeps the parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return float(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


before = high_water()
model = anydit.load_model(path)
config = SampleConfig(steps=32, precision=precision, guidance=1.5, guidance_interval=(0.3, 1.0))
labels = torch.arange(10).repeat_interleave(20)
anydit.sample(model, {"image": "generate", "label": labels[:10]}, n=10, config=config)  # warm-up
t = time.perf_counter()
anydit.sample(model, {"image": "generate", "label": labels}, n=200, config=config)
seconds = time.perf_counter() - t
peak = high_water()
row = {"samples_per_s": 200 / seconds, "peak_mib": peak}
print(json.dumps(row | {"load_mib": peak - before}))
"""


def kernels(shapes=((2432, 128, 384), (2432, 128, 512), (2432, 512, 128)), repeats=20) -> list:
    """Matmul time (ms) at the demo model's linear shapes (tokens x in -> out, batch 128 x 19
    tokens): fp32, bf16, and PyTorch's int8 CPU kernels (int8 x int8 -> int32 ``_int_mm``;
    int8 weights with bf16 activations ``_weight_int8pack_mm``)."""
    import torch

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * sorted(times)[len(times) // 2]

    rows = []
    for m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k)
        xb, wb = x.bfloat16(), w.bfloat16()
        xi = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        wi = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        scale = torch.rand(n).bfloat16()
        row = {"shape": f"{m}x{k} @ {k}x{n}", "fp32": best(lambda x=x, w=w: x @ w.T)}
        row["bf16"] = best(lambda xb=xb, wb=wb: xb @ wb.T)
        row["int8 _int_mm"] = best(lambda xi=xi, wi=wi: torch._int_mm(xi, wi.T))
        row["int8 weights, bf16 x"] = best(
            lambda xb=xb, wi=wi, s=scale: torch.ops.aten._weight_int8pack_mm(xb, wi, s)
        )
        rows.append(row)
    return rows


def measure(path: Path, precision: str, env: dict | None = None) -> dict:
    """samples/s and peak memory of ``path`` sampling label -> image, in its own process
    (``env``: extra environment variables, e.g. ``ANYDIT_INT8_MATMUL``)."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), precision],
        capture_output=True, text=True, check=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a digits run folder (e.g. runs/demo)")
    ap.add_argument("--minutes", type=float, default=3.0, help="distillation per pruned model")
    ap.add_argument("--processes", type=int, default=2, help="distillation processes")
    ap.add_argument("--batch-size", type=int, default=128, help="distillation's global batch")
    ap.add_argument(
        "--precision", default="auto", help="distillation arithmetic (auto: bf16 where native)"
    )
    ap.add_argument("--per-class", type=int, default=20, help="evaluation samples per digit")
    ap.add_argument("--out", default="benchmarks/compress.json")
    ap.add_argument(
        "--variants",
        help="only these, comma-separated (e.g. 'fp32,bf16,pruned 25%%'; default all)",
    )
    ap.add_argument(
        "--task",
        action="append",
        help="a role pattern the distillation's rows take (anydit prune --task), repeatable",
    )
    ap.add_argument("--task-share", type=float, default=0.5, help="rows that take a --task")
    ap.add_argument(
        "--keep", default="0.4", help="dynamic width: targets of MLP share kept, comma-separated"
    )
    args = ap.parse_args()
    wanted = None if args.variants is None else set(args.variants.split(","))
    keeps = [float(k) for k in args.keep.split(",")]
    known = ["fp32", "bf16", "w8", "w8a8", "w4a8"]
    known += [f"pruned {p}%{r}" for p in (25, 50) for r in ("", ", no recovery")]
    known += [f"dynamic {k:g}" for k in keeps]
    if wanted is not None and wanted - set(known):
        raise SystemExit(
            f"--variants: unknown {sorted(wanted - set(known))}; expected some of {known}"
        )

    import torch

    import anydit
    from anydit.compress import prune, quantize, weight_bytes
    from anydit.compress.slim import slim
    from anydit.data.sources import RandomBatches, open_training_data
    from anydit.demo import TASK_SAMPLING, demo_sampling
    from anydit.eval.metrics import TASKS, evaluate_digits
    from anydit.run_config import load_config
    from anydit.train.distill import parse_task
    from anydit.train.optim import resolve_precision

    run = Path(args.checkpoint)
    model = anydit.load_model(run / "model.safetensors")
    folder = Path(tempfile.mkdtemp(prefix="anydit-compress-"))
    files: dict[str, tuple[Path, str]] = {
        "fp32": (run / "model.safetensors", "fp32"),
        "bf16": (run / "model.safetensors", "bf16"),
    }
    notes: dict[str, dict] = {}
    for scheme in [s for s in ("w8", "w8a8", "w4a8") if wanted is None or s in wanted]:
        t = time.perf_counter()
        q = quantize(model, scheme, rounds=4, config=anydit.SampleConfig(steps=32))
        files[scheme] = (anydit.save_model(q, folder / f"{scheme}.safetensors"), "fp32")
        notes[scheme] = {"seconds_to_make": time.perf_counter() - t}
    cfg = load_config(run / "config.yaml")
    dataset, _ = open_training_data(cfg.data, list(model.modality_configs), log=lambda *_: None)
    blocks = len(model.blocks) + len(model.single_blocks)
    tasks = [parse_task(t, model.modalities) for t in args.task or []]
    for share in (0.25, 0.5):
        k = max(1, round(share * blocks))
        if (
            wanted is not None
            and not {f"pruned {int(share * 100)}%", f"pruned {int(share * 100)}%, no recovery"}
            & wanted
        ):
            continue
        batches = RandomBatches(dataset, model.modalities, args.batch_size)
        t = time.perf_counter()
        pruned, removed, _, losses = prune(
            model, k, batches, minutes=args.minutes, log=None, processes=args.processes,
            precision=args.precision, tasks=tasks, task_share=args.task_share,
        )  # fmt: skip
        name = f"pruned {int(share * 100)}%"
        files[name] = (anydit.save_model(pruned, folder / f"pruned{k}.safetensors"), "fp32")
        notes[name] = {
            "removed": removed,
            "distill_steps": len(losses),
            "distill_processes": args.processes,
            "distill_batch": args.batch_size,
            "distill_precision": resolve_precision(args.precision),
            "distill_tasks": args.task or [],
            "distill_task_share": args.task_share,
            "distill_loss": [losses[0], losses[-1]],
            "seconds_to_make": time.perf_counter() - t,
        }
        unrecovered = anydit.save_model(
            anydit.compress.remove_blocks(model, removed), folder / f"cut{k}.safetensors"
        )
        files[f"{name}, no recovery"] = (unrecovered, "fp32")
    for keep in keeps:
        name = f"dynamic {keep:g}"
        if wanted is not None and name not in wanted:
            continue
        batches = RandomBatches(dataset, model.modalities, args.batch_size)
        t = time.perf_counter()
        slimmed, losses = slim(
            model, batches, groups=8, keep=keep, minutes=args.minutes, log=None,
            processes=args.processes, precision=args.precision, tasks=tasks,
            task_share=args.task_share,
        )  # fmt: skip
        files[name] = (anydit.save_model(slimmed, folder / f"dynamic{keep:g}.safetensors"), "fp32")
        notes[name] = {
            "distill_steps": len(losses),
            "distill_processes": args.processes,
            "distill_batch": args.batch_size,
            "distill_precision": resolve_precision(args.precision),
            "distill_loss": [losses[0], losses[-1]],
            "seconds_to_make": time.perf_counter() - t,
        }
    rows = {}
    base_bytes = weight_bytes(model)
    for name, (path, precision) in files.items():
        if wanted is not None and name not in wanted:
            continue
        m = anydit.load_model(path)
        config = demo_sampling()
        config = anydit.sampling.settings(config, precision=precision)
        metrics = evaluate_digits(
            m, n_per_class=args.per_class, config=config, per_task=TASK_SAMPLING
        )
        metrics["mean_accuracy"] = sum(metrics[t] for t in TASKS) / len(TASKS)
        metrics.pop("samples")
        rows[name] = {
            "file_mib": path.stat().st_size / 2**20,
            "weight_bytes_ratio": weight_bytes(m) / base_bytes,
            **measure(path, precision),
            **{k: v for k, v in metrics.items() if isinstance(v, float)},
            **notes.get(name, {}),
        }
        print(
            name,
            json.dumps(
                {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[name].items()}
            ),
        )
    matmuls = kernels()
    Path(args.out).write_text(json.dumps({"variants": rows, "matmul_ms": matmuls}, indent=2))
    tasks = [*TASKS, "mean_accuracy"]
    print(
        "\n| variant | file MiB | weight bytes | peak MiB | samples/s | "
        + " | ".join(t.replace("_to_", " → ") for t in tasks)
        + " | FID image | FID audio | sampling FLOPs |"
    )
    print("|---|" + "---:|" * (7 + len(tasks)))
    for name, r in rows.items():
        accs = " | ".join(f"{100 * r[t]:.1f}%" for t in tasks)
        print(
            f"| {name} | {r['file_mib']:.2f} | {r['weight_bytes_ratio']:.2f}x | "
            f"{r['peak_mib']:.0f} | {r['samples_per_s']:.1f} | {accs} | "
            f"{r['fid_image']:.2f} | {r['fid_audio']:.1f} | {r.get('flops_share', 1.0):.2f}x |"
        )
    print("\n| matmul | fp32 ms | bf16 ms | int8 _int_mm ms | int8 weights, bf16 x ms |")
    print("|---|---:|---:|---:|---:|")
    for r in matmuls:
        print(f"| {r['shape']} | {r['fp32']:.2f} | {r['bf16']:.2f} | {r['int8 _int_mm']:.2f} | "
              f"{r['int8 weights, bf16 x']:.2f} |")  # fmt: skip
    torch.manual_seed(0)


if __name__ == "__main__":
    main()
