"""anydit: multimodal diffusion transformers. One model, every marginal, conditional and joint.

Time convention everywhere: t in [0, 1], t = 0 is pure noise (or all masks), t = 1 is data.

    >>> import anydit
    >>> x = anydit.ModalityConfig("x", "vector", (2,))
    >>> k = anydit.ModalityConfig("k", "label", num_classes=3)
    >>> mods = [x, k]
    >>> model = anydit.MMDiT(mods, anydit.preset("debug"))
    >>> out = anydit.sample(model, {"x": "generate", "k": 2}, n=4, steps=8)
"""

from anydit.config import (
    Config,
    ConfigError,
    FlowConfig,
    ModalityConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from anydit.flow import training_loss
from anydit.interop.diffusers import export_diffusers, import_diffusers, save_diffusers
from anydit.model import MMDiT, preset
from anydit.model.extend import extend
from anydit.sampling import Drop, Generate, Given, drop, generate, given, sample
from anydit.train.checkpoint import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "Drop",
    "FlowConfig",
    "Generate",
    "Given",
    "MMDiT",
    "ModalityConfig",
    "ModelConfig",
    "SampleConfig",
    "TrainConfig",
    "drop",
    "export_diffusers",
    "extend",
    "generate",
    "given",
    "import_diffusers",
    "load_model",
    "preset",
    "sample",
    "save_diffusers",
    "save_model",
    "training_loss",
]
