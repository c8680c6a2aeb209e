"""Training-step throughput and peak memory of anydit on this machine.

    python benchmarks/train_step.py [--preset small] [--batch 16] [--steps 5] [--out results.json]

Measures samples/s of a full step (forward + backward + AdamW) in fp32 and in bf16 autocast,
and the peak memory of a step with and without activation checkpointing at the same batch.
Each configuration runs in its own process; peak memory is the rise of the process's peak
resident set (VmHWM, reset just before the measured step) over its size before that step, so
the interpreter and the weights are not counted. Memory is measured in a second process with
glibc's mmap threshold fixed (freed tensors then leave the resident set; that slows the step,
so that process is not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import vm  # benchmarks/common.py (scripts run from their folder)

MODALITIES = [  # an image-text-label model with 256 + 32 + 1 tokens
    {"name": "image", "kind": "image", "shape": [3, 32, 32], "patch": 2},
    {"name": "text", "kind": "text", "shape": [32]},
    {"name": "label", "kind": "label", "num_classes": 10},
]


def worker(preset: str, batch: int, steps: int, precision: str, checkpointing: bool) -> dict:
    import torch

    import anydit
    from anydit.config import ModalityConfig
    from anydit.train.step import forward_backward, micro_inputs

    torch.manual_seed(0)
    mods = [ModalityConfig(**m) for m in MODALITIES]
    model = anydit.MMDiT(mods, anydit.preset(preset, checkpointing=checkpointing))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    data = {
        "image": torch.randn(batch, 3, 32, 32, generator=g),
        "text": torch.randint(0, 257, (batch, 32), generator=g),
        "label": torch.randint(0, 10, (batch,), generator=g),
    }

    def step():  # the training step the loop runs
        micro = micro_inputs(model, data, {}, anydit.FlowConfig(), g)
        forward_backward(model, model, micro, precision)
        opt.step()

    step()  # warm-up (allocator, AdamW state)
    before = vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set
    step()
    peak = vm("VmHWM") - before
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    params = sum(p.numel() for p in model.parameters())
    return {
        "preset": preset,
        "params_m": params / 1e6,
        "batch": batch,
        "precision": precision,
        "checkpointing": checkpointing,
        "step_s": median,
        "samples_per_s": batch / median,
        "peak_step_mem_mb": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/train_step.json")
    ap.add_argument("--worker", nargs=2, metavar=("PRECISION", "CKPT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.preset, args.batch, args.steps, args.worker[0], args.worker[1] == "1")
        print(json.dumps(res))
        return
    rows = []
    for precision, ckpt in [("fp32", "0"), ("bf16", "0"), ("fp32", "1"), ("bf16", "1")]:
        cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch)]
        cmd += ["--steps", str(args.steps), "--worker", precision, ckpt]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # memory: see benchmarks/peers.py
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        row["peak_step_mem_mb"] = json.loads(out.strip().splitlines()[-1])["peak_step_mem_mb"]
        rows.append(row)
    print("| preset | params | batch | precision | act. ckpt | step (s) | samples/s | peak MiB |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['params_m']:.1f}M | {r['batch']} | {r['precision']} | "
            f"{'yes' if r['checkpointing'] else 'no'} | {r['step_s']:.3f} | "
            f"{r['samples_per_s']:.1f} | {r['peak_step_mem_mb']:.0f} |"
        )
    base = rows[0]["samples_per_s"]
    mem = rows[2]["peak_step_mem_mb"] / rows[0]["peak_step_mem_mb"]
    print(
        f"bf16 / fp32 throughput: {rows[1]['samples_per_s'] / base:.2f}x; "
        f"memory with / without checkpointing (fp32): {mem:.2f}x"
    )
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
