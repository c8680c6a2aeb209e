"""``anydit demo digit-edits`` and ``anydit demo digit-layouts``: train on a built-in
conditioning dataset, judge its tasks on the held-out digits, write a gallery.

* ``digit-edits`` (``data.digit_edits``, ``eval.edits``): editing and in-context examples in
  one ``slots`` stream of four images and the edit's class. Whole slots are given in most
  samples (``p_partial``): every "these slots given, the others made" task is learned, editing
  and in-context among them.
* ``digit-layouts`` (``data.digit_layouts``, ``eval.layouts``): two or three digits on a 24x24
  canvas and the ``layout`` of their boxes: layout -> image and image -> layout.

The recipe, like the digits demo's, is fixed (``steps``, seed 0 unless given) or fitted to
``--minutes`` of wall time on this machine; it trains data parallel on two local processes.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from anydit.config import Config, SampleConfig
from anydit.modalities.pictures import display_scale, image_grid
from anydit.run_config import BUILT_IN_MODALITIES, config_from_tree

PROCESSES = 2
GALLERY_ITEMS = 8
MODEL = {"preset": "small", "width": 128, "depth": 4, "heads": 2, "head_dim": 64}
TRAIN = {
    "batch_size": 256,
    "lr": 1e-3,
    "warmup": 100,
    "schedule": "cosine",
    "ema": 0.995,
    "precision": "fp32",
    "log_every": 25,
    "checkpoint_every": 200,
    "sample_every": 0,
}


@dataclass(frozen=True)
class TaskDemo:
    """One built-in conditioning demo: its dataset, recipe, sampling, judge and gallery."""

    dataset: str
    steps: int
    role_rates: dict[str, dict]  # per modality: p_given, p_drop, p_partial
    sampling: SampleConfig
    reserve_s: float  # --minutes: seconds kept for evaluation and the gallery
    evaluate: Callable[..., dict]  # (model, split, n, config, seed=, samples=) -> metrics
    pictures: Callable[[str, dict, int], Image.Image]  # (task, samples, i) -> one picture
    model: dict = field(default_factory=dict)  # beyond MODEL
    train: dict = field(default_factory=dict)  # beyond TRAIN
    data: dict = field(default_factory=dict)  # beyond the source and seed

    def config(self, overrides: list[str] | tuple[str, ...] = (), seed: int = 0) -> Config:
        """The demo's config with seed ``seed``; ``overrides`` as for ``--set``."""
        module, function = BUILT_IN_MODALITIES[self.dataset]
        made = getattr(importlib.import_module(module), function)()
        tree = {
            "data": {"source": self.dataset, "seed": seed, **self.data},
            "model": {**MODEL, **self.model},
            "train": {**TRAIN, **self.train, "steps": self.steps, "seed": seed},
            "modalities": [
                {**dataclasses.asdict(m), **self.role_rates.get(m.name, {})} for m in made
            ],
        }
        return config_from_tree(tree, overrides)


def _strip(images: torch.Tensor) -> Image.Image:
    """Images (k, C, H, W) in [-1, 1] side by side, upscaled to be seen."""
    scale = display_scale(*images.shape[-2:], target=64)
    return Image.fromarray(image_grid(images, nrow=len(images), scale=scale)).convert("RGB")


def edit_pictures(task: str, samples: dict, i: int) -> Image.Image:
    """The four slots of item i: example source, example target, source, target."""
    return _strip(samples[task]["slots"][i])


def layout_pictures(task: str, samples: dict, i: int) -> Image.Image:
    """Item i's canvas with its layout's boxes drawn and named (the given or the made one)."""
    from anydit.data.digit_layouts import CANVAS

    picture = _strip(samples[task]["image"][i : i + 1])
    scale = display_scale(CANVAS, CANVAS, target=64)
    draw = ImageDraw.Draw(picture)
    for row in samples[task]["layout"][i].tolist():
        if row[4] < 0:
            continue
        x0, y0, x1, y1 = (1 + round(v * CANVAS * scale) for v in row[:4])  # 1: the grid's pad
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=(255, 40, 40))
        draw.text((x0 + 2, y0 + 1), str(int(row[4])), fill=(255, 40, 40))
    return picture


def _edits() -> TaskDemo:
    from anydit.eval.edits import evaluate_edits

    return TaskDemo(
        dataset="digit-edits",
        # 9,000 steps with ``next`` in half the items: ``next`` (read the digit, draw the next
        # class) is learned long after the pixel edits (docs/conditioning.md: at 2,400 steps
        # with equal draws it was at chance)
        steps=9000,
        data={"edit_weights": [1, 1, 1, 3]},
        # The edit is a condition dropped in 3 samples of 4 (``digit_edits_modalities``: given
        # more often, it stalled learning to read the example slots); the slots are generated
        # with whole slots given in most samples.
        role_rates={"slots": {"p_given": 0.0, "p_drop": 0.0, "p_partial": 0.9}},
        sampling=SampleConfig(steps=16, guidance=2.0, guidance_interval=(0.3, 1.0)),
        reserve_s=150.0,
        evaluate=evaluate_edits,
        pictures=edit_pictures,
        model={"per_token_time": True},
        train={"batch_size": 128},  # more steps: reading other slots is learned late
    )


