"""The ``anydit`` command: parse, build a config, call the library. Nothing else lives here.

    anydit train CONFIG.yaml [--set key=value ...] [--out DIR]
    anydit sample --checkpoint PATH --generate NAME[,NAME] [--given NAME=VALUE ...] [--drop NAME]
    anydit eval --checkpoint PATH [--out DIR] [--seed S] [--split test|val]
    anydit demo [--seed S] [--minutes M] [--out DIR]
    anydit serve --checkpoint PATH [--port P] [--host H]
    anydit import sd3|flux SOURCE --out MODEL.safetensors [--config-out RUN.yaml]
    anydit export sd3|flux MODEL --out FOLDER

Errors end with one line naming what was wrong and a non-zero exit code; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from anydit.errors import EXPECTED_ERRORS
from anydit.run_config import model_file, run_sampling
from anydit.storage import check_writable


def _add_distill_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="distillation arithmetic (the weights stay fp32): auto = bf16 autocast where the "
        "CPU has bf16 instructions (AVX-512 bf16, AMX) or on a GPU, else fp32",
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
        help="start afresh even if the folder holds a run (the old run is moved aside)",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="resume even though the config differs from the checkpoint's (new values apply)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="train data parallel on this many local processes (gloo, the cores shared out), "
        "as torchrun --nproc_per_node would; the same run as one process, up to rounding",
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
    q = data_sub.add_parser("pack", help="write the samples of a config's manifest into tar shards")
    q.add_argument("config", help="YAML run config: its modalities and data (source: manifest)")
    q.add_argument("--out", required=True, help="folder for the shards and shards.json")
    q.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
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
    p.add_argument("--steps", type=int, help="steps per generated modality (default 32)")
    p.add_argument("--solver", choices=["euler", "heun", "midpoint", "jump"])
    p.add_argument(
        "--guidance",
        type=_guidance,
        metavar="W|NAME=W,...",
        help="classifier-free guidance: one scale for all given modalities, or one per given "
        "modality (label=2,audio=3); 1 = none",
    )
    p.add_argument(
        "--guidance-interval",
        type=_interval,
        metavar="LOW,HIGH",
        help="guide only while a modality's time is in [LOW, HIGH] (0 = noise, 1 = data)",
    )
    p.add_argument("--shift", type=float, help="time shift of the grids (default: trained)")
    p.add_argument("--control", metavar="FILE", help="a control branch (anydit control) to apply")
    p.add_argument(
        "--control-input",
        metavar="PATH",
        help="with --control: a value of the branch's stream (an image file or .npy) that its "
        "recipe turns into the map (lowres, edges), or the map itself for a branch without one",
    )
    p.add_argument("--control-strength", type=float, help="with --control: 0 = none (default 1)")
    p.add_argument(
        "--control-guidance",
        type=float,
        help="with --control: guidance w on the control, without + w (with - without) (default 1)",
    )
    p.add_argument(
        "--reference",
        metavar="NAME=VALUE",
        help="share the keys and values of a reference value of a stream (an image file) with "
        "that stream's generated tokens (training-free)",
    )
    p.add_argument("--reference-weight", type=float, help="with --reference: 0 = none (default 1)")
    p.add_argument(
        "--isolation",
        type=float,
        help="!= 1: guide each generated stream away from what it makes reading only itself "
        "and the conditions (LTX-2's modality isolation; needs two generated streams)",
    )
    p.add_argument(
        "--stream-guidance",
        type=_weights,
        metavar="NAME=W,...",
        help="one guidance weight per generated modality (audio=3,video=1.5), in place of "
        "--guidance's float for those outputs",
    )
    p.add_argument("--unmasking", choices=["random", "confidence"], help="discrete reveal order")
    p.add_argument(
        "--cache",
        choices=["first_block", "taylor", "taylor_attention", "region"],
        help="reuse the blocks' work across steps (region: compute a share of the tokens)",
    )
    p.add_argument("--cache-threshold", type=float, help="first_block: relative change to skip")
    p.add_argument(
        "--cache-interval", type=int, help="taylor, region: run everything every N calls"
    )
    p.add_argument("--cache-order", type=int, help="taylor: forecast order (1 or 2)")
    p.add_argument("--cache-ratio", type=float, help="region: share of tokens computed per call")
    p.add_argument(
        "--kv-reuse",
        action="store_true",
        default=None,
        help="keep the keys and values of tokens whose time does not move (given; a stream "
        "between its steps): exact for given tokens of a model trained with "
        "model.isolate_given, an approximation otherwise",
    )
    p.add_argument(
        "--route-reuse",
        type=float,
        help="expert / width routers keep their decisions while no generated stream's time "
        "moved this far (MoDE's routing cache; 0: route every call)",
    )
    p.add_argument(
        "--discrete-first",
        action="store_true",
        default=None,
        help="reveal generated labels and text before the other streams move (few-step joint)",
    )
    p.add_argument(
        "--first",
        help="generated streams sampled to the end before the rest moves, e.g. label (the "
        "digit decided first: ancestral sampling through it); comma-separated",
    )
    p.add_argument("--temperature", type=float, help="softmax temperature of discrete unmasking")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"])
    p.add_argument("--out", default="samples", help="output folder")
    _add_common(p)

    p = sub.add_parser("eval", help="the digits metrics of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="model.safetensors or a run folder")
    p.add_argument(
        "--out", default=None, help="folder for metrics.json (default: beside the checkpoint)"
    )
    p.add_argument("--n-per-class", type=int, default=20)
    p.add_argument("--steps", type=int)
    p.add_argument(
        "--guidance",
        type=_guidance,
        metavar="W|SOURCE=W,...",
        help="one scale, or one per task source: label, text, image, audio, joint",
    )
    p.add_argument("--guidance-interval", type=_interval, metavar="LOW,HIGH")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="task i samples with seed + i (default: the run's train.seed, else 0)",
    )
    p.add_argument(
        "--split", choices=["test", "val"], default="test", help="where the given data come from"
    )
    _add_common(p)

    p = sub.add_parser("quantize", help="a quantized copy of a trained model (int8 / int4)")
    p.add_argument("checkpoint", help="model.safetensors or a run folder")
    p.add_argument("--scheme", required=True, choices=["w8", "w8a8", "w4a8"])
    p.add_argument(
        "--calibrate", type=int, default=4, metavar="N", help="calibration rounds (a8 schemes)"
    )
    p.add_argument("--buckets", type=int, default=8, help="time buckets of activation scales")
    p.add_argument("--out", required=True, help="the quantized model file to write")
    _add_common(p)

    p = sub.add_parser("prune", help="remove blocks of a trained model, then distill it back")
    p.add_argument("checkpoint", help="a run folder (its config names the data) or a model file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--remove", type=int, metavar="K", help="remove the K least important")
    which.add_argument(
        "--blocks", metavar="I,J", help="remove these blocks (0-based, dual-stream first)"
    )
    _add_recovery(p, "pruned")

    p = sub.add_parser(
        "slim", help="timestep-dynamic MLP width for a trained model, distilled from it (DyDiT)"
    )
    p.add_argument("checkpoint", help="a run folder (its config names the data) or a model file")
    p.add_argument("--groups", type=int, default=8, help="channel groups per MLP (default 8)")
    p.add_argument(
        "--keep",
        type=float,
        default=0.3,
        help="target share of MLP multiply-adds kept, averaged over training's inputs (0.3)",
    )
    p.add_argument("--width-weight", type=float, default=1.0, help="weight of the width loss")
    _add_recovery(p, "slimmed")

    p = sub.add_parser("control", help="train a control branch on a frozen model")
    p.add_argument("checkpoint", help="a run folder (its config names the data) or a model file")
    p.add_argument("--control", required=True, help="the map: lowres:F (a factor) or edges")
    p.add_argument("--stream", help="the image stream it steers (default: the only one)")
    p.add_argument("--depth", type=int, default=2, help="blocks the branch copies (default 2)")
    p.add_argument("--out", required=True, help="folder for control.safetensors and its report")
    p.add_argument("--data", help="a run config whose data to train on (default: the run's)")
    p.add_argument("--minutes", type=float, default=5.0, help="training wall time")
    p.add_argument("--steps", type=int, help="training steps (instead of --minutes)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak lr, decayed to 0")
    p.add_argument(
        "--others",
        choices=["drop", "draw"],
        default="drop",
        help="the other modalities while training: dropped (the control alone steers) or "
        "drawn as in training",
    )
    p.add_argument(
        "--evaluate",
        choices=["val", "test"],
        help="digits models: generate each held-out digit from its map and judge it",
    )
    p.add_argument("--strengths", default="1", help="comma-separated strengths to evaluate")
    _add_distill_precision(p)
    _add_common(p)

    p = sub.add_parser(
        "distill-encoder", help="a small text encoder that reproduces a pretrained one's features"
    )
    p.add_argument("teacher", help="a local transformers folder (safetensors weights)")
    p.add_argument("--texts", required=True, help="a .txt file, one text a line, to distil on")
    p.add_argument("--val-texts", help="a .txt file of held-out texts to report the error on")
    p.add_argument("--length", type=int, required=True, help="tokens a text (the modality's L)")
    p.add_argument("--layers", type=int, default=1, help="the teacher's last hidden states kept")
    p.add_argument("--width", type=int, default=128, help="the student's width")
    p.add_argument("--depth", type=int, default=2, help="the student's layers")
    p.add_argument("--minutes", type=float, default=2.0, help="training wall time")
    p.add_argument("--steps", type=int, help="training steps (instead of --minutes)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak lr, decayed to 0")
    p.add_argument("--out", required=True, help="the student's folder (a codec_path)")
    _add_common(p)

    p = sub.add_parser("distill", help="a few-step model (a flow map) from a trained model")
    p.add_argument("checkpoint", help="a run folder (its config names the data) or a model file")
    p.add_argument("--out", required=True, help="folder for the few-step model")
    p.add_argument("--data", help="a run config whose data to distill on (default: the run's)")
    p.add_argument("--minutes", type=float, default=5.0, help="distillation wall time")
    p.add_argument("--steps", type=int, help="distillation steps (instead of --minutes)")
    p.add_argument(
        "--guidance", type=float, default=1.0, help="the teacher's guidance, distilled in"
    )
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--lr", type=float, default=2e-4)
    _add_processes(p, "distil")
    _add_common(p)

    p = sub.add_parser("serve", help="a web page for every task of a trained model (Gradio)")
    p.add_argument("--checkpoint", required=True, help="model.safetensors or a run folder")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: this machine only)"
    )
    _add_common(p)

    p = sub.add_parser("demo", help="train on the built-in digits, evaluate, write a gallery")
    p.add_argument(
        "dataset",
        nargs="?",
        default="digits",
        choices=["digits", "digit-strings", "digit-edits", "digit-layouts"],
        help="digits (images, labels, captions, speech), digit-strings (audio and video on "
        "one clock: docs/video.md), digit-edits (editing and in-context examples in one "
        "slots stream) or digit-layouts (digits placed by a layout of boxes): "
        "docs/conditioning.md",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training, data pairing and sampling seed (default 0; a resumed demo keeps its own)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="fit the step count to this wall-clock budget instead of the fixed recipe",
    )
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="local training processes, data parallel (default 2: the recipe's; 1 trains in "
        "this process: the same model up to rounding, slower on two or more cores)",
    )
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
    return _weights(text, number=True)


def _weights(text: str, number: bool = False) -> float | dict[str, float]:
    """``NAME=W,NAME=W`` -> {NAME: W}; with ``number``, a lone ``W`` -> W too."""
    try:
        if number and "=" not in text:
            return float(text)
        pairs = [item.split("=", 1) for item in text.split(",")]
        return {name.strip(): float(w) for name, w in pairs}
    except ValueError:
        what = "a number or NAME=W pairs" if number else "NAME=W pairs"
        raise argparse.ArgumentTypeError(
            f"expected {what} separated by commas, got {text!r}"
        ) from None


def _interval(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` -> (low, high); the range is checked by ``SampleConfig``."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two times), got {text!r}") from None
    return lo, hi


def _add_recovery(p, what: str) -> None:
    """The options of a distillation from the full model (``prune``, ``slim``)."""
    p.add_argument("--out", required=True, help=f"folder for the {what} model")
    p.add_argument("--data", help="a run config whose data to distill on (default: the run's)")
    p.add_argument("--minutes", type=float, default=3.0, help="distillation wall time")
    p.add_argument("--steps", type=int, help="distillation steps (instead of --minutes)")
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--lr", type=float, help="peak lr, decayed to 0 (default 1e-3)")
    _add_processes(p, "distil")
    p.add_argument(
        "--layer-weight",
        type=float,
        help="weight of the layer-wise (hidden-state) loss against the outputs' "
        "(default 0.1; 0: outputs only)",
    )
    p.add_argument(
        "--task",
        action="append",
        metavar="'GIVEN -> GENERATED'",
        help=f"a task the {what} model is for, e.g. 'image -> label' (repeat for several); a "
        "--task-share of the distillation's rows take one of them as their roles",
    )
    p.add_argument("--task-share", type=float, default=0.5, help="share of rows on --task patterns")
    _add_distill_precision(p)
    _add_common(p)


def _add_processes(p, what: str) -> None:
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help=f"{what} data parallel on this many local processes (gloo, the cores shared out; "
        "each reads batch-size / N samples a step)",
    )


def cmd_train(args) -> int:
    from anydit.run_config import load_config
    from anydit.train import distributed
    from anydit.train.loop import train

    cfg = load_config(args.config, args.set)
    run = (cfg, args.out, not args.no_resume, not args.no_progress, None, args.allow_changes)
    if args.processes != 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--processes: already running under torchrun; give one or the other")
        distributed.run_local(train, run, args.processes)
        print(f"trained {cfg.train.steps} steps; model: {Path(args.out) / 'model.safetensors'}")
        return 0
    try:
        result = train(*run)
    finally:
        distributed.teardown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.step} steps; model: {result.model_path}")
    return 0


def cmd_import(args) -> int:
    import yaml

    from anydit.interop.diffusers import import_diffusers
    from anydit.model import save_model

    for flag in ("height", "width", "text_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: expected an integer >= 1, got {value}")
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

    model = anydit.load_model(model_file(args.model))
    folder = save_diffusers(model, args.out, args.family, args.sample_size)
    print(f"exported {args.family}: {folder}")
    return 0


def cmd_data(args) -> int:
    """``anydit data check``: every problem at once, counts per kind, non-zero exit if any;
    ``anydit data pack``: a manifest into tar shards; ``anydit data encode``: an arrays folder."""
    from anydit.config import BUILT_IN
    from anydit.data import own
    from anydit.data.sources import build_dataset
    from anydit.run_config import load_config

    cfg = load_config(args.config, args.set)
    if args.data_command == "pack":
        from anydit.data.shards import pack

        d = cfg.data
        if d.source != "manifest":
            raise ValueError(f"data pack: expected data.source 'manifest', got {d.source!r}")
        shards = pack(
            d.path, args.out, cfg.modalities, args.shard_size, d.root or None, d.allow_outside
        )
        print(f"wrote {len(shards)} shards to {args.out}")
        return 0
    if args.data_command == "encode":
        from anydit.data.encode import encode_dataset
        from anydit.data.sources import open_training_data

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
    if cfg.data.source in BUILT_IN:
        print(f"data: built-in {cfg.data.source}, {len(dataset)} samples")
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
    """CLI roles -> a task dict; values read from literals or files by each modality."""
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
        task[name] = model.modalities[name].read_value(value, n)
    for name in drop:
        if name in task:
            raise ValueError(f"--drop {name}: also generated or given")
        task[name] = "drop"
    return task


def _conditioned(model, args):
    """The scope ``anydit sample`` samples in: a control branch and a shared reference, when
    asked for (``model.control``, ``sampling.reference``)."""
    import contextlib

    from anydit.data.controls import make_control
    from anydit.model.control import controlled, load_control
    from anydit.sampling.reference import shared_reference

    stack = contextlib.ExitStack()
    if (args.control is None) != (args.control_input is None):
        raise ValueError("--control and --control-input go together")
    if args.control and args.reference:
        raise ValueError("--control and --reference do not combine (each wraps the blocks)")
    if (
        args.control_strength is not None or args.control_guidance is not None
    ) and not args.control:
        raise ValueError("--control-strength and --control-guidance need --control")
    if args.reference_weight is not None and not args.reference:
        raise ValueError("--reference-weight needs --reference")
    if args.control:
        branch = load_control(args.control, model)
        m = model.modalities[branch.cfg.stream]
        value = m.read_value(args.control_input, 1)  # (1, *shape)
        value = value if value.dim() == len(m.cfg.shape) + 1 else value[None]
        control = make_control(branch.cfg.recipe, value) if branch.cfg.recipe else value
        strength = 1.0 if args.control_strength is None else args.control_strength
        w = 1.0 if args.control_guidance is None else args.control_guidance
        stack.enter_context(controlled(model, branch, control.float(), strength, w))
    if args.reference:
        name, sep, path = args.reference.partition("=")
        if not sep or name not in model.modalities:
            raise ValueError(f"--reference {args.reference!r}: expected NAME=VALUE, NAME one of "
                             f"{list(model.modalities)}")  # fmt: skip
        value = model.modalities[name].read_value(path, 1)
        value = value if value.dim() == len(model.modalities[name].cfg.shape) + 1 else value[None]
        weight = 1.0 if args.reference_weight is None else args.reference_weight
        stack.enter_context(shared_reference(model, name, value.float(), weight))
    return stack


def cmd_sample(args) -> int:
    import anydit
    from anydit.modalities.outputs import write_outputs
    from anydit.model.dynamic import network_share, width_counts
    from anydit.sampling import settings

    model = anydit.load_model(model_file(args.checkpoint))
    config = settings(
        run_sampling(args.checkpoint),
        steps=args.steps,
        solver=args.solver,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
        shift=args.shift,
        unmasking=args.unmasking,
        temperature=args.temperature,
        precision=args.precision,
        cache=args.cache,
        cache_threshold=args.cache_threshold,
        cache_interval=args.cache_interval,
        cache_order=args.cache_order,
        cache_ratio=args.cache_ratio,
        kv_reuse=args.kv_reuse,
        route_reuse=args.route_reuse,
        discrete_first=args.discrete_first,
        first=None if args.first is None else tuple(args.first.split(",")),
        isolation=args.isolation,
        stream_guidance=args.stream_guidance,
    )
    if args.n < 1:
        raise ValueError(f"-n: expected an integer >= 1, got {args.n}")
    task = parse_task(model, args.generate, args.given, args.drop, args.n)
    out = check_writable(args.out)
    width_counts(model, reset=True)
    with _conditioned(model, args):
        samples = anydit.sample(model, task, n=args.n, seed=args.seed, config=config)
    written = write_outputs(out, model.modalities, samples)
    print(f"wrote {sum(len(v) for v in written.values())} files to {out}")
    ran, dense = width_counts(model)
    if dense:  # timestep-dynamic width: what the routers saved
        share = network_share(model, ran, dense)
        print(f"dynamic width: the MLPs ran {ran / dense:.1%} of their multiply-adds; sampling "
              f"FLOPs {share:.1%} of the dense network's")  # fmt: skip
    return 0


def cmd_eval(args) -> int:
    import anydit
    from anydit.demo import TASK_SAMPLING, demo_sampling
    from anydit.eval.metrics import override_tasks
    from anydit.eval.report import run_eval
    from anydit.run_config import load_config
    from anydit.sampling import settings

    path = model_file(args.checkpoint)
    model = anydit.load_model(path)
    out = Path(args.out) if args.out else path.parent
    seed = args.seed
    if seed is None:  # a run folder's own seed, so a demo's table is reproduced
        saved = path.parent / "config.yaml"
        seed = load_config(saved).train.seed if saved.is_file() else 0
    # The demo's settings; a setting given here replaces that field of every task's own.
    config = settings(
        demo_sampling(),
        steps=args.steps,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
    )
    per_task = override_tasks(
        TASK_SAMPLING, steps=args.steps, guidance=args.guidance, interval=args.guidance_interval
    )
    run_eval(model, out, args.n_per_class, config, seed=seed, per_task=per_task, split=args.split)
    print(f"metrics: {out / ('metrics.json' if args.split == 'test' else 'metrics_val.json')}")
    return 0


def cmd_demo(args) -> int:
    from anydit.demo import run_demo

    if args.dataset != "digits":  # the other built-in demos: their sampling is fixed
        from functools import partial

        from anydit.demo_conditioning import run_task_demo
        from anydit.demo_strings import run_strings_demo

        if args.guidance is not None or args.guidance_interval is not None:
            raise ValueError(
                f"demo {args.dataset}: --guidance and --guidance-interval are the digits "
                "demo's; this demo's sampling is set in its module"
            )
        strings = args.dataset == "digit-strings"
        run = run_strings_demo if strings else partial(run_task_demo, args.dataset)
        default = "runs/demo-" + ("strings" if strings else args.dataset.removeprefix("digit-"))
        run(
            Path(args.out if args.out != "runs/demo" else default),
            minutes=args.minutes,
            seed=args.seed,
            overrides=args.set,
            resume=not args.no_resume,
            progress=not args.no_progress,
            **({} if args.processes is None else {"processes": args.processes}),
        )
        return 0
    run_demo(
        Path(args.out),
        minutes=args.minutes,
        seed=args.seed,
        overrides=args.set,
        resume=not args.no_resume,
        progress=not args.no_progress,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
        **({} if args.processes is None else {"processes": args.processes}),
    )
    return 0


def cmd_quantize(args) -> int:
    import anydit
    from anydit.compress import quantize, weight_bytes

    if args.calibrate < 1 or args.buckets < 1:
        raise ValueError("--calibrate and --buckets: expected integers >= 1")
    model = anydit.load_model(model_file(args.checkpoint))
    config = run_sampling(args.checkpoint)
    quantized = quantize(model, args.scheme, args.calibrate, buckets=args.buckets, config=config)
    path = anydit.save_model(quantized, args.out)
    ratio = weight_bytes(quantized) / weight_bytes(model)
    print(f"{args.scheme}: {path} ({ratio:.2f}x the weight bytes)")
    return 0


def cmd_prune(args) -> int:
    from anydit.compress import prune

    model, cfg, batches, options = _recovery_setup(args)
    pruned, removed, scores, losses = prune(
        model,
        args.remove or 0,
        batches,
        blocks=None if args.blocks is None else _block_list(args.blocks),
        **options,
    )
    report = {"removed": removed, "importance": scores}
    _save_recovered(args, cfg, pruned, losses, options, report)
    print(f"removed blocks {removed}; {len(losses)} distillation steps; model: {args.out}")
    return 0


def _recovery_setup(args) -> tuple:
    """What ``prune`` and ``slim`` share: the model, its run config, batches of its data and
    the distillation's options (``steps`` or ``minutes``, ``lr``, ``layer_weight``,
    ``processes``, ``precision``, ``tasks``, ``task_share``)."""
    import anydit
    from anydit.compress.prune import LAYER_WEIGHT, LR
    from anydit.train.distill import parse_task

    model = anydit.load_model(model_file(args.checkpoint))
    cfg, batches = _run_data(args, model)
    options = {
        "steps": args.steps or None,
        "minutes": None if args.steps else args.minutes,
        "lr": LR if args.lr is None else args.lr,
        "layer_weight": LAYER_WEIGHT if args.layer_weight is None else args.layer_weight,
        "processes": args.processes,
        "precision": args.precision,
        "tasks": [parse_task(t, model.modalities) for t in args.task or []],
        "task_share": args.task_share,
    }
    return model, cfg, batches, options


def _save_recovered(args, cfg, model, losses, options: dict, report: dict) -> None:
    """Write a distilled model (``prune``, ``slim``): model.safetensors, its config.yaml and
    a report of the recipe (``report`` first, then the distillation's settings)."""
    import json

    import yaml

    import anydit
    from anydit.train.optim import resolve_precision

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    anydit.save_model(model, out / "model.safetensors")
    tree = cfg.to_dict()
    tree["model"] = json.loads(json.dumps(model.cfg.__dict__, default=list))
    (out / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    report = {**report, "distill_steps": len(losses), "lr": options["lr"]}
    report["layer_weight"] = options["layer_weight"]
    report |= {"processes": args.processes, "precision": resolve_precision(args.precision)}
    report["tasks"], report["task_share"] = args.task or [], args.task_share
    report["distill_loss"] = [losses[0], losses[-1]] if losses else []
    (out / "prune.json" if args.command == "prune" else out / "slim.json").write_text(
        json.dumps(report, indent=2)
    )


def cmd_slim(args) -> int:
    from anydit.compress.slim import slim

    model, cfg, batches, options = _recovery_setup(args)
    slimmed, losses = slim(
        model, batches, groups=args.groups, keep=args.keep, width_weight=args.width_weight,
        **options,
    )  # fmt: skip
    report = {"groups": args.groups, "keep": args.keep, "width_weight": args.width_weight}
    _save_recovered(args, cfg, slimmed, losses, options, report)
    print(f"dynamic width, {args.groups} groups, target {args.keep:g}; {len(losses)} "
          f"distillation steps; model: {args.out}")  # fmt: skip
    return 0


def _block_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--blocks: expected block indices like 1,2, got {text!r}") from None


def _run_data(args, model):
    """Batches of the data a run trained on (``--data`` or the run folder's config)."""
    from anydit.data.sources import RandomBatches, open_training_data
    from anydit.run_config import load_config

    source = Path(args.data) if args.data else Path(args.checkpoint) / "config.yaml"
    if not source.is_file():
        raise FileNotFoundError(
            f"{args.command}: no data: {source} does not exist (give --data RUN.yaml)"
        )
    cfg = load_config(source)
    dataset, _ = open_training_data(cfg.data, list(model.modality_configs), log=lambda *_: None)
    return cfg, RandomBatches(dataset, model.modalities, args.batch_size)


def cmd_control(args) -> int:
    import json

    import anydit
    from anydit.data.controls import control_channels, make_control
    from anydit.model.control import ControlBranch, ControlConfig, save_control
    from anydit.train.control import train_control
    from anydit.train.optim import resolve_precision

    model = anydit.load_model(model_file(args.checkpoint))
    images = [n for n, m in model.modalities.items() if m.cfg.kind == "image"]
    stream = args.stream or (images[0] if len(images) == 1 else None)
    if stream is None:
        raise ValueError(f"control: give --stream, one of the image streams {images}")
    if stream not in images:
        raise ValueError(f"control: --stream {stream!r} is not an image stream of {images}")
    channels = control_channels(args.control, model.modalities[stream].cfg.shape[0])
    branch = ControlBranch(model, ControlConfig(stream, channels, args.depth, args.control))
    if args.evaluate and tuple(model.modalities[stream].cfg.shape) != (1, 8, 8):
        raise ValueError(f"control: --evaluate reads digits; {stream!r} is not (1, 8, 8)")
    strengths = tuple(float(x) for x in args.strengths.split(","))
    _, batches = _run_data(args, model)
    steps, minutes = (args.steps, None) if args.steps else (None, args.minutes)
    losses = train_control(
        model, branch, batches(), lambda x: make_control(args.control, x), steps=steps,
        minutes=minutes, lr=args.lr, others=args.others,
        precision=resolve_precision(args.precision),
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_control(branch, out / "control.safetensors")
    report = {"control": args.control, "stream": stream, "depth": args.depth, "lr": args.lr}
    report |= {"others": args.others, "steps": len(losses), "loss": [losses[0], losses[-1]]}
    if args.evaluate:
        from anydit.demo_conditioning import write_control_gallery
        from anydit.eval.conditioning import evaluate_control

        pictures: dict = {}
        report["evaluation"] = evaluate_control(
            model, branch, args.control, args.evaluate, strengths, samples=pictures
        )
        for s, r in report["evaluation"]["strengths"].items():
            print(f"strength {s}: judge accuracy {r['accuracy']:.3f}, pixel mse {r['mse']:.4f}")
        print(f"gallery: {write_control_gallery(out, report['evaluation'], pictures)}")
    (out / "control.json").write_text(json.dumps(report, indent=2))
    print(f"{len(losses)} steps; branch: {out / 'control.safetensors'}")
    return 0


def cmd_distill(args) -> int:
    import dataclasses

    import yaml

    import anydit
    from anydit.model.extend import extend
    from anydit.train.distill import distill_local

    teacher = anydit.load_model(model_file(args.checkpoint))
    if teacher.cfg.flow_map:
        raise ValueError(
            f"distill: {args.checkpoint} is a flow map already; start from its teacher"
        )
    cfg, batches = _run_data(args, teacher)
    student = extend(teacher, [], flow_map=True)
    steps, minutes = (args.steps, None) if args.steps else (None, args.minutes)
    losses = distill_local(
        student, teacher, batches, args.processes,
        steps=steps, minutes=minutes, lr=args.lr, guidance=args.guidance,
    )  # fmt: skip
    out = check_writable(args.out)
    anydit.save_model(student, out / "model.safetensors")
    tree = cfg.to_dict()
    tree["model"] = dataclasses.asdict(student.cfg)
    tree["sample"] = {**tree.get("sample", {}), "solver": "jump", "steps": 2}
    if args.guidance != 1.0:  # distilled in
        tree["sample"]["guidance"] = 1.0
    (out / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    print(f"distilled {len(losses)} steps (loss {losses[0]:.4f} -> {losses[-1]:.4f}): {out}")
    return 0


def _read_texts(path: str, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file '{p}' does not exist")
    texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{what} file '{p}' has no texts (one a line)")
    return texts


def cmd_distill_encoder(args) -> int:
    import json

    from anydit.train.encoder import distill_encoder

    check_writable(Path(args.out))
    result = distill_encoder(
        args.teacher,
        _read_texts(args.texts, "--texts"),
        args.out,
        args.length,
        layers=args.layers,
        val_texts=_read_texts(args.val_texts, "--val-texts") if args.val_texts else None,
        width=args.width,
        depth=args.depth,
        steps=args.steps,
        minutes=None if args.steps else args.minutes,
        lr=args.lr,
    )
    (Path(args.out) / "distill.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print(f"student: {args.out} (use it as codec_path in place of {args.teacher})")
    return 0


def cmd_serve(args) -> int:
    try:
        from anydit.serve import serve
    except ImportError as err:
        raise OSError(f"anydit serve needs Gradio: pip install 'anydit[serve]' ({err})") from None
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port} (Ctrl-C stops it)")
    serve(args.checkpoint, args.host, args.port)
    return 0


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "eval": cmd_eval,
    "demo": cmd_demo,
    "serve": cmd_serve,
    "quantize": cmd_quantize,
    "prune": cmd_prune,
    "slim": cmd_slim,
    "distill": cmd_distill,
    "control": cmd_control,
    "distill-encoder": cmd_distill_encoder,
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
