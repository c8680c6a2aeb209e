"""A run's YAML config -> ``Config``: size presets, the built-in data's modalities and
``--set key=value`` overrides. Errors name the file and the key."""

from __future__ import annotations

import copy
import dataclasses
import importlib
from pathlib import Path
from typing import Any

import yaml

from anydit.config import Config, ConfigError, DataConfig, from_dict

# The modalities each built-in dataset makes (module, function), used where a config lists none.
BUILT_IN_MODALITIES = {
    "digits": ("anydit.data.digits", "digits_modalities"),
    "digit-strings": ("anydit.data.digit_strings", "digit_strings_modalities"),
    "digit-edits": ("anydit.data.digit_edits", "digit_edits_modalities"),
    "digit-layouts": ("anydit.data.digit_layouts", "digit_layouts_modalities"),
}


def _set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; list items by index or, for modalities, by name."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {key}: expected a dotted field name such as train.lr")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            match = [m for m in node if isinstance(m, dict) and m.get("name") == part]
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif match:
                node = match[0]
            else:
                raise ConfigError(f"--set {key}: no list item {part!r} at {where}")
        else:
            if not isinstance(node.get(part, {}), dict | list):
                raise ConfigError(f"--set {key}: {where} is a value, not a section")
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"--set {key}: {where} is a value, not a section")
    if isinstance(node, list):
        raise ConfigError(f"--set {key}: expected a field name after the list item")
    node[parts[-1]] = value


def config_from_tree(tree: Any, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from parsed YAML plus ``key=value`` overrides (values parsed as YAML).

    ``model.preset`` names a size preset whose fields the rest of ``model`` overrides. With
    ``data.source: digits`` and no ``modalities``, the built-in digits modalities are used.
    """
    tree = copy.deepcopy(tree) if tree is not None else {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(tree).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: not a YAML value ({err})") from None
        _set_path(tree, key.strip(), value)
    for section in ("model", "data", "train", "flow", "sample"):
        if tree.get(section) is not None and not isinstance(tree[section], dict):
            raise ConfigError(f"{section}: expected a mapping of fields, got {tree[section]!r}")
    model = dict(tree.get("model") or {})
    preset_name = model.pop("preset", None)
    if preset_name is not None:
        from anydit.model.presets import PRESETS, preset

        if str(preset_name) not in PRESETS:
            raise ConfigError(
                f"model.preset: expected one of {sorted(PRESETS)}, got {preset_name!r}"
            )
        base = dataclasses.asdict(preset(str(preset_name)))
        base.update(model)
        model = base
    tree["model"] = model
    if not tree.get("modalities"):
        source = (tree.get("data") or {}).get("source", DataConfig.source)
        if source in BUILT_IN_MODALITIES:
            module, function = BUILT_IN_MODALITIES[source]
            made = getattr(importlib.import_module(module), function)()
            tree["modalities"] = [dataclasses.asdict(m) for m in made]
    return from_dict(Config, tree)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config file (see ``config_from_tree``); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: not valid YAML ({e})") from None
    try:
        return config_from_tree(tree, overrides)
    except ConfigError as e:
        raise ConfigError(f"config file {p}: {e}") from None


def model_file(path: str | Path) -> Path:
    """A model file, or a run folder's ``model.safetensors``."""
    p = Path(path)
    return p / "model.safetensors" if p.is_dir() else p


def run_sampling(checkpoint: str | Path):
    """The ``sample:`` settings of the run a checkpoint belongs to (its folder's
    ``config.yaml``), or the defaults."""
    from anydit.config import SampleConfig

    p = Path(checkpoint)
    saved = (p if p.is_dir() else p.parent) / "config.yaml"
    if not saved.is_file():
        return SampleConfig()
    try:
        tree = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{saved}: not valid YAML ({e})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{saved}: expected a mapping at the top level")
    return from_dict(SampleConfig, tree.get("sample") or {}, f"{saved}: sample")
