"""Fewer network evaluations on the demo model: caches and few-step flow maps against Euler 32.

    python benchmarks/fast_sampling.py --checkpoint runs/demo --flow-map runs/demo-flowmap

``--flow-map``: the same model distilled into a flow map (``anydit distill runs/demo --out
runs/demo-flowmap``); without it the jump rows are left out. ``--isolated``: a demo run of the
same seed trained with ``model.isolate_given`` (``anydit demo --set model.isolate_given=true``),
for the rows that measure what the option costs and what ``kv_reuse`` saves on it. Rows: Euler
32 (the reference), Euler 16 (the demo's own), midpoint 4, each feature cache at two or three
settings on Euler 32 (``first_block`` thresholds, ``taylor`` and ``taylor_attention`` interval
/ order, ``region`` ratio / dense interval), ``kv_reuse`` on the plain model (an approximation
there) and on the isolating one, and the flow map's jump sampler at 1, 2 and 4 steps (and at 1
and 2 with the label revealed first: ``discrete_first``). ``--rows a,b``: only rows whose name
contains a or b (the JSON then keeps the other rows of an existing ``--out``). Every task of a
row uses the row's solver and steps (``override_tasks``) and the demo's other per-task settings
(guidance and its interval, labels sampled along).

For each row and task (label -> image, audio -> image, label -> audio, image -> label, joint):
the judges' accuracy on the test split (``evaluate_digits``, 200 samples, the demo's seeds),
the Frechet distances (image: label -> image samples; audio: label -> audio), wall seconds of
the five tasks, and network FLOPs per sample (``torch.utils.flop_counter`` over the very same
sampling calls repeated with 2 samples per digit: the caches' skips are data dependent, so they
are counted, not derived). Everything in one process, one run; ratios are against Euler 32.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TASKS = ("label_to_image", "audio_to_image", "label_to_audio", "image_to_label", "joint")
ROWS = (
    ("Euler 32", "teacher", {"solver": "euler", "steps": 32}),
    ("Euler 16 (demo)", "teacher", {"solver": "euler", "steps": 16}),
    ("midpoint 4", "teacher", {"solver": "midpoint", "steps": 4}),
    *(
        (f"first-block {t}", "teacher", {"solver": "euler", "steps": 32, "cache": "first_block",
                                         "cache_threshold": t})
        for t in (0.05, 0.1, 0.2)
    ),
    *(
        (f"taylor every {i}, order {o}", "teacher", {"solver": "euler", "steps": 32,
                                                     "cache": "taylor", "cache_interval": i,
                                                     "cache_order": o})
        for i, o in ((2, 1), (3, 1), (4, 2))
    ),
    *(
        (f"taylor_attention every {i}, order {o}", "teacher",
         {"solver": "euler", "steps": 32, "cache": "taylor_attention", "cache_interval": i,
          "cache_order": o})
        for i, o in ((2, 1), (4, 1))
    ),
    *(
        (f"region {r}, dense every {i}", "teacher", {"solver": "euler", "steps": 32,
                                                     "cache": "region", "cache_ratio": r,
                                                     "cache_interval": i})
        for r, i in ((0.5, 4), (0.5, 8), (0.25, 8))
    ),
    ("kv reuse", "teacher", {"solver": "euler", "steps": 32, "kv_reuse": True}),
    ("isolate_given model", "isolated", {"solver": "euler", "steps": 32}),
    ("isolate_given model, kv reuse", "isolated", {"solver": "euler", "steps": 32,
                                                   "kv_reuse": True}),
    ("isolate_given model, midpoint 4, kv reuse", "isolated", {"solver": "midpoint", "steps": 4,
                                                               "kv_reuse": True}),
    *((f"flow map, {k} jump{'s' * (k > 1)}", "flow_map", {"solver": "jump", "steps": k})
      for k in (1, 2, 4)),
    # labels (sampled with joint, audio -> image, label -> audio's none) revealed by one call
    # before the continuous streams jump: one more evaluation where a label is generated
    *((f"flow map, {k} jump{'s' * (k > 1)}, label first", "flow_map",
       {"solver": "jump", "steps": k, "discrete_first": True})
      for k in (1, 2)),
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a demo run folder")
    ap.add_argument("--flow-map", help="the same model distilled into a flow map (a run folder)")
    ap.add_argument("--isolated", help="a demo run trained with model.isolate_given (same seed)")
    ap.add_argument("--rows", help="only the rows whose name contains one of these (a,b,...)")
    ap.add_argument("--per-class", type=int, default=20, help="evaluation samples per digit")
    ap.add_argument("--out", default="benchmarks/fast_sampling.json")
    args = ap.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import anydit
    from anydit.demo import TASK_SAMPLING, demo_sampling
    from anydit.eval.metrics import evaluate_digits, override_tasks
    from anydit.sampling import settings

    models = {"teacher": anydit.load_model(Path(args.checkpoint) / "model.safetensors")}
    if args.flow_map:
        models["flow_map"] = anydit.load_model(Path(args.flow_map) / "model.safetensors")
    if args.isolated:
        models["isolated"] = anydit.load_model(Path(args.isolated) / "model.safetensors")
    wanted = args.rows.split(",") if args.rows else None
    seed = 0
    saved = Path(args.checkpoint) / "demo.json"
    if saved.is_file():
        seed = json.loads(saved.read_text())["seed"]

    def run(model, row: dict, n_per_class: int, tasks=TASKS) -> dict:
        config = settings(demo_sampling(), **row)
        per_task = override_tasks(TASK_SAMPLING, steps=row["steps"], solver=row["solver"])
        return evaluate_digits(model, n_per_class, config, seed=seed, tasks=tasks,
                               per_task=per_task)  # fmt: skip

    rows = {}
    for name, which, row in ROWS:
        if which not in models or (wanted and not any(w in name for w in wanted)):
            continue
        model = models[which]
        t = time.perf_counter()
        metrics = run(model, row, args.per_class)
        seconds = time.perf_counter() - t
        flops = {}
        for task in TASKS:
            with FlopCounterMode(display=False) as counter:
                run(model, row, 2, (task,))
            flops[task] = counter.get_total_flops() / 20  # 2 samples per digit
        rows[name] = {
            "settings": row,
            **{t: metrics[t] for t in TASKS},
            "fid_image": metrics["fid_image"],
            "fid_audio": metrics["fid_audio"],
            "seconds": seconds,
            "flops_per_sample": flops,
        }
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "settings"}),
              flush=True)  # fmt: skip
    if wanted and Path(args.out).is_file():  # a partial run updates the rows it ran
        rows = {**json.loads(Path(args.out).read_text()), **rows}
    Path(args.out).write_text(json.dumps(rows, indent=2))

    ref = rows["Euler 32"]
    head = " | ".join(t.replace("_to_", " → ") for t in TASKS)
    print(f"\n| sampler | {head} | FID image | FID audio | seconds | FLOPs / sample vs Euler 32 |")
    print("|---|" + "---:|" * (len(TASKS) + 4))
    for name, r in rows.items():
        accs = " | ".join(f"{100 * r[t]:.1f}%" for t in TASKS)
        share = sum(r["flops_per_sample"].values()) / sum(ref["flops_per_sample"].values())
        print(f"| {name} | {accs} | {r['fid_image']:.2f} | {r['fid_audio']:.1f} | "
              f"{r['seconds']:.1f} | {share:.3f}x |")  # fmt: skip
    torch.manual_seed(0)


if __name__ == "__main__":
    main()
