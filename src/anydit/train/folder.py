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
# (data.workers changes the order a stream of shards is read in: free for the other sources.)
FREE = {
    "data": {"workers"},
    "train": {
        "parallel",
        "compile",
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
    import errno
    import fcntl

    handle = open(out_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    try:  # a POSIX record lock: per process, so loader workers forked later do not hold it
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            raise OSError(f"output folder {out_dir} cannot be locked ({err.strerror})") from None
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
    streamed = (saved.get("data") or {}).get("source") == "shards"
    for section in sorted(set(saved) | set(now)):
        if section in FREE_SECTIONS:
            continue
        a, b = saved.get(section), now.get(section)
        if section == "modalities":
            out += _modality_changes(a or [], b or [])
            continue
        a, b = a or {}, b or {}
        free = FREE.get(section, set()) - ({"workers"} if streamed else set())
        for key in sorted(set(a) | set(b)):
            if key not in free and _plain(a.get(key)) != _plain(b.get(key)):
                out.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def _modality_changes(saved: list, now: list) -> list[str]:
    """'modalities.NAME.field: a -> b', and modalities added or removed."""
    a = {m.get("name"): m for m in saved}
    b = {m.get("name"): m for m in now}
    out = [f"modalities: {name!r} added" for name in sorted(set(b) - set(a), key=str)]
    out += [f"modalities: {name!r} removed" for name in sorted(set(a) - set(b), key=str)]
    for name in sorted(set(a) & set(b), key=str):
        for key in sorted(set(a[name]) | set(b[name])):
            x, y = a[name].get(key), b[name].get(key)
            if _plain(x) != _plain(y):
                out.append(f"modalities.{name}.{key}: {x!r} -> {y!r}")
    return out


def _plain(x):
    """Tuples as lists, so a config read back from YAML compares equal to the dataclass's."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x
