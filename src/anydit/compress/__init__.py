"""Make a trained model smaller: post-training quantization and depth pruning with
distillation. Each turns a model into another model that loads like any."""

from anydit.compress.prune import block_importance, prune, remove_blocks
from anydit.compress.quantize import calibrate, quantize, quantize_weight, weight_bytes

__all__ = [
    "block_importance",
    "calibrate",
    "prune",
    "quantize",
    "quantize_weight",
    "remove_blocks",
    "weight_bytes",
]
