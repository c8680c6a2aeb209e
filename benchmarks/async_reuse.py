"""Asynchronous step counts with key-value reuse: does the slower stream get cheap?

    python benchmarks/async_reuse.py --checkpoint runs/demo [--isolated runs/demo-isolated]

Label -> image + speech, both generated together from the given label: the image with 8 Euler
steps beside the speech with 32 (``anydit.generate(steps=8)``), 20 samples per digit, the
demo's guidance for a given label. Without ``kv_reuse`` every one of the 32 evaluations runs
the image's tokens although the image moves on 8 of them; with it, the image's tokens (and the
given label's) are computed only where they move. For each model and setting: network FLOPs
per sample (``torch.utils.flop_counter``), the share of token-evaluations computed, and the
judges' accuracy of the image and of the speech against the given digit. One process, one run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a demo run folder")
    ap.add_argument("--isolated", help="the same seed trained with model.isolate_given")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/async_reuse.json")
    args = ap.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import anydit
    from anydit.demo import GUIDANCE, GUIDANCE_INTERVAL
    from anydit.eval.judges import get_judges

    image_judge, audio_judge = get_judges()
    labels = torch.arange(10).repeat_interleave(args.per_class)
    task = {"label": labels, "image": anydit.generate(steps=8), "audio": anydit.generate(steps=32),
            "text": "drop"}  # fmt: skip
    base = anydit.SampleConfig(
        steps=32, guidance={"label": GUIDANCE["label"]}, guidance_interval=GUIDANCE_INTERVAL
    )
    models = {"plain": args.checkpoint} | (
        {"isolate_given": args.isolated} if args.isolated else {}
    )
    rows = {}
    for name, folder in models.items():
        model = anydit.load_model(Path(folder) / "model.safetensors")
        for reuse in (False, True):
            stats: dict = {}
            with FlopCounterMode(display=False) as counter:
                out = anydit.sample(model, task, n=len(labels), seed=0, config=base,
                                    kv_reuse=reuse, stats=stats)  # fmt: skip
            row = {
                "flops_per_sample": counter.get_total_flops() / len(labels),
                "tokens_computed": stats.get("tokens_computed", 0) / max(stats.get("tokens", 1), 1),
                "image": float((torch.from_numpy(image_judge.predict(out["image"])) == labels)
                               .float().mean()),
                "audio": float((torch.from_numpy(audio_judge.predict(out["audio"])) == labels)
                               .float().mean()),
            }  # fmt: skip
            key = f"{name}, {'kv reuse' if reuse else 'no reuse'}"
            rows[key] = row
            print(key, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print("\n| model, sampler | FLOPs / sample | vs no reuse | image right | speech right |")
    print("|---|---:|---:|---:|---:|")
    for key, r in rows.items():
        ref = rows[key.rsplit(", ", 1)[0] + ", no reuse"]["flops_per_sample"]
        print(f"| {key} | {r['flops_per_sample'] / 1e6:.1f} M | {r['flops_per_sample'] / ref:.2f}x "
              f"| {100 * r['image']:.1f}% | {100 * r['audio']:.1f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
