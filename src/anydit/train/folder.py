"""A run's output folder: one run writes it at a time, a new run never mixes with an old one,
and a resumed run is the same run.

* ``claim``: an exclusive lock (``OUT/.lock``, released by the system when the process ends,
  even by SIGKILL): a second ``anydit train`` on the folder refuses to start.
* ``set_aside``: ``--no-resume`` in a used folder moves the old run's files into
  ``OUT/replaced-<time>/`` first, so its checkpoints are neither resumed nor pruned as if they
  were the new run's.
* ``changes``: what differs between the config a checkpoint was written with and the one asked
  for now, among the fields a resumed run must keep to continue exactly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RUN_FILES = (
    "checkpoints",
    "model.safetensors",
    "metrics.jsonl",
    "config.yaml",
    "tensorboard",
    "samples",
    "data_problems.json",
)
# Fields a resumed run may change: they decide how it is run or reported, not what it computes.
FREE = {
    "data": {"workers"},
    "train": {
        "parallel",
        "compile",
        "device",
        "tensorboard",
        "sample_every",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "max_bad_steps",
        "grad_accum",
    },
    "model": {"checkpointing"},
}
FREE_SECTIONS = {"sample"}


def claim(out_dir: Path):
    """Lock ``out_dir`` for this process; an error naming the folder if another holds it.
    Returns the open lock file (keep it open for the run)."""
    import fcntl

    handle = open(out_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise OSError(
            f"output folder {out_dir} is in use by another anydit run ({owner}); wait for it "
            "or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def set_aside(out_dir: Path) -> Path | None:
    """Move a previous run's files into ``out_dir/replaced-<time>/``; returns that folder (None
    when the folder held no run)."""
    present = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not present:
        return None
    target = out_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{n}")
    target.mkdir()
    for name in present:
        os.replace(out_dir / name, target / name)
    return target


def changes(saved: dict, now: dict) -> list[str]:
    """'section.field: saved -> now' for every field that differs and that a resumed run must
    keep (see ``FREE``)."""
    out = []
    for section in sorted(set(saved) | set(now)):
        if section in FREE_SECTIONS:
            continue
        a, b = saved.get(section), now.get(section)
        if section == "modalities":
            if _plain(a) != _plain(b):
                out.append(
                    f"modalities: {_names(a)} with their settings -> {_names(b)} with theirs"
                )
            continue
        a, b = a or {}, b or {}
        for key in sorted(set(a) | set(b)):
            if key in FREE.get(section, set()):
                continue
            if _plain(a.get(key)) != _plain(b.get(key)):
                out.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def _plain(x):
    """Tuples as lists, so a config read back from YAML compares equal to the dataclass's."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _names(mods) -> list:
    return [m.get("name") for m in mods or []]
