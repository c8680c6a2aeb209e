"""Dense control maps made from an image (``model.control``): what a control branch reads.

Ein notation: b images, c channels, H x W pixels; values in [-1, 1] like the images.

    lowres:F   (b, c, H, W) -> (b, c, H, W): the image averaged over F x F cells, then each
               cell repeated back to F x F (the low-resolution input of super-resolution, on
               the image's own grid)
    edges      (b, c, H, W) -> (b, 1, H, W): the gradient magnitude of the channel mean
               (central differences), scaled to [-1, 1] per image
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

CONTROLS = ("lowres", "edges")


def parse_control(text: str) -> tuple[str, int]:
    """``"lowres:2"`` -> ("lowres", 2); ``"edges"`` -> ("edges", 1)."""
    name, _, arg = text.partition(":")
    if name not in CONTROLS:
        raise ValueError(f"control {text!r}: expected one of {CONTROLS} (lowres:F with a factor F)")
    if name == "lowres":
        if not arg.isdigit() or int(arg) < 2:
            raise ValueError(f"control {text!r}: expected lowres:F with an integer factor F >= 2")
        return name, int(arg)
    if arg:
        raise ValueError(f"control {text!r}: edges takes no argument")
    return name, 1


def control_channels(text: str, image_channels: int) -> int:
    """Channels of the map ``text`` makes from images of ``image_channels``."""
    return image_channels if parse_control(text)[0] == "lowres" else 1


def make_control(text: str, image: Tensor) -> Tensor:
    """The control map ``text`` (``parse_control``) of images (b, c, H, W)."""
    name, factor = parse_control(text)
    if image.dim() != 4:
        raise ValueError(
            f"control {text!r}: expected images (b, c, H, W), got {tuple(image.shape)}"
        )
    if name == "lowres":
        h, w = image.shape[-2:]
        if h % factor or w % factor:
            raise ValueError(
                f"control {text!r}: {h}x{w} images do not split into {factor}x{factor} cells"
            )
        small = F.avg_pool2d(image.float(), factor)  # (b, c, H/F, W/F)
        return small.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    grey = image.float().mean(1, keepdim=True)  # (b, 1, H, W)
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    mag = (dx.pow(2) + dy.pow(2)).sqrt()
    peak = mag.amax((-2, -1), keepdim=True).clamp(min=1e-6)
    return mag / peak * 2 - 1
