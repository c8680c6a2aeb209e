"""``anydit eval`` and the demo's evaluation: the digits metrics of a model, written as
``metrics.json`` (and, for the demo, an HTML gallery)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from anydit.config import SampleConfig
from anydit.eval.metrics import TaskSampling, evaluate_digits, format_table
from anydit.storage import check_writable


def run_eval(
    model,
    out: Path,
    n_per_class: int,
    config: SampleConfig,
    gallery: bool = False,
    progress: bool = True,
    seed: int = 0,
    per_task: dict[str, TaskSampling] | None = None,
    split: str = "test",
) -> dict:
    """Metrics (+ gallery) of a digits model into ``out`` with the sampler ``config`` (its
    ``guidance`` may be a dict per task source, ``per_task`` adds each task's own settings,
    see ``evaluate_digits``); returns them."""
    check_writable(out)
    results = evaluate_digits(
        model,
        n_per_class=n_per_class,
        config=config,
        progress=progress,
        seed=seed,
        per_task=per_task,
        split=split,
    )
    metrics = {k: v for k, v in results.items() if k != "samples"}
    finite = {
        k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()
    }
    # strict JSON (NaN -> null); val numbers never overwrite the reported test ones
    name = "metrics.json" if split == "test" else f"metrics_{split}.json"
    record = {"split": split, "seed": seed, **finite}
    (out / name).write_text(json.dumps(record, indent=2))
    print(format_table(metrics))
    if gallery:
        from anydit.eval.gallery import write_gallery

        page = write_gallery(out, model, results, metrics, region=config)
        print(f"gallery: {page}")
    return metrics
