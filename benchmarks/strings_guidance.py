"""What guidance, modality isolation and per-stream weights add on trained four-word
digit-strings models: each sampling setting of ``GRID`` scored on ``--clips`` test clips (one
seed) of the tasks that make audio and video together (joint, caption -> AV), the scalar ones
also on dubbing and audio -> video. A model whose speech has not learned says nothing here: use
one trained far past the 15-minute CPU budget (``strings_scaling.py --keep``, docs/video.md).
The ``stream_*`` settings score streaming (4 windows), the slowest task; name them.

    python benchmarks/strings_guidance.py A/model.safetensors B/model.safetensors \\
        --device cuda --clips 500 --processes 4        # -> benchmarks/strings_guidance.json
    python benchmarks/strings_guidance.py A.safetensors B.safetensors --device cpu --clips 40 \\
        --settings stream_g2,stream_iso1.5 --out benchmarks/strings_guidance_streaming.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BOTH = ("joint", "caption_to_av")
ALL4 = (*BOTH, "video_to_audio", "audio_to_video")
# name: (changes to the demo's SAMPLING -- guidance 2, 32 steps, confidence unmasking --, tasks)
GRID = {
    "g1": ({"guidance": 1.0}, ALL4),
    "g2": ({}, ALL4),
    "g3": ({"guidance": 3.0}, ALL4),
    "g2_iso1.5": ({"isolation": 1.5}, BOTH),
    "g2_iso2": ({"isolation": 2.0}, BOTH),
    "g2_iso3": ({"isolation": 3.0}, BOTH),
    "g1_iso2": ({"guidance": 1.0, "isolation": 2.0}, BOTH),
    "g2_a3": ({"stream_guidance": {"audio": 3.0}}, BOTH),
    "g2_a4": ({"stream_guidance": {"audio": 4.0}}, BOTH),
    "g2_v3": ({"stream_guidance": {"video": 3.0}}, BOTH),
    "g2_a3_v1.5": ({"stream_guidance": {"audio": 3.0, "video": 1.5}}, BOTH),
    "g2_a3_iso2": ({"stream_guidance": {"audio": 3.0}, "isolation": 2.0}, BOTH),
    "stream_g2": ({}, ("streaming",)),
    "stream_iso1.5": ({"isolation": 1.5}, ("streaming",)),
    "stream_g3": ({"guidance": 3.0}, ("streaming",)),
}


def score(
    path: str, names: list[str], device: str, clips: int, seed: int, lengths: tuple[int, ...]
) -> list[dict]:
    """One row per setting in ``names`` for the model at ``path``, on clips of ``lengths``
    digits."""
    from anydit.demo_strings import SAMPLING
    from anydit.eval.strings_tasks import evaluate_strings
    from anydit.model import load_model

    model = load_model(path).to(device).eval()
    rows = []
    for name in names:
        changes, tasks = GRID[name]
        start = time.perf_counter()
        config = dataclasses.replace(SAMPLING, **changes)
        got = evaluate_strings(model, clips, config, seed=seed, tasks=tasks, lengths=lengths)
        rows.append({
            "model": path, "sampling": name, "changes": changes, "clips": clips,
            "eval_s": round(time.perf_counter() - start, 1),
            **{k: round(v, 4) for k, v in got.items()},
        })  # fmt: skip
        print("ROW " + json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model.safetensors files of digit-strings runs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--clips", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--settings",
        default=",".join(n for n in GRID if not n.startswith("stream_")),
        help="comma-separated names of GRID (default: all but the stream_ ones)",
    )
    p.add_argument("--processes", type=int, default=1, help="settings scored side by side")
    p.add_argument("--lengths", default="3,4", help="digits a test clip says (the demo's: 3,4)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "strings_guidance.json")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one model and some settings
    args = p.parse_args()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = sorted(set(names) - set(GRID))
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; expected some of {list(GRID)}")
    if args.processes < 1:
        raise SystemExit(f"--processes: expected an integer >= 1, got {args.processes}")
    try:
        lengths = tuple(int(x) for x in args.lengths.split(","))
    except ValueError:
        raise SystemExit(
            f"--lengths: expected digits a clip says, e.g. 3,4; got {args.lengths!r}"
        ) from None
    if args.child:
        import torch

        torch.set_num_threads(1)
        score(args.child, names, args.device, args.clips, args.seed, lengths)
        return
    import torch

    results: dict = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__}
    if torch.device(args.device).type == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["--device", args.device, "--clips", str(args.clips), "--seed", str(args.seed),
              "--lengths", args.lengths]  # fmt: skip
    rows = []
    for model in args.models:
        parts = [names[i :: args.processes] for i in range(min(args.processes, len(names)))]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    model,
                    *common,
                    "--settings",
                    ",".join(part),
                    "--child",
                    model,
                ],
                stdout=subprocess.PIPE,
                env=env,
            )  # fmt: skip
            for part in parts
        ]
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode:
                for other in procs:
                    other.kill()
                raise SystemExit(f"{model}: scoring failed (exit {proc.returncode})")
            rows += [json.loads(x[4:]) for x in out.decode().splitlines() if x.startswith("ROW ")]
    order = {name: i for i, name in enumerate(GRID)}
    rows.sort(key=lambda r: (args.models.index(r["model"]), order[r["sampling"]]))
    results["rows"] = rows
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
