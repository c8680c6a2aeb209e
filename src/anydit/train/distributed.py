"""Running on several processes with PyTorch's own engine: torchrun + DDP or FSDP2.

Model code knows nothing of this file. ``parallelize`` applies, in torchtitan's order:
activation checkpointing (a model option, already inside the blocks), then ``torch.compile``
per block, then FSDP2 ``fully_shard`` per block and finally the root, or DDP around the whole.

Launch (the script reads RANK / WORLD_SIZE / LOCAL_RANK that torchrun sets):

    torchrun --nproc_per_node=2 -m anydit train CONFIG.yaml            # one node
    torchrun --nnodes=2 --node_rank=R --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 --nproc_per_node=8 -m anydit train CONFIG.yaml
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from anydit.errors import EXPECTED_ERRORS


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun job if there is one (gloo on CPU, NCCL on GPU); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(
            f"train.device: expected 'cpu' or 'auto' on a machine without CUDA, got {device!r}"
        )
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_process(
    rank: int, world: int, port: int, threads: int, fn, args: tuple, report: str
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(threads)
    try:
        fn(*args)
        if dist.is_initialized():  # every rank done (rank 0 may still be writing) before any
            dist.barrier()  # tears the group down: an early exit could abort a peer mid-call
    except EXPECTED_ERRORS as e:  # bad input: the parent raises it again, as one message
        with open(f"{report}.{rank}", "w") as f:
            f.write(f"{type(e).__name__}\n{e.args[0] if e.args else e}")
        raise
    finally:
        teardown()


def run_local(fn, args: tuple, world: int, threads: int | None = None) -> None:
    """Run ``fn(*args)`` in ``world`` new processes on this machine joined as one job (gloo),
    as ``torchrun --nproc_per_node=world`` would, with ``threads`` torch threads each (default:
    this machine's cores shared out). ``fn`` must be importable (a module-level function); an
    error in any process is raised here (bad input as its own type and message, anything else
    as torch's ``ProcessRaisedException`` with the process's traceback). With ``world == 1``,
    ``fn`` runs in this process."""
    if world < 1:
        raise ValueError(f"processes: expected a number >= 1, got {world}")
    if world == 1:
        fn(*args)
        return
    if dist.is_initialized():
        raise RuntimeError("run_local: this process is already part of a distributed job")
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "error")
        try:
            torch.multiprocessing.spawn(
                _local_process,
                args=(world, _free_port(), threads, fn, args, report),
                nprocs=world,
                join=True,
            )
        except torch.multiprocessing.ProcessRaisedException:
            for rank in range(world):  # the lowest rank's bad-input error, as its own type
                if os.path.isfile(f"{report}.{rank}"):
                    with open(f"{report}.{rank}") as f:
                        kind, message = f.read().split("\n", 1)
                    types = {t.__name__: t for t in EXPECTED_ERRORS}
                    raise types.get(kind, ValueError)(message) from None
            raise


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The FSDP wrap units: every transformer block."""
    return [*model.blocks, *model.single_blocks]


def shard(model: nn.Module) -> nn.Module:
    """FSDP2: ``fully_shard`` each block, then the root (embeddings, time MLPs, final layers)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks_of(model):
        fully_shard(block)
    fully_shard(model)
    return model


def parallelize(
    model: nn.Module, info: DistInfo, mode: str = "ddp", compile: bool = False
) -> nn.Module:
    """Wrap ``model`` for training; returns the module to call (the original stays reachable
    for its attributes: modalities, cfg)."""
    if compile:
        for block in blocks_of(model):
            block.compile()
    if not info.enabled:
        return model
    if mode == "fsdp":
        return shard(model)
    if mode == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    raise ValueError(f"train.parallel: expected 'ddp' or 'fsdp', got {mode!r}")


def unwrap(module: nn.Module) -> nn.Module:
    """The model under a DDP wrapper (FSDP2 shards in place, so it is the model itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (identity on one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's boolean, everywhere."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def broadcast_value(x: float) -> float:
    """Rank 0's number, everywhere (float64, so a clock reading survives)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.broadcast(t, 0)
    return float(t.item())


def no_sync(net: nn.Module, sync: bool):
    """A context that skips the gradient all-reduce unless ``sync`` (DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync``): micro-batches before the last accumulate locally."""
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


def scalar(x: torch.Tensor) -> float:
    """A plain float from a tensor or a DTensor (FSDP2's gradient norm)."""
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)
