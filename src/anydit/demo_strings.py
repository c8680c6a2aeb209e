"""``anydit demo digit-strings``: train on spoken and shown digit strings, judge every
audio-video task (``eval.strings_tasks``), write a gallery of playable clips.

The recipe, like the digits demo's, is fixed (``STRINGS_STEPS`` steps, seed 0 unless given) or
fitted to ``--minutes`` of wall time on this machine; it trains data parallel on two local
processes. Video and audio keep their kinds' defaults (the video's shift and loss weight:
``docs/video.md``); both train a share of samples as completions (``p_partial``), which
prediction, interpolation, continuation and streaming need.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from pathlib import Path

from anydit.config import Config, SampleConfig
from anydit.run_config import config_from_tree

STRINGS_STEPS = 1500
STRINGS_PROCESSES = 2
STRINGS_TREE = {
    "data": {"source": "digit-strings"},
    "model": {
        "preset": "small",
        "width": 128,
        "depth": 4,
        "heads": 2,
        "head_dim": 64,
        "per_token_time": True,
    },
    "train": {
        "steps": STRINGS_STEPS,
        "batch_size": 128,
        "lr": 1e-3,
        "warmup": 100,
        "schedule": "cosine",
        "ema": 0.995,
        "precision": "fp32",
        "log_every": 25,
        "checkpoint_every": 200,
        "sample_every": 0,
    },
}
STREAM_OPTIONS = {"video": {"p_partial": 0.3}, "audio": {"p_partial": 0.3}}
# Guidance on every step: a clip's digits are decided early (docs/video.md).
SAMPLING = SampleConfig(steps=32, guidance=2.0, unmasking="confidence")
EVAL_CLIPS = 100
EVAL_RESERVE_S = 420.0  # --minutes: evaluation (8 tasks x 100 clips; streaming: 4 windows), gallery
GALLERY_CLIPS = 4


def strings_config(overrides: list[str] | tuple[str, ...] = (), seed: int = 0) -> Config:
    """The digit-strings demo's config with seed ``seed``; ``overrides`` as for ``--set``."""
    from anydit.data.digit_strings import digit_strings_modalities

    tree = dict(STRINGS_TREE)
    tree["train"] = {**STRINGS_TREE["train"], "seed": seed}
    tree["data"] = {**STRINGS_TREE["data"], "seed": seed}
    tree["modalities"] = [
        {**dataclasses.asdict(m), **STREAM_OPTIONS.get(m.name, {})}
        for m in digit_strings_modalities()
    ]
    return config_from_tree(tree, overrides)


def write_strings_gallery(out: Path, samples: dict, metrics: dict, fps: float) -> Path:
    """``gallery/index.html``: per task, the first clips as GIF + WAV, beside the real ones."""
    from anydit.data.digits import mel_params
    from anydit.eval.clips import write_clip

    folder = out / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    mel = mel_params()
    parts = ["<html><body><h1>digit strings</h1>", "<table>"]
    parts += [f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in metrics.items()]
    parts.append("</table>")
    for task, got in samples.items():
        if "video" not in got:
            continue
        cells = []
        for i in range(min(GALLERY_CLIPS, len(got["video"]))):
            audio = got.get("audio")
            cells.append(
                write_clip(
                    folder, f"{task}_{i}", got["video"][i], fps,
                    None if audio is None else audio[i], mel,
                )
            )  # fmt: skip
        parts.append(f"<h2>{html.escape(task)}</h2><table><tr>{''.join(cells)}</tr></table>")
    parts.append("</body></html>")
    (folder / "index.html").write_text("\n".join(parts))
    return folder / "index.html"


def run_strings_demo(
    out: Path,
    minutes: float | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = True,
    progress: bool = True,
    seed: int | None = None,
    processes: int = STRINGS_PROCESSES,
    clips: int = EVAL_CLIPS,
) -> dict:
    """Train, evaluate every digit-strings task on ``clips`` test clips and write the gallery
    into ``out``; returns the metrics (also ``metrics.json``)."""
    from anydit.demo import starting_config
    from anydit.eval.strings_tasks import COMPLETIONS, STRING_TASKS, evaluate_strings
    from anydit.model import load_model
    from anydit.storage import check_writable
    from anydit.train.distributed import run_local
    from anydit.train.loop import train

    start = time.perf_counter()
    check_writable(out)
    cfg = starting_config(
        out, strings_config, overrides, seed, minutes, resume, processes, start,
        reserve=EVAL_RESERVE_S, name="demo digit-strings",
    )  # fmt: skip
    run_local(train, (cfg, out, resume, progress), processes)
    trained = time.perf_counter()
    model = load_model(out / "model.safetensors")
    samples: dict = {}
    lengths = cfg.data.strings_lengths
    tasks = STRING_TASKS
    if lengths and min(lengths) < 2:  # one-digit clips: nothing after the first to fill in
        tasks = tuple(t for t in STRING_TASKS if t not in COMPLETIONS)
    metrics = evaluate_strings(
        model, clips, SAMPLING, seed=cfg.train.seed, samples=samples, lengths=lengths, tasks=tasks
    )
    from anydit.data.digits import mel_params

    hop = model.modalities["audio"].shape[0] // model.modalities["video"].shape[0]
    mel = mel_params()
    fps = mel.sample_rate / (mel.hop * hop)  # video frames a second
    page = write_strings_gallery(out, samples, metrics, fps)
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