def _layouts() -> TaskDemo:
    from anydit.eval.layouts import evaluate_layouts

    return TaskDemo(
        dataset="digit-layouts",
        steps=2000,
        # Layout -> image is the task measured; image -> layout is learned beside it.
        role_rates={
            "image": {"p_given": 0.3, "p_drop": 0.1},
            "layout": {"p_given": 0.6, "p_drop": 0.1},
        },
        sampling=SampleConfig(steps=16, guidance=2.0, guidance_interval=(0.3, 1.0)),
        reserve_s=120.0,
        evaluate=evaluate_layouts,
        pictures=layout_pictures,
        train={"batch_size": 128},  # 39 tokens a sample: twice the steps of batch 256
    )


DEMOS: dict[str, Callable[[], TaskDemo]] = {"digit-edits": _edits, "digit-layouts": _layouts}


def write_task_gallery(out: Path, demo: TaskDemo, samples: dict, metrics: dict) -> Path:
    """``gallery/index.html``: the metrics, then per task the first items as pictures."""
    folder = out / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"<html><body><h1>{html.escape(demo.dataset)}</h1>", "<table>"]
    parts += [f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in metrics.items()]
    parts.append("</table>")
    for task, got in samples.items():
        cells = []
        for i in range(min(GALLERY_ITEMS, len(next(iter(got.values()))))):
            name = f"{task}_{i}.png"
            demo.pictures(task, samples, i).save(folder / name)
            cells.append(f"<td><img src='{name}'></td>")
        parts.append(f"<h2>{html.escape(task)}</h2><table><tr>{''.join(cells)}</tr></table>")
    parts.append("</body></html>")
    (folder / "index.html").write_text("\n".join(parts))
    return folder / "index.html"


def write_control_gallery(out: Path, evaluation: dict, samples: dict) -> Path:
    """``gallery/index.html`` of a control branch's evaluation (``evaluate_control`` with
    ``samples``): per strength the judge's accuracy and pixel error, then the first items, each
    one strip: the control map, what was made at each strength, the real image."""
    folder = out / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    made = samples["made"]  # strength -> (N, C, H, W)
    title = f"control {evaluation['control']} ({evaluation['split']}, {evaluation['count']})"
    parts = [f"<html><body><h1>{html.escape(title)}</h1>", "<table>"]
    parts.append("<tr><th>strength</th><th>judge accuracy</th><th>pixel mse</th></tr>")
    for strength, row in evaluation["strengths"].items():
        parts.append(f"<tr><td>{strength}</td><td>{row['accuracy']:.3f}</td>"
                     f"<td>{row['mse']:.4f}</td></tr>")  # fmt: skip
    columns = ["map", *(f"strength {s}" for s in made), "real"]
    parts += ["</table>", f"<p>each strip: {html.escape(', '.join(columns))}</p><table>"]
    for i in range(min(GALLERY_ITEMS, len(samples["source"]))):
        name = f"control_{i}.png"
        row = [samples["map"][i], *(got[i] for got in made.values()), samples["source"][i]]
        _strip(torch.stack(row)).save(folder / name)
        parts.append(f"<tr><td><img src='{name}'></td></tr>")
    parts.append("</table></body></html>")
    (folder / "index.html").write_text("\n".join(parts))
    return folder / "index.html"


def run_task_demo(
    dataset: str,
    out: Path,
    minutes: float | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = True,
    progress: bool = True,
    seed: int | None = None,
    processes: int = PROCESSES,
    items: int | None = None,
) -> dict:
    """Train on ``dataset`` (``DEMOS``), evaluate its tasks on the test split (its first
    ``items``; all by default) and write the gallery into ``out``; returns the metrics (also
    ``metrics.json``)."""
    from anydit.demo import starting_config
    from anydit.model import load_model
    from anydit.storage import check_writable
    from anydit.train.distributed import run_local
    from anydit.train.loop import train

    if dataset not in DEMOS:
        raise ValueError(f"demo: unknown dataset {dataset!r}; expected one of {list(DEMOS)}")
    demo = DEMOS[dataset]()
    start = time.perf_counter()
    check_writable(out)
    cfg = starting_config(
        out, demo.config, overrides, seed, minutes, resume, processes, start,
        reserve=demo.reserve_s, name=f"demo {dataset}",
    )  # fmt: skip
    run_local(train, (cfg, out, resume, progress), processes)
    trained = time.perf_counter()
    model = load_model(out / "model.safetensors")
    samples: dict = {}
    metrics = demo.evaluate(
        model, "test", items, demo.sampling, seed=cfg.train.seed, samples=samples
    )
    page = write_task_gallery(out, demo, samples, metrics)
    metrics |= {
        "seed": cfg.train.seed,
        "train_steps": cfg.train.steps,
        "processes": processes,
        "train_seconds": trained - start,
        "eval_seconds": time.perf_counter() - trained,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for k, v in metrics.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    print(f"gallery: {page}")
    return metrics
