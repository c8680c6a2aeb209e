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
    DataConfig,
    FlowConfig,
    ModalityConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from anydit.errors import DataError
from anydit.flow import Loss, Role, training_loss
from anydit.interop.diffusers import export_diffusers, import_diffusers, save_diffusers
from anydit.model import MMDiT, load_model, preset, save_model
from anydit.model.extend import extend
from anydit.run_config import config_from_tree, load_config
from anydit.sampling import Drop, Generate, Given, drop, generate, given, sample

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Drop",
    "FlowConfig",
    "Generate",
    "Given",
    "Loss",
    "MMDiT",
    "ModalityConfig",
    "ModelConfig",
    "Role",
    "SampleConfig",
    "TrainConfig",
    "drop",
    "export_diffusers",
    "extend",
    "generate",
    "given",
    "config_from_tree",
    "import_diffusers",
    "load_config",
    "load_model",
    "preset",
    "sample",
    "save_diffusers",
    "save_model",
    "training_loss",
]
