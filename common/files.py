"""Atomic file writes: a reader, a retry or a killed writer never sees half a file."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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


class NotRegularFileError(OSError):
    """A path that is a symbolic link, a FIFO, a socket, a device or a folder where a regular
    file was expected; ``kind`` names what it is (``"symbolic link"``, ``"FIFO"``...)."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path, self.kind = str(path), kind
        super().__init__(f"{path} is a {kind}, not a regular file; refused (links are never followed)")


def file_kind(mode: int) -> str:
    """What ``st_mode`` describes, in words: ``"regular file"``, ``"folder"``, ``"symbolic
    link"``, ``"FIFO"``, ``"socket"``, ``"character device"``, ``"block device"``."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"),
                       (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def open_regular(path: str | Path) -> BinaryIO:
    """Opens a regular file for reading in binary mode, never through a link, never blocking.

    The last component is opened with ``O_NOFOLLOW`` (a symbolic link fails instead of being
    followed) and ``O_NONBLOCK`` (opening a FIFO with no writer returns at once instead of
    waiting forever); the opened descriptor is then checked with ``fstat`` (no race between a
    check and the open) and must be a regular file, and ``O_NONBLOCK`` is cleared for reading.
    Folders above the file are not checked here: a feed's batch folders are checked with
    ``lstat`` where they are listed.

    Args:
        path: the file.

    Returns:
        A binary file object (a context manager); the caller closes it.

    Raises:
        NotRegularFileError: when ``path`` is a symbolic link, a FIFO, a socket, a device or a
            folder (``kind`` says which).
        FileNotFoundError, PermissionError, OSError: as :func:`os.open` raises them.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise NotRegularFileError(path, "symbolic link") from None
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing
            raise NotRegularFileError(path, file_kind(os.lstat(path).st_mode)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, file_kind(mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path) -> bytes:
    """The bytes of a regular file, read with :func:`open_regular` (no link followed, no FIFO
    waited on). Raises what :func:`open_regular` raises."""
    with open_regular(path) as fh:
        return fh.read()
