"""The training loop: data -> steps -> logs and checkpoints, resumable exactly.

One linear recipe (DiT's train.py, read top to bottom): build the model and its EMA, the
optimiser and schedule, the data order; resume if the output folder holds a checkpoint; then
step, log, checkpoint. Data order is a pure function of (seed, epoch), and a checkpoint stores
the position inside the epoch and every RNG, so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from anydit.config import Config
from anydit.data.sources import build_dataset, make_collate
from anydit.flow.objective import training_loss
from anydit.model import MMDiT
from anydit.train.checkpoint import (
    CheckpointState,
    latest_checkpoint,
    load_training_state,
    save_model,
    save_training_state,
)
from anydit.train.step import autocast_for


def lr_lambda(cfg) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine to zero or constant."""

    def f(step: int) -> float:
        if cfg.warmup and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, over all parameters."""
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)


def ema_decay(step: int, decay: float) -> float:
    """Warm the EMA up: early on, average over fewer steps ((1 + s) / (10 + s), capped)."""
    return min(decay, (1 + step) / (10 + step))


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """The index batches of one epoch: a permutation from (seed, epoch), last partial dropped."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


@dataclass
class TrainResult:
    """What a run leaves behind."""

    out_dir: Path
    model_path: Path
    step: int
    history: list[dict] = field(default_factory=list)


def _check_writable(out_dir: Path) -> None:
    """Fail at start, not after an hour, if the output folder cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output folder {out_dir} cannot be written ({e.strerror or e})") from None


def train(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``out_dir``; resume from its newest checkpoint when ``resume``.

    Writes ``out_dir/model.safetensors`` (EMA weights: what sampling and eval load),
    ``out_dir/checkpoints/step_N/`` (resumable state), ``metrics.jsonl`` and ``config.yaml``.
    """
    out_dir = Path(out_dir)
    _check_writable(out_dir)
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = MMDiT(cfg.modalities, cfg.model)
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    dataset = build_dataset(cfg.data, "train")
    collate = make_collate(model)
    gen = torch.Generator().manual_seed(tc.seed + 1)  # noise, times and roles
    state = CheckpointState(step=0, epoch=0, position=0)

    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = load_training_state(ckpt, model, ema, optimizer, scheduler, gen)
    _write_config(cfg, out_dir)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=state.step, unit="step", dynamic_ncols=True)
    log_path = out_dir / "metrics.jsonl"
    history: list[dict] = []
    bad_in_row = 0
    tokens_per_sample = sum(m.num_tokens for m in model.modalities.values())
    t_last, samples_since = time.perf_counter(), 0
    device = next(model.parameters()).device
    while state.step < tc.steps:
        batches = batch_order(len(dataset), tc.batch_size, tc.seed, state.epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(state.epoch)
        while state.position < len(batches) and state.step < tc.steps:
            raw = collate([dataset[int(i)] for i in batches[state.position]])
            model.train()
            with autocast_for(device, tc.precision):
                loss, parts = training_loss(model, raw, cfg.flow, None, gen)
            optimizer.zero_grad(set_to_none=True)
            state.position += 1
            if not torch.isfinite(loss):
                bad_in_row += 1
                warnings.warn(
                    f"step {state.step}: loss is {loss.item()}; step skipped", stacklevel=1
                )
                if bad_in_row >= tc.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad_in_row} non-finite losses in a row at step {state.step}; stopping "
                        "(lower train.lr, or raise train.max_bad_steps)"
                    )
                continue
            bad_in_row = 0
            loss.backward()
            clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema_update(ema, model, ema_decay(state.step, tc.ema))
            state.step += 1
            samples_since += tc.batch_size
            if state.step % tc.log_every == 0 or state.step == tc.steps:
                now = time.perf_counter()
                rate = samples_since / max(now - t_last, 1e-9)
                t_last, samples_since = now, 0
                record = {
                    "step": state.step,
                    "loss": loss.item(),
                    **{f"loss/{k}": v.item() for k, v in parts.items()},
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "samples_per_s": rate,
                    "tokens_per_s": rate * tokens_per_sample,
                }
                history.append(record)
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if on_log is not None:
                    on_log(record)
                if bar is not None:
                    short = {
                        k.split("/")[-1]: f"{v:.3f}"
                        for k, v in record.items()
                        if k.startswith("loss/")
                    }
                    bar.set_postfix(loss=f"{record['loss']:.3f}", **short, sps=f"{rate:.0f}")
            if bar is not None:
                bar.update(1)
            if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
                save_training_state(
                    out_dir, state, model, ema, optimizer, scheduler, gen, tc.keep_checkpoints
                )
                save_model(ema if ema is not None else model, out_dir / "model.safetensors")
        if state.position >= len(batches):
            state.epoch, state.position = state.epoch + 1, 0
    if bar is not None:
        bar.close()
    model_path = out_dir / "model.safetensors"
    if not model_path.exists():
        save_model(ema if ema is not None else model, model_path)
    return TrainResult(out_dir, model_path, state.step, history)


def _write_config(cfg: Config, out_dir: Path) -> None:
    import yaml

    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
