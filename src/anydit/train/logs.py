"""What a run reports: metrics.jsonl and TensorBoard scalars, a progress bar, sample grids."""

from __future__ import annotations

import json
import resource
from dataclasses import replace
from pathlib import Path

import torch

from anydit.config import SampleConfig


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations, or resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Logger:
    """metrics.jsonl (+ TensorBoard) on the main process, and a progress bar; nothing on the
    other processes."""

    def __init__(
        self,
        out_dir: Path,
        enabled: bool,
        tensorboard: bool,
        progress: bool,
        steps: int,
        start: int,
    ):
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        self.bar = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        if enabled and progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(k, v, record["step"])
        if self.bar is not None:
            short = {k[5:]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss/")}
            sps = f"{record['samples_per_s']:.0f}"
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", **short, sps=sps)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def image(self, tag: str, grid, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def write_sample_grid(
    model, out_dir: Path, step: int, logger: Logger, config: SampleConfig
) -> None:
    """Every generated image modality that can be shown (1, 3 or 4 channels, or latents of a
    ``vae`` codec, decoded), sampled jointly with all the others with the run's ``sample``
    settings, as a PNG grid (and a TensorBoard image)."""
    from PIL import Image as PILImage

    from anydit.modalities.image import Image
    from anydit.modalities.pictures import image_grid
    from anydit.sampling import sample

    def shown(m) -> bool:
        return isinstance(m, Image) and (m.codec is not None or m.pixels)

    images = [n for n in model.outputs if shown(model.modalities[n])]
    if not images:
        return
    joint = config if not isinstance(config.guidance, dict) else replace(config, guidance=1.0)
    out = sample(model, {n: "generate" for n in model.outputs}, n=16, seed=step, config=joint)
    (out_dir / "samples").mkdir(exist_ok=True)
    for name in images:
        m = model.modalities[name]
        x = out[name].cpu()
        if m.codec is not None:
            x = m.codec.decode(x)
        grid = image_grid(x, nrow=8, scale=4)
        PILImage.fromarray(grid).save(out_dir / "samples" / f"{name}_step{step:08d}.png")
        logger.image(f"samples/{name}", grid if grid.ndim == 3 else grid[..., None], step)
