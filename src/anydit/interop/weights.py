"""Reading other libraries' weights: folders, key checks, and name-to-name mappings.

A mapping is a list of ``Link``s: one anydit parameter made from one or more parameters of the
other layout (``fwd``), and split back into them (``inv``). The same table serves import and
export, so export -> import is the identity by construction (and tested).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


class WeightsError(ValueError):
    """Weights that do not fit the model they are loaded into (keys or shapes), or a folder
    that is not a readable model."""


def _first(parts: list[Tensor]) -> Tensor:
    return parts[0]


def _single(t: Tensor) -> list[Tensor]:
    return [t]


@dataclass
class Link:
    """anydit key ``ours`` = ``fwd([state[k] for k in theirs])``; ``inv`` splits it back."""

    ours: str
    theirs: tuple[str, ...]
    fwd: Callable[[list[Tensor]], Tensor] = _first
    inv: Callable[[Tensor], list[Tensor]] = _single


@dataclass
class Mapping:
    """All links of one model, and anydit keys with no counterpart (filled by ``fill``)."""

    links: list[Link] = field(default_factory=list)
    fill: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)

    def copy(self, ours: str, theirs: str, params=("weight", "bias")) -> None:
        for p in params:
            self.links.append(Link(f"{ours}.{p}", (f"{theirs}.{p}",)))

    def cat(self, ours: str, theirs: list[str], sizes: list[int]) -> None:
        """Rows of several layers (``sizes`` rows each) stacked into one (fused q, k, v)."""
        for p in ("weight", "bias"):
            self.links.append(
                Link(
                    f"{ours}.{p}",
                    tuple(f"{t}.{p}" for t in theirs),
                    lambda parts: torch.cat(parts, dim=0),
                    lambda t, sizes=sizes: list(t.split(sizes, dim=0)),
                )
            )


def swap_halves(ours: str, theirs: str) -> Link:
    """(scale, shift) rows <-> (shift, scale) rows: diffusers' AdaLayerNormContinuous order."""

    def swap(t: Tensor) -> Tensor:
        a, b = t.chunk(2, dim=0)
        return torch.cat([b, a], dim=0)

    return Link(ours, (theirs,), lambda p: swap(p[0]), lambda t: [swap(t)])


def read_folder(folder: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """A diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or
    shards named by ``...safetensors.index.json``) -> (config dict, state dict). Never
    unpickles: ``.bin`` weights are refused."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{folder}: no config.json (expected a diffusers model folder)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{config_path}: not valid JSON ({e})") from None
    single = folder / "diffusion_pytorch_model.safetensors"
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise WeightsError(f"{index}: not a readable index ({e})") from None
        names = (
            sorted({str(v) for v in weight_map.values()}) if isinstance(weight_map, dict) else []
        )
        outside = [n for n in names if Path(n).name != n or n in ("", ".", "..")]
        if outside or not names:
            raise WeightsError(
                f"{index}: expected shard file names inside {folder}, got {outside or names}"
            )
        files = [folder / name for name in names]
    else:
        found = sorted(p.name for p in folder.iterdir())
        raise WeightsError(
            f"{folder}: no diffusion_pytorch_model.safetensors (or its index); found {found}. "
            "Pickled .bin weights are not read: convert them to safetensors first"
        )
    state: dict[str, Tensor] = {}
    for path in files:
        if not path.is_file():
            raise WeightsError(f"{path}: a shard named by the index is missing")
        try:
            state.update(load_file(str(path)))
        except Exception as e:  # safetensors raises several types for damaged files
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    return config, state


def write_folder(folder: str | Path, config: dict, state: dict[str, Tensor]) -> Path:
    """Write a diffusers model folder (config.json + one safetensors file)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"), {"format": "pt"})
    return folder


def check_keys(
    got: dict[str, Tensor], expected: dict[str, tuple[int, ...]], where: str, hint: str = ""
) -> None:
    """Refuse a state dict with missing or unexpected keys or wrong shapes, listing them all."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: expected {tuple(expected[k])}, found {tuple(got[k].shape)}"
        for k in sorted(set(got) & set(expected))
        if tuple(got[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_listing(shapes)}")
    if problems:
        tail = f" ({hint})" if hint else ""
        raise WeightsError(
            f"{where}: the weights do not match the config{tail}; " + "; ".join(problems)
        )


def _listing(items: list[str], limit: int = 12) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def apply_links(mapping: Mapping, theirs: dict[str, Tensor], ours: dict[str, Tensor]) -> dict:
    """Their state dict -> ours (every anydit key filled; shapes checked by the caller)."""
    out = {}
    for link in mapping.links:
        out[link.ours] = link.fwd([theirs[k] for k in link.theirs])
    for key, fill in mapping.fill.items():
        out[key] = fill(ours[key])
    return out


def invert_links(mapping: Mapping, ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> theirs."""
    out = {}
    for link in mapping.links:
        for key, t in zip(link.theirs, link.inv(ours[link.ours]), strict=True):
            out[key] = t.contiguous()
    return out
