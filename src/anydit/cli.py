"""The ``anydit`` command: parse, build a config, call the library. Nothing else lives here.

    anydit train CONFIG.yaml [--set key=value ...] [--out DIR]
    anydit sample --checkpoint PATH --generate NAME[,NAME] [--given NAME=VALUE ...] [--drop NAME]
    anydit eval --checkpoint PATH [--out DIR]
    anydit demo [--minutes M] [--out DIR]
    anydit import sd3|flux SOURCE --out MODEL.safetensors [--config-out RUN.yaml]
    anydit export sd3|flux MODEL --out FOLDER

Errors end with one line naming what was wrong and a non-zero exit code; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from anydit.config import ConfigError

EXPECTED_ERRORS = (
    ConfigError,
    ValueError,
    FileNotFoundError,
    OSError,
    FloatingPointError,
    KeyError,
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anydit", description="Multimodal diffusion transformers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML file mapped onto anydit.Config")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    p.add_argument(
        "--out", default="runs/train", help="output folder (resumed if it holds a checkpoint)"
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh even if the folder holds a checkpoint",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(p)

    p = sub.add_parser("data", help="inspect training data")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("check", help="read every sample of a config's data; report problems")
    q.add_argument("config", help="YAML run config (its data and modalities)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_common(q)
    q = data_sub.add_parser(
        "encode", help="read a config's data once into an arrays folder (vae latents encoded)"
    )
    q.add_argument("config", help="YAML run config (its data and modalities)")
    q.add_argument("--out", required=True, help="folder for NAME.npy arrays")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_common(q)
    q = data_sub.add_parser("pack", help="write a manifest's samples into tar shards")
    q.add_argument("manifest", help="JSONL, CSV or Parquet manifest")
    q.add_argument("--out", required=True, help="folder for the shards and shards.json")
    q.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    _add_common(q)

    p = sub.add_parser("import", help="turn a diffusers SD3 / Flux transformer into a model file")
    p.add_argument("family", choices=["sd3", "flux"])
    p.add_argument("source", help="a local diffusers model folder (config.json + safetensors)")
    p.add_argument("--out", required=True, help="the anydit model file to write")
    p.add_argument("--height", type=int, help="latent height the model will see")
    p.add_argument("--width", type=int, help="latent width")
    p.add_argument("--text-tokens", type=int, help="text-embedding sequence length")
    p.add_argument(
        "--config-out", help="also write a run config (modalities, model, train.init) to extend"
    )
    p.add_argument("--vae", help="a diffusers autoencoder folder: the image modality's codec")
    _add_common(p)
    p = sub.add_parser("export", help="write an imported (fine-tuned) model as a diffusers folder")
    p.add_argument("family", choices=["sd3", "flux"])
    p.add_argument("model", help="an anydit model file or run folder")
    p.add_argument("--out", required=True, help="the diffusers model folder to write")
    p.add_argument("--sample-size", type=int, help="SD3: the config's sample_size")
    _add_common(p)

    p = sub.add_parser("sample", help="sample any task from a trained model")
    p.add_argument("--checkpoint", required=True, help="model.safetensors or a run folder")
    p.add_argument("--generate", required=True, help="modalities to generate, comma-separated")
    p.add_argument(
        "--given",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="condition: a literal or a file (repeatable)",
    )
    p.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="NAME",
        help="marginalise a modality out (the default for unnamed ones)",
    )
    p.add_argument("-n", type=int, default=8, help="number of samples")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--solver", default="euler", choices=["euler", "heun", "midpoint"])
    p.add_argument(
        "--guidance",
        type=_guidance,
        default=1.0,
        metavar="W|NAME=W,...",
        help="classifier-free guidance: one scale for all given modalities, or one per given "
        "modality (label=2,audio=3); 1 = none",
    )
    p.add_argument(
        "--guidance-interval",
        type=_interval,
        default=(0.0, 1.0),
        metavar="LOW,HIGH",
        help="guide only while a modality's time is in [LOW, HIGH] (0 = noise, 1 = data)",
    )
    p.add_argument(
        "--shift", type=float, default=None, help="time shift of the grids (default: trained)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--out", default="samples", help="output folder")
    _add_common(p)

    p = sub.add_parser("eval", help="the digits metrics of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="model.safetensors or a run folder")
    p.add_argument(
        "--out", default=None, help="folder for metrics.json (default: beside the checkpoint)"
    )
    p.add_argument("--n-per-class", type=int, default=20)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument(
        "--guidance",
        type=_guidance,
        default=1.0,
        metavar="W|SOURCE=W,...",
        help="one scale, or one per task source: label, text, image, audio, joint",
    )
    p.add_argument("--guidance-interval", type=_interval, default=(0.0, 1.0), metavar="LOW,HIGH")
    _add_common(p)

    p = sub.add_parser("demo", help="train on the built-in digits, evaluate, write a gallery")
    p.add_argument(
        "--minutes", type=float, default=10.0, help="wall-clock budget for the whole demo"
    )
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument(
        "--guidance",
        type=_guidance,
        default=None,
        metavar="W|SOURCE=W,...",
        help="evaluation guidance (default label=1.5,text=2.5,image=2.5,audio=2.5,joint=4)",
    )
    p.add_argument(
        "--guidance-interval",
        type=_interval,
        default=None,
        metavar="LOW,HIGH",
        help="evaluation guidance interval (0.3,1)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    _add_common(p)
    return parser


def _guidance(text: str) -> float | dict[str, float]:
    """``W`` -> W, or ``NAME=W,NAME=W`` -> {NAME: W}."""
    try:
        if "=" not in text:
            return float(text)
        pairs = [item.split("=", 1) for item in text.split(",")]
        return {name.strip(): float(w) for name, w in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or NAME=W pairs separated by commas, got {text!r}"
        ) from None


def _interval(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` -> (low, high) with 0 <= low <= high <= 1."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two times), got {text!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH <= 1, got {text!r}")
    return lo, hi


def _model_path(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    return p


def cmd_train(args) -> int:
    from anydit.config import load_config
    from anydit.train import distributed
    from anydit.train.loop import train

    cfg = load_config(args.config, args.set)
    try:
        result = train(cfg, args.out, resume=not args.no_resume, progress=not args.no_progress)
    finally:
        distributed.teardown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.step} steps; model: {result.model_path}")
    return 0


def cmd_import(args) -> int:
    import yaml

    from anydit.interop.diffusers import import_diffusers
    from anydit.train.checkpoint import save_model

    model = import_diffusers(
        args.source, args.family, args.height, args.width, args.text_tokens, vae=args.vae
    )
    path = save_model(model, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"imported {args.family} ({n / 1e6:.1f}M parameters, modalities {model.names}): {path}")
    if args.config_out:
        tree = {
            "modalities": [
                _set_fields(m, keep=("name", "kind", "shape")) for m in model.modality_configs
            ],
            "model": _set_fields(model.cfg),
            "train": {"init": str(path)},
        }
        Path(args.config_out).write_text(yaml.safe_dump(tree, sort_keys=False))
        print(f"run config: {args.config_out}")
    return 0


def _set_fields(obj, keep: tuple[str, ...] = ()) -> dict:
    """A dataclass as a dict of the fields that differ from their defaults (and ``keep``)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name in keep or value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def cmd_export(args) -> int:
    import anydit
    from anydit.interop.diffusers import save_diffusers

    model = anydit.load_model(_model_path(args.model))
    folder = save_diffusers(model, args.out, args.family, args.sample_size)
    print(f"exported {args.family}: {folder}")
    return 0


