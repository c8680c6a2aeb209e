"""Writing files so that a kill, a host crash or a full disk never leaves a torn one.

A file is written under a temporary name, flushed to disk (``fsync``), renamed into place and
its folder flushed, so the name either holds the old file or the whole new one. Failures become
one ``OSError`` naming the file and how much space is left.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

TMP_SUFFIX = ".tmp"


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and every folder, deepest first."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


class WriteError(OSError):
    """A file could not be written; the message names it and the free space."""


def write_failure(path: Path, err: BaseException) -> OSError:
    """An ``OSError`` that names ``path``, the reason and the free space (``err`` itself if it
    already is one)."""
    if isinstance(err, WriteError):
        return err
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
        space = f"; {free / 2**20:.0f} MiB free there"
        if free < 64 * 2**20:
            space += " -- the disk is (nearly) full"
    except OSError:
        space = ""
    reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return WriteError(f"cannot write {path}: {reason}{space}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to write ``path``'s new content under a temporary name, then flush
    and rename it into place. Any failure removes the temporary file and raises ``OSError``."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save: RuntimeError
        tmp.unlink(missing_ok=True)
        raise write_failure(path, err) from None
    return path


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` or fail now, naming it, if it cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output folder {folder} cannot be written ({e.strerror or e})") from None
    return folder
