"""Resumable training state: weights, EMA, optimiser, schedule, RNG, data position and the
run's config.

State dicts go through ``torch.distributed.checkpoint.state_dict`` with full (unsharded) tensors,
so one layout serves one process, DDP and FSDP2 alike: a checkpoint saved under FSDP resumes in
one process and the other way round. Weights are safetensors; the optimiser state is a torch
file read back with ``weights_only=True`` (no arbitrary unpickling).

Durability. A checkpoint is written into ``step_N.tmp/``, every file flushed to disk, then the
folder is renamed to ``step_N/`` and its parent flushed: a kill, a host crash or a full disk
mid-write leaves no folder named ``step_N`` but whole ones. Only ``step_N`` folders are ever
resumed from; ``.tmp`` leftovers are removed when a run starts.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from anydit.model.file import read_weights, save_model
from anydit.storage import TMP_SUFFIX, fsync_path, fsync_tree, write_failure
from anydit.train.distributed import barrier

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
LOAD = StateDictOptions(full_state_dict=True)
NAME = re.compile(r"^step_(\d{8})$")


@dataclass
class RunState:
    """Where a run is: optimiser steps taken, epoch, and batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    position: int = 0


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


def checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints under ``out_dir/checkpoints``, oldest step first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and NAME.match(p.name)]
    found = [p for p in found if (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder (never a ``.tmp`` one), or None."""
    done = checkpoints(out_dir)
    return done[-1] if done else None


def remove_leftovers(out_dir: str | os.PathLike) -> list[Path]:
    """Delete what an interrupted write of anydit's left (``checkpoints/step_N.tmp/``,
    ``model.safetensors.tmp``) and nothing else; returns them."""
    out_dir = Path(out_dir)
    found = [out_dir / f"model.safetensors{TMP_SUFFIX}"]
    if (out_dir / "checkpoints").is_dir():
        found += [
            p
            for p in (out_dir / "checkpoints").iterdir()
            if p.name.endswith(TMP_SUFFIX) and NAME.match(p.name[: -len(TMP_SUFFIX)])
        ]
    found = [p for p in found if p.exists()]
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return found


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
    config: dict | None = None,
) -> Path:
    """Gather everything (every process must call this), then the main process writes the
    checkpoint durably, keeps the ``keep`` newest and refreshes ``model.safetensors``."""
    weights = full_weights(model)
    ema_weights = full_weights(ema) if ema is not None else None
    optim = get_optimizer_state_dict(model, optimizer, options=FULL)
    final = checkpoint_dir(out_dir, state.step)
    if main:
        tmp = final.with_name(final.name + TMP_SUFFIX)
        try:
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
            if config is not None:
                (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            fsync_path(final.parent)
        except (OSError, RuntimeError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failure(final, err) from None
        done = checkpoints(out_dir)
        for old in [p for p in done if p != final][: max(0, len(done) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
        # the sampling/eval file: EMA weights when there are any
        save_model(model, Path(out_dir) / "model.safetensors", ema_weights or weights)
    barrier()
    return final


def saved_config(ckpt: Path) -> dict | None:
    """The run config stored in a checkpoint (None for checkpoints written without one)."""
    path = ckpt / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def load_checkpoint(ckpt: Path, model, ema, optimizer, scheduler, generator) -> RunState:
    """Restore what ``save_checkpoint`` wrote into (possibly wrapped or sharded) objects."""
    reference = model.state_dict()  # global shapes, also for FSDP2's DTensors
    set_model_state_dict(model, read_weights(ckpt / "model.safetensors", reference), options=LOAD)
    if ema is not None:
        set_model_state_dict(ema, read_weights(ckpt / "ema.safetensors", reference), options=LOAD)
    try:
        blob = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        set_optimizer_state_dict(model, optimizer, blob["optimizer"], options=LOAD)
        scheduler.load_state_dict(blob["scheduler"])
        generator.set_state(blob["generator"])
        return RunState(step=blob["step"], epoch=blob["epoch"], position=blob["position"])
    except Exception as e:  # torch raises several types for damaged files
        raise ValueError(f"checkpoint {ckpt / 'state.pt'} cannot be read ({e})") from None
