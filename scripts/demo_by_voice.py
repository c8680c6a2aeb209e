"""The demo's speech tasks per held-out test voice: audio -> image, audio -> label and
audio -> text given only one voice's recordings, with the demo's sampler settings.

usage: python scripts/demo_by_voice.py RUN [RUN ...]   (prints a table row per run and voice)

Each test voice has 50 recordings (10 digits x 5 settings); each is given 4 times (200 samples
per task, like the demo's tables), judged as the demo judges them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import anydit
from anydit.data.digits import TEST_VOICES, _audio_npz, audio_split
from anydit.demo import TASK_SAMPLING, demo_sampling
from anydit.eval.judges import get_judges
from anydit.eval.metrics import conditional_task
from anydit.run_config import load_config


def by_voice(model, seed: int) -> dict[str, dict[str, float]]:
    data = _audio_npz()
    split = audio_split(data["voice"])
    judges = get_judges()
    rows = {}
    for voice in TEST_VOICES:
        keep = (split == "test") & (data["voice"] == voice)
        mel = torch.from_numpy(data["mel"][keep].astype(np.float32)).repeat(4, 1, 1)
        labels = torch.from_numpy(data["label"][keep].astype(np.int64)).repeat(4)
        rows[voice] = {
            task: float(
                np.mean(
                    conditional_task(
                        model, task, {"audio": mel}, labels, demo_sampling(), TASK_SAMPLING,
                        seed, judges,
                    )["predicted"]
                    == labels.numpy()
                )
            )
            for task in ("audio_to_image", "audio_to_label", "audio_to_text")
        }  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    for run in args.runs:
        model = anydit.load_model(Path(run) / "model.safetensors")
        seed = load_config(Path(run) / "config.yaml").train.seed
        for voice, row in by_voice(model, seed).items():
            cells = " | ".join(f"{100 * v:.1f}%" for v in row.values())
            print(f"| {run} | {voice} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
