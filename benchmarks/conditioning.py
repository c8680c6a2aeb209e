"""Conditioning beyond paired streams on the digits, measured: a trained control branch
(super-resolution or edges) and training-free reference sharing.

    anydit control runs/demo --control lowres:2 --depth 4 --minutes 8 --out runs/sr4
    python benchmarks/conditioning.py --checkpoint runs/demo --branch runs/sr4/control.safetensors

For the branch, on val and test: the judge's accuracy on each held-out digit generated from its
own map alone, per strength and guidance on the control, with the baselines (the real digits,
the map itself, strength 0) and pixel errors (``eval.conditioning.evaluate_control``). For
reference sharing: label -> image with each held-out image as its sample's reference, per
weight (``evaluate_reference``). Results in ``--out`` (JSON) and printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a digits run folder (e.g. runs/demo)")
    ap.add_argument("--branch", help="a control branch trained on it (anydit control)")
    ap.add_argument("--strengths", default="0,1,1.5", help="branch strengths to measure")
    ap.add_argument("--guidances", default="1,2", help="guidance weights on the control")
    ap.add_argument("--weights", default="0,0.5,1,2,4", help="reference weights to measure")
    ap.add_argument("--out", default="benchmarks/conditioning.json")
    args = ap.parse_args()

    import anydit
    from anydit.eval.conditioning import evaluate_control, evaluate_reference
    from anydit.model.control import load_control
    from anydit.run_config import model_file

    model = anydit.load_model(model_file(args.checkpoint)).eval()
    result: dict = {"checkpoint": args.checkpoint}
    if args.branch:
        branch = load_control(args.branch, model).eval()
        strengths = tuple(float(s) for s in args.strengths.split(","))
        result["control"] = {"branch": args.branch, "config": vars(branch.cfg)}
        for w in (float(g) for g in args.guidances.split(",")):
            for split in ("val", "test"):
                t = time.perf_counter()
                got = evaluate_control(
                    model, branch, branch.cfg.recipe, split, strengths, guidance=w
                )
                got["seconds"] = time.perf_counter() - t
                result["control"][f"{split}, guidance {w:g}"] = got
                print(split, json.dumps(got))
    weights = tuple(float(w) for w in args.weights.split(","))
    result["reference"] = {}
    for split in ("val", "test"):
        t = time.perf_counter()
        got = evaluate_reference(model, split, weights)
        got["seconds"] = time.perf_counter() - t
        result["reference"][split] = got
        print(split, json.dumps(got))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
