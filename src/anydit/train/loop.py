"""The training loop: data -> steps -> logs and checkpoints; one process or many, resumable.

One linear recipe (as DiT's train.py): join the torchrun job if any, build the model and its
EMA, wrap them (``distributed.parallelize``), build the optimiser, schedule and data order,
resume from the newest checkpoint in the output folder, then step, log and checkpoint.

Exactness. The data order is a function of (seed, epoch); every random draw of a step (roles,
times, masks, noise) is made for the whole global batch from one generator that every process
holds, and each process keeps its own rows. Losses are sums over scored tokens divided by the
global count. So N processes, or k micro-batches, compute the single-process step, and a
resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from anydit.config import Config
from anydit.data.sources import epoch_loader, make_collate, open_training_data
from anydit.flow.objective import combine_losses, make_inputs, scored_loss_sum
from anydit.model import MMDiT
from anydit.model.extend import init_from_file
from anydit.train import distributed as D
from anydit.train.state import RunState, latest_checkpoint, load_checkpoint, save_checkpoint
from anydit.train.step import autocast_for, make_optimizer


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
    """ema <- decay * ema + (1 - decay) * model, over all parameters (shards under FSDP)."""
    torch._foreach_lerp_(
        list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay
    )


def ema_decay(step: int, decay: float) -> float:
    """Warm the EMA up: early on, average over fewer steps ((1 + s) / (10 + s), capped)."""
    return min(decay, (1 + step) / (10 + step))


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """The global index batches of one epoch: a permutation from (seed, epoch), the last
    partial batch dropped."""
    if n < batch_size:
        raise ValueError(f"dataset has {n} samples, fewer than train.batch_size = {batch_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


@dataclass
class TrainResult:
    """What a run leaves behind."""

    out_dir: Path
    model_path: Path
    step: int
    history: list[dict] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # bad samples left out, by kind


def check_writable(out_dir: Path) -> None:
    """Fail at start, not after an hour, if the output folder cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_probe_{id(out_dir)}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output folder {out_dir} cannot be written ({e.strerror or e})") from None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations, or resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Logger:
    """metrics.jsonl (+ TensorBoard) on the main process; nothing elsewhere."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def image(self, tag: str, grid, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_sample_grid(model, out_dir: Path, step: int, logger: Logger) -> None:
    """Every generated image modality that can be shown (1, 3 or 4 channels, or latents of a
    ``vae`` codec, decoded), sampled jointly with all the others, as a PNG grid."""
    from anydit.data.files import image_grid
    from anydit.sampling import sample

    def shown(m) -> bool:
        return m.cfg.kind == "image" and (m.cfg.codec == "vae" or m.cfg.shape[0] in (1, 3, 4))

    images = [n for n in model.outputs if shown(model.modalities[n])]
    if not images:
        return
    out = sample(model, {n: "generate" for n in model.outputs}, n=16, steps=16, seed=step)
    (out_dir / "samples").mkdir(exist_ok=True)
    for name in images:
        x, cfg = out[name].cpu(), model.modalities[name].cfg
        if cfg.codec == "vae":
            from anydit.data.vae import codec_at

            x = codec_at(cfg.codec_path).decode(x)
        grid = image_grid(x, nrow=8, scale=4)
        from PIL import Image

        Image.fromarray(grid).save(out_dir / "samples" / f"{name}_step{step:08d}.png")
        logger.image(f"samples/{name}", grid if grid.ndim == 3 else grid[..., None], step)


def train(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``out_dir``; resume from its newest checkpoint when ``resume``.

    Writes ``model.safetensors`` (EMA weights: what sampling and eval load), resumable
    ``checkpoints/step_N/``, ``metrics.jsonl``, TensorBoard events and ``config.yaml``.
    Under torchrun every process runs this; the main one writes.
    """
    out_dir = Path(out_dir)
    tc = cfg.train
    info = D.setup(tc.device)
    check_writable(out_dir)
    world, rank = info.world, info.rank
    if tc.batch_size % (world * tc.grad_accum):
        raise ValueError(
            f"train.batch_size = {tc.batch_size} must divide evenly into {world} processes x "
            f"{tc.grad_accum} micro-batches"
        )
    local_b = tc.batch_size // world
    micro_b = local_b // tc.grad_accum

    dataset, data_problems = open_training_data(
        cfg.data, cfg.modalities, log=print if info.main else (lambda *_: None)
    )  # first: label classes may come from the data
    torch.manual_seed(tc.seed)  # the same initial weights in every process
    model = MMDiT(cfg.modalities, cfg.model)
    if tc.init:
        report = init_from_file(model, tc.init)
        if info.main:
            new = sorted({model.stream_of(k) for k in report["new"] if ".lora_" not in k})
            lora = sorted({model.stream_of(k) for k in report["new"] if ".lora_" in k})
            print(
                f"init: {len(report['loaded'])} tensors from {tc.init}; new streams: "
                f"{new or 'none'}" + (f"; new LoRA adapters on {lora}" if lora else "")
            )
    model = model.to(info.device)
    if tc.freeze and info.main:
        print(f"frozen: {tc.freeze} ({model.freeze(tc.freeze) / 1e6:.2f}M parameters)")
    elif tc.freeze:
        model.freeze(tc.freeze)
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema > 0 else None
    net = D.parallelize(model, info, tc.parallel, tc.compile)
    if ema is not None and info.enabled and tc.parallel == "fsdp":
        D.shard(ema)  # EMA shards live beside the model's shards
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, tc.lr, tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    collate = make_collate(model)
    gen = torch.Generator(info.device).manual_seed(tc.seed + 1)  # shared by all processes
    state = RunState()
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, ema, optimizer, scheduler, gen)
    if info.main:
        _write_config(cfg, out_dir)

    logger = Logger(out_dir, info.main, tc.tensorboard)
    bar = None
    if progress and info.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=state.step, unit="step", dynamic_ncols=True)
    history: list[dict] = []
    bad_in_row = 0
    tokens_per_sample = sum(m.num_tokens for m in model.modalities.values())
    t_last, steps_since = time.perf_counter(), 0
    while state.step < tc.steps:
        loader, epoch_len = _epoch(dataset, state, cfg, rank, info.world, local_b, collate)
        for raw, present in loader:
            raw = {k: v.to(info.device) for k, v in raw.items()}
            state.position += 1
            loss, parts = _step(model, net, raw, present, cfg, gen, info, micro_b, local_b)
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
            clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema_update(ema, model, ema_decay(state.step, tc.ema))
            state.step += 1
            steps_since += 1
            if state.step % tc.log_every == 0 or state.step == tc.steps:
                now = time.perf_counter()
                rate = steps_since * tc.batch_size / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                totals = D.all_sum(torch.stack([loss, *parts.values()]).float())
                record = {
                    "step": state.step,
                    "loss": totals[0].item(),
                    **{f"loss/{k}": v.item() for k, v in zip(parts, totals[1:], strict=True)},
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": _scalar(grad_norm),
                    "samples_per_s": rate,
                    "tokens_per_s": rate * tokens_per_sample,
                    "memory_mb": peak_memory_mb(info.device),
                }
                history.append(record)
                logger.log(record)
                if on_log is not None:
                    on_log(record)
                if bar is not None:
                    short = {k[5:]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss/")}
                    bar.set_postfix(loss=f"{record['loss']:.3f}", **short, sps=f"{rate:.0f}")
            if bar is not None:
                bar.update(1)
            if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
                save_checkpoint(
                    out_dir,
                    state,
                    model,
                    ema,
                    optimizer,
                    scheduler,
                    gen,
                    tc.keep_checkpoints,
                    info.main,
                )
            if (
                tc.sample_every
                and state.step % tc.sample_every == 0
                and info.main
                and not info.enabled
            ):
                write_sample_grid(ema if ema is not None else model, out_dir, state.step, logger)
            if state.step >= tc.steps:
                break
        if state.position >= epoch_len:
            state.epoch, state.position = state.epoch + 1, 0
    if bar is not None:
        bar.close()
    logger.close()
    if data_problems and info.main:
        print(f"data: {sum(data_problems.values())} samples were skipped: {data_problems}")
        (out_dir / "data_problems.json").write_text(json.dumps(data_problems, indent=2))
    return TrainResult(out_dir, out_dir / "model.safetensors", state.step, history, data_problems)


def _epoch(dataset, state: RunState, cfg: Config, rank: int, world: int, local_b: int, collate):
    """(batches of this rank from the run's position on, batches in the epoch)."""
    from anydit.data.shards import ShardStream, stream_batches

    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(state.epoch)
    if isinstance(dataset, ShardStream):  # streamed: each rank reads its own shards
        dataset.rank, dataset.world = rank, world
        n = dataset.batches_per_epoch(local_b)
        if n == 0:
            raise ValueError(f"{dataset.where}: too few samples per rank for a batch of {local_b}")
        return stream_batches(dataset, local_b, collate, cfg.data.workers, state.position, n), n
    batches = batch_order(len(dataset), cfg.train.batch_size, cfg.train.seed, state.epoch)
    mine = [b[rank * local_b : (rank + 1) * local_b] for b in batches[state.position :]]
    return epoch_loader(dataset, mine, collate, cfg.data.workers), len(batches)


def _step(model, net, raw, present, cfg: Config, gen, info: D.DistInfo, micro_b: int, local_b: int):
    """Forward and backward of one step over this process's micro-batches. Returns (loss,
    per-modality losses) of this process's share, or (None, None) if any process saw a
    non-finite loss (then no gradient is applied anywhere)."""
    tc = cfg.train
    net.zero_grad(set_to_none=True)
    start = gen.get_state()
    micro = []
    for j in range(tc.grad_accum):
        gen.set_state(start)  # every micro-batch cuts its rows from the same global draws
        lo = info.rank * local_b + j * micro_b
        cut = slice(j * micro_b, (j + 1) * micro_b)
        part = {k: v[cut] for k, v in raw.items()}
        have = {k: v[cut] for k, v in present.items()} or None
        micro.append(
            make_inputs(model, part, cfg.flow, have, gen, slice(lo, lo + micro_b), tc.batch_size)
        )
    counts = {n: sum(m.scored[n].sum() for m in micro) for n in model.outputs}
    counts = dict(zip(counts, D.all_sum(torch.stack(list(counts.values()))), strict=True))
    total_loss, total_parts = 0.0, None
    for j, inputs in enumerate(micro):
        sync = j == len(micro) - 1
        with _no_sync(net, sync), autocast_for(info.device, tc.precision):
            preds = net(inputs.tokens, inputs.times)
            sums = {
                n: scored_loss_sum(
                    preds[n], inputs.targets[n], inputs.scored[n], model.modalities[n].discrete
                )
                for n in model.outputs
            }
            loss, parts = combine_losses(model, sums, counts, scale=float(info.world))
        bad = D.all_sum(torch.tensor([float(not torch.isfinite(loss))], device=loss.device))
        if bad.item() > 0:
            net.zero_grad(set_to_none=True)
            return None, None
        with _no_sync(net, sync):
            loss.backward()
        total_loss = total_loss + loss.detach() / info.world
        total_parts = (
            parts if total_parts is None else {k: total_parts[k] + parts[k] for k in parts}
        )
    return total_loss, total_parts


def _scalar(x: Tensor) -> float:
    """A plain float from a tensor or a DTensor (FSDP2's gradient norm)."""
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)


def _no_sync(net, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(net, "no_sync"):  # DDP
        return net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):  # FSDP2

        @contextlib.contextmanager
        def off():
            net.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                net.set_requires_gradient_sync(True)

        return off()
    return contextlib.nullcontext()


def _write_config(cfg: Config, out_dir: Path) -> None:
    import yaml

    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
