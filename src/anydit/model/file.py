"""Model files: safetensors weights with the model's configuration in the metadata.

A file is self-contained: ``load_model(path)`` needs nothing but it and this package. Writes
are atomic and durable (a temporary name, flushed to disk, then renamed), so a crash or a full
disk mid-write leaves the previous file intact. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anydit.config import COMMON_FIELDS, ModalityConfig, ModelConfig, from_dict
from anydit.modalities import KIND_CLASSES
from anydit.storage import atomic_write

FORMAT = "anydit-model-1"


def model_metadata(model) -> dict[str, str]:
    """The metadata that rebuilds ``model``'s architecture (and, for a quantized model, which
    layers hold how many bits: ``model.quantization``)."""
    meta = {
        "format": FORMAT,
        "modalities": json.dumps([dataclasses.asdict(m) for m in model.modality_configs]),
        "model": json.dumps(dataclasses.asdict(model.cfg)),
    }
    if getattr(model, "quantization", None):
        meta["quantization"] = json.dumps(model.quantization)
    return meta


def save_model(
    model, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write weights + config atomically to ``path`` (a .safetensors file). ``state_dict``
    (a full one, e.g. gathered from shards) replaces ``model.state_dict()`` when given."""
    path = Path(path)
    state = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    metadata = model_metadata(model)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a model file, with clear errors for missing or damaged files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {path}: expected an anydit model file (format {FORMAT}), "
            f"got {meta.get('format')!r}"
        )
    return meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the model stored in ``path`` and load its weights (strictly)."""
    from anydit.model import MMDiT

    mods, cfg = architecture(path)
    model = MMDiT(mods, cfg)
    spec = read_metadata(path).get("quantization")
    if spec is not None:
        _quantized(model, spec, path)
    model.load_state_dict(read_weights(Path(path), model.state_dict()))
    return model.to(device)


def _quantized(model, text: str, path) -> None:
    """Give ``model`` the quantized layers a file's metadata names."""
    from anydit.model.quant import quantize_structure

    try:
        spec = json.loads(text)
        layers = {str(k): (int(v[0]), int(v[1])) for k, v in spec["layers"].items()}
        buckets = int(spec["buckets"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(f"checkpoint {path}: unreadable 'quantization' metadata ({err})") from None
    quantize_structure(model, layers, buckets)
    model.quantization = spec


def architecture(path: str | os.PathLike) -> tuple[list[ModalityConfig], ModelConfig]:
    """The modalities and network config stored in a model file."""
    meta = read_metadata(path)
    parsed = {}
    for key in ("modalities", "model"):
        try:
            parsed[key] = json.loads(meta[key])
        except (KeyError, json.JSONDecodeError) as err:
            raise ValueError(
                f"checkpoint {path}: its metadata lacks a readable '{key}' entry ({err})"
            ) from None
    if not isinstance(parsed["modalities"], list):
        raise ValueError(f"checkpoint {path}: metadata 'modalities' is not a list")
    model = from_dict(ModelConfig, parsed["model"], "checkpoint model")
    mods = [
        from_dict(ModalityConfig, _settled(m, model, path), f"checkpoint modalities[{i}]")
        for i, m in enumerate(parsed["modalities"])
    ]
    return mods, model


def _settled(stored, model: ModelConfig, path) -> dict:
    """A stored modality config that files written before the rules grew stricter may break:
    fields that never applied to its kind (they were ignored) are dropped, and ``p_partial``
    without per-token times (a training knob that did nothing) is reset, each with a warning."""
    if not isinstance(stored, dict) or stored.get("kind") not in KIND_CLASSES:
        return stored
    kind = KIND_CLASSES[stored["kind"]]
    defaults = {f.name: f for f in dataclasses.fields(ModalityConfig)}
    out, dropped = {}, []
    for key, value in stored.items():
        f = defaults.get(key)
        if f is not None and key not in COMMON_FIELDS and key not in kind.options:
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            if json.loads(json.dumps(default)) != value:
                dropped.append(key)
            continue
        out[key] = value
    if out.get("p_partial") and not model.per_token_time:
        out["p_partial"] = 0.0
        dropped.append("p_partial")
    if dropped:
        warnings.warn(
            f"checkpoint {path}: modality '{stored.get('name')}' stores {sorted(dropped)}, which "
            f"do not apply to it (they never had an effect); ignored",
            stacklevel=3,
        )
    return out


def read_weights(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights in ``path``, checked key by key and shape by shape against ``expected``;
    a mismatch is an error listing what is missing, unexpected or misshapen."""
    read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {path}: cannot read weights ({e})") from None
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this model: missing keys {sorted(missing)[:10]}, "
            f"unexpected keys {sorted(unexpected)[:10]}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(
                f"checkpoint {path}: parameter {k} has shape {tuple(v.shape)}, "
                f"the model expects {tuple(expected[k].shape)}"
            )
    return state
