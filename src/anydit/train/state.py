"""Resumable training state: weights, EMA, optimiser, schedule, RNG and data position.

State dicts go through ``torch.distributed.checkpoint.state_dict`` with full (unsharded) tensors,
so one layout serves one process, DDP and FSDP2 alike: a checkpoint saved under FSDP resumes in
one process and the other way round. Weights are safetensors; the optimiser state is a torch
file read back with ``weights_only=True`` (no arbitrary unpickling). A checkpoint is written to
a temporary folder and renamed into place, so a kill mid-write leaves the previous one whole.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from anydit.train.checkpoint import read_weights, save_model
from anydit.train.distributed import barrier

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
LOAD = StateDictOptions(full_state_dict=True)


@dataclass
class RunState:
    """Where a run is: optimiser steps taken, epoch, and batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    position: int = 0


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``out_dir/checkpoints`` (or None)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "state.pt").is_file())
    return done[-1] if done else None


def full_weights(model) -> dict[str, torch.Tensor]:
    """Unsharded CPU weights of a plain, DDP or FSDP2 model (collective under FSDP)."""
    return get_model_state_dict(model, options=FULL)


def save_checkpoint(
    out_dir: Path,
    state: RunState,
    model,
    ema,
    optimizer,
    scheduler,
    generator,
    keep: int,
    main: bool,
) -> Path:
    """Gather everything (every process must call this), then the main process writes."""
    weights = full_weights(model)
    ema_weights = full_weights(ema) if ema is not None else None
    optim = get_optimizer_state_dict(model, optimizer, options=FULL)
    final = checkpoint_dir(out_dir, state.step)
    if main:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, tmp / "model.safetensors", weights)
        if ema_weights is not None:
            save_model(model, tmp / "ema.safetensors", ema_weights)
        blob = {
            "step": state.step,
            "epoch": state.epoch,
            "position": state.position,
            "optimizer": optim,
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
        }
        torch.save(blob, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted(p for p in final.parent.glob("step_*") if not p.name.endswith(".tmp"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        # the sampling/eval file: EMA weights when there are any
        save_model(model, Path(out_dir) / "model.safetensors", ema_weights or weights)
    barrier()
    return final


def load_checkpoint(ckpt: Path, model, ema, optimizer, scheduler, generator) -> RunState:
    """Restore what ``save_checkpoint`` wrote into (possibly wrapped or sharded) objects."""
    reference = model.state_dict()  # global shapes, also for FSDP2's DTensors
    set_model_state_dict(model, read_weights(ckpt / "model.safetensors", reference), options=LOAD)
    if ema is not None:
        set_model_state_dict(ema, read_weights(ckpt / "ema.safetensors", reference), options=LOAD)
    try:
        blob = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise ValueError(f"checkpoint {ckpt / 'state.pt'} cannot be read ({e})") from None
    set_optimizer_state_dict(model, optimizer, blob["optimizer"], options=LOAD)
    scheduler.load_state_dict(blob["scheduler"])
    generator.set_state(blob["generator"])
    return RunState(step=blob["step"], epoch=blob["epoch"], position=blob["position"])
