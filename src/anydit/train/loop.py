"""The training loop: one linear recipe, as DiT's and torchtitan's ``train.py``.

    join the torchrun job (if any) and claim the output folder
    open the data (label classes and vector statistics may come from it)
    build the model, its EMA, the parallel wrap, the optimiser and the schedule
    resume from the newest checkpoint (refusing a config that would not continue exactly)
    loop: read a batch -> ``step.forward_backward`` -> clip, update, EMA -> log, checkpoint

One process or many, the data order is a function of (seed, epoch) and every random draw of a
step is made for the global batch (``train.step``), so a run continues bit for bit after a
kill and N processes compute what one does.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from anydit.config import Config, ConfigError
from anydit.data.sources import EpochReader, epoch_batches, make_collate, open_training_data
from anydit.errors import DataError
from anydit.model import MMDiT
from anydit.model.extend import init_from_file
from anydit.model.mup import lr_groups
from anydit.storage import check_writable
from anydit.train import distributed as D
from anydit.train import folder
from anydit.train.checkpoint import (
    RunState,
    latest_checkpoint,
    load_checkpoint,
    remove_leftovers,
    save_checkpoint,
    saved_config,
)
from anydit.train.ema import ema_decay, ema_update, make_ema
from anydit.train.logs import Logger, peak_memory_mb, write_sample_grid
from anydit.train.optim import lr_lambda, make_optimizer
from anydit.train.step import clip_and_step, forward_backward, micro_inputs


@dataclass
class TrainResult:
    """What a run leaves behind."""

    out_dir: Path
    model_path: Path
    step: int
    history: list[dict] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # bad samples left out, by kind


def train(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    allow_changes: bool = False,
) -> TrainResult:
    """Train ``cfg`` into ``out_dir``; resume from its newest checkpoint when ``resume``.

    Writes ``model.safetensors`` (EMA weights: what sampling and eval load), resumable
    ``checkpoints/step_N/``, ``metrics.jsonl``, TensorBoard events and ``config.yaml``.
    With ``resume`` false, an earlier run in the folder is moved aside first. Resuming with a
    config that changes what the run computes is refused, naming each change, unless
    ``allow_changes`` (then the new values apply from here on). Under torchrun every process
    runs this; the main one writes.
    """
    out_dir, tc = Path(out_dir), cfg.train
    info = D.setup(tc.device)
    world = info.world
    if tc.batch_size % (world * tc.grad_accum):
        raise ValueError(
            f"train.batch_size = {tc.batch_size} must divide evenly into {world} processes x "
            f"{tc.grad_accum} micro-batches"
        )
    say = print if info.main else (lambda *_: None)
    lock = None
    try:
        if info.main:
            check_writable(out_dir)
            lock = folder.claim(out_dir)
            remove_leftovers(out_dir)
            if not resume and (moved := folder.set_aside(out_dir)) is not None:
                say(f"--no-resume: the earlier run in {out_dir} was moved to {moved}")
        D.barrier()
        return _run(cfg, out_dir, info, resume, progress, on_log, allow_changes, say)
    finally:
        if lock is not None:
            lock.close()


def _run(
    cfg: Config, out_dir: Path, info: D.DistInfo, resume, progress, on_log, allow_changes, say
):
    tc = cfg.train
    dataset, data_problems = open_training_data(cfg.data, cfg.modalities, log=say)

    torch.manual_seed(tc.seed)  # the same initial weights in every process
    model = MMDiT(cfg.modalities, cfg.model)
    if tc.init:
        report = init_from_file(model, tc.init)
        new = sorted({model.stream_of(k) for k in report["new"] if ".lora_" not in k})
        lora = sorted({model.stream_of(k) for k in report["new"] if ".lora_" in k})
        say(
            f"init: {len(report['loaded'])} tensors from {tc.init}; new streams: "
            f"{new or 'none'}" + (f"; new LoRA adapters on {lora}" if lora else "")
        )
    model = model.to(info.device)
    if tc.freeze:
        say(f"frozen: {tc.freeze} ({model.freeze(tc.freeze) / 1e6:.2f}M parameters)")
    ema = make_ema(model) if tc.ema > 0 else None
    net = D.parallelize(model, info, tc.parallel, tc.compile)
    if ema is not None and info.enabled and tc.parallel == "fsdp":
        D.shard(ema)  # EMA shards live beside the model's shards
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    optimizer = make_optimizer(lr_groups(trainable, model.lr_scales, tc.lr), tc.lr, tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    gen = torch.Generator(info.device).manual_seed(tc.seed + 1)  # shared by all processes

    state, config = RunState(), cfg.to_dict()
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        _check_same_run(ckpt, config, allow_changes)
        state = load_checkpoint(ckpt, model, ema, optimizer, scheduler, gen)
        if allow_changes:
            _apply_new_optimiser_settings(optimizer, scheduler, tc)
        say(f"resuming {out_dir} at step {state.step} (from {ckpt.name})")
    if info.main:
        _write_config(config, out_dir, state.step)

    reader = EpochReader(dataset, make_collate(model.modalities), cfg.data.workers)
    logger = Logger(out_dir, info.main, tc.tensorboard, progress, tc.steps, state.step)
    history: list[dict] = []
    bad_in_row = 0
    t_last, steps_since = time.perf_counter(), 0
    while state.step < tc.steps:
        batches, epoch_len = epoch_batches(
            dataset, state.epoch, state.position, info.rank, info.world, tc.batch_size,
            tc.seed, reader,
        )  # fmt: skip
        start_position = state.position
        for raw, present in _agreed(batches, info, dataset):
            raw = {k: v.to(info.device) for k, v in raw.items()}
            state.position += 1
            micro = micro_inputs(
                model, raw, present, cfg.flow, gen, tc.grad_accum, info.rank, tc.batch_size
            )
            loss = forward_backward(net, model, micro, tc.precision, info.world)
            if loss is None:
                bad_in_row += 1
                warnings.warn(f"step {state.step}: non-finite loss; step skipped", stacklevel=1)
                if bad_in_row >= tc.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad_in_row} non-finite losses in a row at step {state.step}; stopping "
                        "(lower train.lr, or raise train.max_bad_steps)"
                    )
                continue
            bad_in_row = 0
            grad_norm = clip_and_step(net, optimizer, tc.grad_clip)
            scheduler.step()
            if ema is not None:
                ema_update(ema, model, ema_decay(state.step, tc.ema))
            state.step += 1
            steps_since += 1

            if state.step % tc.log_every == 0 or state.step == tc.steps:
                now = time.perf_counter()
                rate = steps_since * tc.batch_size / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                totals = D.all_sum(torch.stack([loss.total, *loss.parts.values()]).float())
                record = {
                    "step": state.step,
                    "loss": totals[0].item(),
                    **{f"loss/{k}": v.item() for k, v in zip(loss.parts, totals[1:], strict=True)},
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": D.scalar(grad_norm),
                    "samples_per_s": rate,
                    "tokens_per_s": rate * sum(m.num_tokens for m in model.modalities.values()),
                    "memory_mb": peak_memory_mb(info.device),
                }
                history.append(record)
                logger.log(record)
                if on_log is not None:
                    on_log(record)
            logger.tick()
            if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
                save_checkpoint(
                    out_dir, state, model, ema, optimizer, scheduler, gen,
                    tc.keep_checkpoints, info.main, config,
                )  # fmt: skip
            if (
                tc.sample_every
                and state.step % tc.sample_every == 0
                and info.main
                and not info.enabled
            ):
                write_sample_grid(
                    ema if ema is not None else model, out_dir, state.step, logger, cfg.sample
                )
            if state.step >= tc.steps:
                break
        else:  # the epoch's batches are used up (a stream may end before epoch_len)
            if state.position == start_position == 0:
                skipped = getattr(dataset, "skipped", {})
                raise DataError(
                    f"epoch {state.epoch} of the data gave no full batch of "
                    f"{tc.batch_size // info.world} samples per process (skipped so far: "
                    f"{skipped or 'none'}); fix or drop the bad samples, or lower "
                    "train.batch_size",
                    "empty dataset",
                )
            state.epoch, state.position = state.epoch + 1, 0
            continue
        if state.position >= epoch_len:
            state.epoch, state.position = state.epoch + 1, 0
    logger.close()
    if data_problems and info.main:
        print(f"data: {sum(data_problems.values())} samples were skipped: {data_problems}")
        (out_dir / "data_problems.json").write_text(json.dumps(data_problems, indent=2))
    return TrainResult(out_dir, out_dir / "model.safetensors", state.step, history, data_problems)


def _agreed(batches, info: D.DistInfo, dataset):
    """The batches, for as long as every process has one: a stream may run out on one rank
    first (skipped samples), and then all end the epoch together instead of waiting on each
    other. Indexed datasets give every rank the same number of batches."""
    if not info.enabled or not isinstance(dataset, torch.utils.data.IterableDataset):
        yield from batches
        return
    it = iter(batches)
    while True:
        item = next(it, None)
        have = torch.tensor([float(item is not None)], device=info.device)
        if D.all_sum(have).item() < info.world:
            return
        yield item


def _check_same_run(ckpt: Path, config: dict, allow_changes: bool) -> None:
    saved = saved_config(ckpt)
    if saved is None:
        return  # written before checkpoints kept their config
    diff = folder.changes(saved, config)
    if diff and not allow_changes:
        raise ConfigError(
            f"{ckpt} was written by a run with another config, so resuming would not continue "
            f"it exactly: {'; '.join(diff)}. Run with the checkpoint's settings, choose another "
            "--out, pass --no-resume to start afresh (the old run is kept aside), or "
            "--allow-changes to resume with the new values"
        )


def _apply_new_optimiser_settings(optimizer, scheduler, tc) -> None:
    """After a resume with ``allow_changes``: the new lr, weight decay and schedule apply."""
    ratio = [g["initial_lr"] / scheduler.base_lrs[0] for g in optimizer.param_groups]  # μP
    scheduler.base_lrs = [tc.lr * r for r in ratio]
    scheduler.lr_lambdas = [lr_lambda(tc)] * len(optimizer.param_groups)
    for group, lr, r in zip(optimizer.param_groups, scheduler.get_lr(), ratio, strict=True):
        group["initial_lr"], group["lr"], group["weight_decay"] = tc.lr * r, lr, tc.weight_decay


def _write_config(config: dict, out_dir: Path, step: int) -> None:
    """``config.yaml`` describes what ran: a resumed run with new settings keeps the old file
    as ``config.until_step_N.yaml``."""
    path = out_dir / "config.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    if path.is_file() and step > 0:
        old = path.read_text()
        if old == text:
            return
        keep, n = out_dir / f"config.until_step_{step:08d}.yaml", 1
        while keep.exists():
            n += 1
            keep = out_dir / f"config.until_step_{step:08d}.{n}.yaml"
        keep.write_text(old)
    path.write_text(text)
