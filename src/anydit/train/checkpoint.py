"""Model files: safetensors weights with the model's configuration in the metadata.

A file is self-contained: ``load_model(path)`` needs nothing but it and this package. Writes
are atomic (temporary name, then rename), so a crash mid-write leaves the previous file intact.
Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anydit.config import ModalityConfig, ModelConfig, from_dict

FORMAT = "anydit-model-1"


def model_metadata(model) -> dict[str, str]:
    """The metadata that rebuilds ``model``'s architecture."""
    return {
        "format": FORMAT,
        "modalities": json.dumps([dataclasses.asdict(m) for m in model.modality_configs]),
        "model": json.dumps(dataclasses.asdict(model.cfg)),
    }


def save_model(model, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write weights + config atomically to ``path`` (a .safetensors file)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={**model_metadata(model), **(extra or {})})
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a model file, with clear errors for missing or damaged files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {path}: expected an anydit model file (format {FORMAT}), "
            f"got {meta.get('format')!r}"
        )
    return meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the model stored in ``path`` and load its weights (strictly)."""
    from anydit.model import MMDiT

    meta = read_metadata(path)
    mods = [
        from_dict(ModalityConfig, m, f"checkpoint modalities[{i}]")
        for i, m in enumerate(json.loads(meta["modalities"]))
    ]
    model = MMDiT(mods, from_dict(ModelConfig, json.loads(meta["model"]), "checkpoint model"))
    _load_weights_into(model, Path(path))
    return model.to(device)


# --- resumable training state -----------------------------------------------------------------


@dataclass
class CheckpointState:
    """Where a run is: optimizer steps taken, epoch, and batches consumed in that epoch."""

    step: int
    epoch: int
    position: int


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``out_dir/checkpoints`` (or None)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step_*") if (p / "state.pt").is_file() and p.is_dir())
    return done[-1] if done else None


def save_training_state(
    out_dir: Path, state: CheckpointState, model, ema, optimizer, scheduler, generator, keep: int
) -> Path:
    """Write model, EMA, optimizer, scheduler, RNG and data position; atomically (a temporary
    folder renamed into place), then drop all but the newest ``keep`` checkpoints."""
    final = checkpoint_dir(out_dir, state.step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, tmp / "model.safetensors")
    if ema is not None:
        save_model(ema, tmp / "ema.safetensors")
    torch.save(
        {
            "step": state.step,
            "epoch": state.epoch,
            "position": state.position,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        },
        tmp / "state.pt",
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    old = sorted(p for p in final.parent.glob("step_*") if not p.name.endswith(".tmp"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _load_weights_into(module, path: Path) -> None:
    read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {path}: cannot read weights ({e})") from None
    expected = module.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this model: missing keys {sorted(missing)[:10]}, "
            f"unexpected keys {sorted(unexpected)[:10]}"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(
                f"checkpoint {path}: parameter {k} has shape {tuple(v.shape)}, "
                f"the model expects {tuple(expected[k].shape)}"
            )
    module.load_state_dict(state)


def load_training_state(ckpt: Path, model, ema, optimizer, scheduler, generator) -> CheckpointState:
    """Restore everything ``save_training_state`` wrote; returns the position to continue from."""
    _load_weights_into(model, ckpt / "model.safetensors")
    if ema is not None:
        _load_weights_into(ema, ckpt / "ema.safetensors")
    try:
        blob = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise ValueError(f"checkpoint {ckpt / 'state.pt'} cannot be read ({e})") from None
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    generator.set_state(blob["generator"])
    torch.set_rng_state(blob["torch_rng"])
    return CheckpointState(step=blob["step"], epoch=blob["epoch"], position=blob["position"])
