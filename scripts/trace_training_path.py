"""Follow one training step through the package: which files and functions it enters.

    python scripts/trace_training_path.py [--steps-between 1]

Builds a tiny own-data run (a JSONL manifest of PNG images, labels and captions), trains two
steps, and records every call of a function defined under ``src/anydit`` between the first and
the second optimiser step: one whole step, from reading the next batch's files to the update.
Prints the files in the order they are entered, how often each is entered (a call into a file
from another file), the distinct functions, and the re-entries (entries into a file already
entered once).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import anydit

ROOT = Path(anydit.__file__).parent


def _data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        arr = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
        rows.append({"image": f"{i}.png", "label": str(i % 3), "caption": f"number {i % 3}"})
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def main() -> None:
    from anydit.cli import main as cli

    tmp = Path(tempfile.mkdtemp())
    manifest = _data(tmp)
    (tmp / "run.yaml").write_text(
        "modalities:\n"
        "  - {name: image, kind: image, shape: [1, 8, 8], patch: 2}\n"
        "  - {name: label, kind: label}\n"
        "  - {name: caption, kind: text, shape: [12]}\n"
        f"data: {{source: manifest, path: {manifest}}}\n"
        "model: {preset: debug}\n"
        "train: {steps: 2, batch_size: 4, warmup: 0, log_every: 100, checkpoint_every: 100,\n"
        "        tensorboard: false, precision: fp32}\n"
    )
    calls: list[tuple[str, str]] = []
    state = {"steps": 0}
    step = torch.optim.AdamW.step

    def counting_step(self, *a, **k):
        state["steps"] += 1
        return step(self, *a, **k)

    torch.optim.AdamW.step = counting_step

    def profile(frame, event, arg):
        if event != "call" or state["steps"] != 1:
            return
        path = Path(frame.f_code.co_filename)
        if ROOT in path.parents:
            calls.append((str(path.relative_to(ROOT)), frame.f_code.co_qualname))

    sys.setprofile(profile)
    try:
        cli(["train", str(tmp / "run.yaml"), "--out", str(tmp / "run"), "--no-progress"])
    finally:
        sys.setprofile(None)
        torch.optim.AdamW.step = step
    entries: list[str] = []
    for i, (file, _) in enumerate(calls):
        if i == 0 or calls[i - 1][0] != file:
            entries.append(file)
    per_file = Counter(entries)
    functions = set(calls)
    edges = {(a, b) for a, b in zip(entries, entries[1:], strict=False)}
    print(
        f"one step: {len(per_file)} files, {len(functions)} distinct functions, "
        f"{len(entries)} file entries, {len(entries) - len(per_file)} re-entries, "
        f"{len(edges)} distinct file-to-file moves"
    )
    packages: list[str] = []
    for file in entries:
        package = file.split("/")[0] if "/" in file else file
        if not packages or packages[-1] != package:
            packages.append(package)
    per_package = Counter(packages)
    print(
        f"by package: {len(per_package)} packages, {len(packages)} entries, "
        f"{len(packages) - len(per_package)} re-entries: "
        + ", ".join(f"{k} {v}" for k, v in per_package.most_common())
    )
    for file, n in sorted(per_file.items(), key=lambda kv: -kv[1]):
        print(f"  {n:3d}  {file}")
    print("order of entries (packages):")
    print("  " + " -> ".join(packages))
    print("order of entries (files):")
    print("  " + " -> ".join(entries))


if __name__ == "__main__":
    main()
