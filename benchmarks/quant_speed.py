"""Quantized sampling speed with and without PyTorch's int8 matmul, against fp32 and bf16.

    python benchmarks/quant_speed.py --checkpoint runs/demo [--repeats 3]

Makes w8a8 and w4a8 files of the model (``anydit quantize``'s defaults: 4 calibration rounds,
8 time buckets), then samples label -> image (200 samples, 32 Euler steps, the demo's label
guidance) with each variant in its own process, the a8 schemes once with ``torch._int_mm``
(``ANYDIT_INT8_MATMUL=on``) and once with the float32 path (``off``): the same numbers either
way (tested), so only the speed differs. samples/s: median of ``--repeats`` processes, all in
this one run; the int8 kernel's gain depends on the CPU (VNNI), so say which one ran it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compress import measure  # noqa: E402 - the same per-process measurement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a digits run folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/quant_speed.json")
    args = ap.parse_args()

    import anydit
    from anydit.compress import quantize

    run = Path(args.checkpoint)
    model = anydit.load_model(run / "model.safetensors")
    folder = Path(tempfile.mkdtemp(prefix="anydit-quant-speed-"))
    files = {"fp32": (run / "model.safetensors", "fp32", {}),
             "bf16": (run / "model.safetensors", "bf16", {})}  # fmt: skip
    for scheme in ("w8a8", "w4a8"):
        q = quantize(model, scheme, rounds=4, config=anydit.SampleConfig(steps=32))
        path = anydit.save_model(q, folder / f"{scheme}.safetensors")
        files[f"{scheme}, float32 path"] = (path, "fp32", {"ANYDIT_INT8_MATMUL": "off"})
        files[f"{scheme}, int8 matmul"] = (path, "fp32", {"ANYDIT_INT8_MATMUL": "on"})
    rows = {}
    for name, (path, precision, env) in files.items():
        runs = sorted(measure(path, precision, env)["samples_per_s"] for _ in range(args.repeats))
        rows[name] = {"samples_per_s": runs[len(runs) // 2], "all": runs}
        print(name, json.dumps(rows[name]), flush=True)
    cpu = platform.processor() or platform.machine()
    Path(args.out).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))
    print("\n| variant | samples/s | vs fp32 |\n|---|---:|---:|")
    base = rows["fp32"]["samples_per_s"]
    for name, r in rows.items():
        print(f"| {name} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