def cmd_data(args) -> int:
    """``anydit data check``: every problem at once, counts per kind, non-zero exit if any;
    ``anydit data pack``: a manifest into tar shards."""
    from anydit.config import load_config
    from anydit.data import own
    from anydit.data.sources import build_dataset

    if args.data_command == "pack":
        from anydit.data.shards import pack

        shards = pack(args.manifest, args.out, args.shard_size)
        print(f"wrote {len(shards)} shards to {args.out}")
        return 0
    cfg = load_config(args.config, args.set)
    if args.data_command == "encode":
        from anydit.data.sources import open_training_data
        from anydit.data.vae import encode_dataset

        dataset, _ = open_training_data(cfg.data, cfg.modalities)
        out = encode_dataset(dataset, cfg.modalities, args.out)
        print(f"wrote {out} (train with data.source: arrays, data.path: {out})")
        return 0
    if cfg.data.source == "shards":
        cfg.data.on_error = "skip"  # read everything, report every problem
    dataset = build_dataset(cfg.data, "train", cfg.modalities)
    if cfg.data.source == "shards":
        n = sum(1 for _ in dataset)
        bad = sum(dataset.skipped.values())
        print(f"{dataset.where}: {n + bad} samples, {n} readable")
        if bad:
            print("problems: " + ", ".join(f"{k} {v}" for k, v in sorted(dataset.skipped.items())))
        return 1 if bad or not n else 0
    if cfg.data.source == "digits":
        print(f"data: built-in digits, {len(dataset)} samples")
        return 0
    filled = own.fill_label_classes(cfg.modalities, dataset)
    if filled:
        dataset = build_dataset(cfg.data, "train", cfg.modalities)
    report = own.scan(dataset)
    for _, message in report.problems:
        print(message)
    total = len(dataset.rows)
    print(f"{dataset.where}: {total} samples, {len(report.good)} readable")
    for name in filled:
        classes = next(m.classes for m in cfg.modalities if m.name == name)
        print(f"label '{name}': {len(classes)} classes from the data")
    if not report.problems and total:
        return 0
    counts = report.counts or {"empty dataset": 1}
    print("problems: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1


def parse_task(model, generate: str, given: list[str], drop: list[str], n: int) -> dict:
    """CLI roles -> a task dict; values read from literals or files."""
    from anydit.data.files import read_value

    task: dict = {}
    for name in [g.strip() for g in generate.split(",") if g.strip()]:
        task[name] = "generate"
    for item in given:
        if "=" not in item:
            raise ValueError(f"--given {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        name = name.strip()
        if name not in model.modalities:
            raise ValueError(f"--given {name}: unknown modality; this checkpoint has {model.names}")
        if name in task:
            raise ValueError(f"--given {name}: also named in --generate")
        task[name] = read_value(model.modalities[name], value, n)
    for name in drop:
        if name in task:
            raise ValueError(f"--drop {name}: also generated or given")
        task[name] = "drop"
    return task


def cmd_sample(args) -> int:
    import anydit
    from anydit.data.files import write_outputs

    model = anydit.load_model(_model_path(args.checkpoint))
    task = parse_task(model, args.generate, args.given, args.drop, args.n)
    out = Path(args.out)
    _ensure_dir(out)
    samples = anydit.sample(
        model,
        task,
        n=args.n,
        steps=args.steps,
        solver=args.solver,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
        shift=args.shift,
        seed=args.seed,
        precision=args.precision,
    )
    written = write_outputs(out, model, samples)
    print(f"wrote {sum(len(v) for v in written.values())} files to {out}")
    return 0


def _ensure_dir(out: Path) -> None:
    """Create ``out`` or fail now, naming it, if it cannot be written."""
    from anydit.train.loop import check_writable

    check_writable(out)


def run_eval(
    model,
    out: Path,
    n_per_class: int,
    steps: int,
    guidance: float | dict[str, float],
    gallery: bool,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
) -> dict:
    """Metrics (+ gallery) of a digits model into ``out``; returns the metrics."""
    from anydit.eval.metrics import evaluate_digits, format_table

    _ensure_dir(out)
    results = evaluate_digits(
        model,
        n_per_class=n_per_class,
        steps=steps,
        guidance=guidance,
        guidance_interval=guidance_interval,
        progress=True,
    )
    metrics = {k: v for k, v in results.items() if k != "samples"}
    finite = {
        k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()
    }
    (out / "metrics.json").write_text(json.dumps(finite, indent=2))  # strict JSON: NaN -> null
    print(format_table(metrics))
    if gallery:
        from anydit.eval.gallery import write_gallery

        page = write_gallery(out, model, results, metrics)
        print(f"gallery: {page}")
    return metrics


def cmd_eval(args) -> int:
    import anydit

    path = _model_path(args.checkpoint)
    model = anydit.load_model(path)
    out = Path(args.out) if args.out else path.parent
    run_eval(
        model,
        out,
        args.n_per_class,
        args.steps,
        args.guidance,
        gallery=False,
        guidance_interval=args.guidance_interval,
    )
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_demo(args) -> int:
    from anydit.demo import GUIDANCE, GUIDANCE_INTERVAL, run_demo

    run_demo(
        Path(args.out),
        minutes=args.minutes,
        overrides=args.set,
        resume=not args.no_resume,
        progress=not args.no_progress,
        guidance=dict(GUIDANCE) if args.guidance is None else args.guidance,
        guidance_interval=args.guidance_interval or GUIDANCE_INTERVAL,
    )
    return 0


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "eval": cmd_eval,
    "demo": cmd_demo,
    "data": cmd_data,
    "import": cmd_import,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"anydit {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anydit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
