"""Post-training quantization of a trained model (``anydit quantize``).

Weights: symmetric, per output channel, 8 or 4 bits (``model.quant``). Activations (schemes
``w8a8``, ``w4a8``): one symmetric int8 scale per layer and per time bucket of the stream the
layer serves, calibrated on the model's own sampling trajectories -- activation ranges drift
with the timestep (ViDiT-Q, Q-DiT), so a scale fitted to all times at once wastes most of its
levels at the times whose range is small.

Calibration runs, for each of N seeds, a joint generation of every output, then each output
generated from the others given (the joint sample's values) and alone (the others dropped),
with the model's own sampler settings, recording each layer's largest absolute input per sample
and time bucket. Condition-only modalities get N(0, 1) values (their real distribution, e.g. a
text encoder's outputs, is not known to the model file).
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import Tensor, nn

from anydit.config import SampleConfig
from anydit.model.quant import (
    attach_time_buckets,
    layer_bits,
    pack_int4,
    quantize_structure,
    scheme_bits,
)
from anydit.sampling import sample


def quantize_weight(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(o, k) float -> (int8 values in [-(2^(bits-1) - 1), 2^(bits-1) - 1], (o,) scales):
    symmetric, per output channel, round to nearest. |w - q s| <= s / 2 elementwise."""
    top = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / top  # (o,)
    q = (w / scale[:, None]).round().clamp(-top, top).to(torch.int8)
    return q, scale.float()


def calibration_tasks(model, seed: int, n: int, config: SampleConfig) -> list[dict]:
    """The tasks of one calibration round: joint, each output from the rest, each alone.
    Condition-only modalities (e.g. an imported model's text-encoder outputs), which the model
    cannot sample, are given N(0, 1) values in every task."""
    g = torch.Generator().manual_seed(seed)
    conditions = {
        k: torch.randn(n, *m.shape, generator=g)
        for k, m in model.modalities.items()
        if not m.cfg.generate
    }
    everything = {k: "generate" for k in model.outputs} | conditions
    joint = sample(model, everything, n=n, seed=seed, config=config)
    tasks = [everything]
    for k in model.outputs:
        rest = {o: joint[o] for o in model.outputs if o != k}
        if rest:
            tasks.append({k: "generate", **rest, **conditions})
            tasks.append({k: "generate", **conditions})
    return tasks


class PeakRecorder:
    """Records, while attached to a model, each linear layer's largest absolute input per time
    bucket of the stream it serves (shared layers: the last slot, all times together)."""

    def __init__(self, model, buckets: int):
        self.buckets = buckets
        self.context = attach_time_buckets(model, buckets)
        self.peaks: dict[str, Tensor] = defaultdict(lambda: torch.zeros(buckets + 1))
        self.handles = [
            layer.register_forward_pre_hook(self._hook(name, model.stream_of(f"{name}.weight")))
            for name, layer in model.named_modules()
            if type(layer) is nn.Linear
        ]

    def _hook(self, name: str, stream: str):
        def record(module, args):
            x = args[0].detach().float()
            peak = x.abs().reshape(x.shape[0], -1).amax(1)  # (b,)
            bucket = self.context.of.get(stream)
            if stream == "shared" or bucket is None or bucket.shape[0] != x.shape[0]:
                self.peaks[name][-1] = torch.maximum(self.peaks[name][-1], peak.max().cpu())
                return
            table = torch.zeros(self.buckets + 1).scatter_reduce(
                0, bucket.cpu(), peak.cpu(), "amax"
            )
            self.peaks[name] = torch.maximum(self.peaks[name], table)

        return record

    def close(self) -> dict[str, Tensor]:
        for h in self.handles:
            h.remove()
        return dict(self.peaks)


@torch.no_grad()
def calibrate(
    model, rounds: int = 4, n: int = 16, buckets: int = 8, config: SampleConfig | None = None
) -> dict[str, Tensor]:
    """{linear layer name: (buckets + 1,) largest absolute input seen per time bucket} over the
    calibration trajectories (0 where a bucket was never seen)."""
    if model.cfg.lora_rank:
        raise ValueError("quantize: merge the LoRA adapters first (anydit export merges them)")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"quantize: expected calibration rounds >= 1, got {rounds!r}")
    config = config or SampleConfig(steps=16)
    probe = copy.deepcopy(model).eval()
    recorder = PeakRecorder(probe, buckets)
    try:
        for r in range(rounds):
            for i, task in enumerate(calibration_tasks(probe, seed=1000 * r, n=n, config=config)):
                sample(probe, task, n=n, seed=1000 * r + i + 1, config=config)
    finally:
        peaks = recorder.close()
    return peaks


def quantize(
    model,
    scheme: str,
    rounds: int = 4,
    n: int = 16,
    buckets: int = 8,
    config: SampleConfig | None = None,
):
    """A quantized copy of ``model`` (it loads and samples like any model; ``save_model``
    writes it as safetensors with the quantization in the metadata)."""
    if getattr(model, "quantization", None):
        raise ValueError("quantize: this model is quantized already; start from the full one")
    bits = layer_bits(model, scheme)
    _, act_bits = scheme_bits(scheme)
    peaks = calibrate(model, rounds, n, buckets, config) if act_bits else {}
    plain = dict(model.named_modules())
    out = copy.deepcopy(model)
    quantize_structure(out, bits, buckets)
    for name, (b, a) in bits.items():
        layer, source = out.get_submodule(name), plain[name]
        q, scale = quantize_weight(source.weight.detach().float(), b)
        layer.weight_q.copy_(pack_int4(q) if b == 4 else q)
        layer.weight_scale.copy_(scale)
        if source.bias is not None:
            layer.bias.data.copy_(source.bias.detach().float())
        if a:
            peak = peaks.get(name, torch.zeros(buckets + 1))
            overall = peak.max().clamp(min=1e-8)
            table = torch.where(peak > 0, peak, overall) / 127.0
            layer.act_scale.copy_(table)
    out.quantization = {
        "scheme": scheme,
        "buckets": buckets,
        "layers": {k: list(v) for k, v in bits.items()},
    }
    return out


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers as stored (int8/uint8 count 1 byte)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
