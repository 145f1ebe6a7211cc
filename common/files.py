"""Atomic file writes: a reader, a retry or a killed writer never sees half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Calls ``write(tmp)`` on a hidden temporary file next to ``path``, flushes it to disk, then
    renames it onto ``path`` (``os.replace``, atomic on POSIX within one filesystem).

    The temporary file is removed when ``write`` raises (a full disk, a serialisation error), so
    a failed write leaves the previous file, or none. Its name is fixed (``.<name>.tmp``): one
    that a killed writer left is overwritten by the next write, never accumulated (each file
    has one writer at a time: the pipeline's steps run one at a time).

    Args:
        path: the file to (re)place; its folder is created.
        write: writes the whole content to the path it is given.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: object) -> Path:
    """Writes ``obj`` as indented JSON (non-JSON values through ``str``) with :func:`atomic_write`."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
