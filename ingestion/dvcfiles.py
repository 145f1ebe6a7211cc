"""The one reader of DVC's ``.dvc`` pointer files (a partition's
``data/listings/batches/<batch_id>.dvc``, ``data/golden.dvc``...).

A pointer is the YAML DVC writes for ``dvc add`` (https://dvc.org/doc/user-guide/project-structure/dvc-files)::

    outs:
    - md5: 3a1f...e2.dir        # a directory's hash ends with .dir
      size: 123456
      nfiles: 42
      hash: md5
      path: listings

Versioning (a pointer's hash, whether one was left half written), the data revision of a
workspace commit and the gate (the golden set's revision) read pointers through this module only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml


class DvcFileError(ValueError):
    """A ``.dvc`` file that is not a pointer DVC wrote whole (truncated, empty, no ``outs``)."""


@dataclass(frozen=True)
class DvcOut:
    """The first (only) output of a pointer.

    Attributes:
        path: the output's path, relative to the pointer's folder (``listings``).
        md5: DVC's hash: a file's MD5, or ``<md5>.dir`` for a directory (its manifest's hash).
        size: bytes of the output (all its files), when recorded.
        nfiles: files of a directory output, when recorded.
    """

    path: str
    md5: str
    size: int | None = None
    nfiles: int | None = None


_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
"""DVC's hash of a file (32 hex digits) or of a directory (its manifest's, ``.dir`` appended)."""


def parse_dvc_file(text: str, source: str = "<.dvc file>", out_path: str | None = None) -> DvcOut:
    """Parses a pointer's text, and checks that DVC wrote it whole.

    A pointer cut short by a kill or a full disk can still be YAML (``size: 12`` cut from
    ``size: 1234``, ``path: fash`` cut from ``path: fashion-2026-11-09``), which DVC then refuses
    or, worse, reads as another output; so beyond the YAML, the output's hash must have DVC's
    form, ``size`` and ``nfiles`` must be integers, the text must end with the newline DVC writes
    last, and (``out_path``) the output must be the one the pointer is named after.

    Args:
        text: the YAML of the ``.dvc`` file.
        source: what to name in an error (its path, or ``<rev>:<path>``).
        out_path: the output's expected path (``dvc add`` names the pointer ``<path>.dvc``).

    Raises:
        DvcFileError: when the text is not YAML, has no ``outs`` list, or its first output is
            not one DVC wrote whole (as above).
    """
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        out = data["outs"][0]
        md5 = out["md5"]
    except (yaml.YAMLError, LookupError, TypeError) as exc:
        raise DvcFileError(f"{source} is not a complete DVC pointer ({type(exc).__name__}: {exc})") from exc
    problems = []
    if not isinstance(md5, str) or not _MD5.match(md5):
        problems.append(f"md5 {md5!r}")
    for key in ("size", "nfiles"):
        if key in out and (not isinstance(out[key], int) or isinstance(out[key], bool)):
            problems.append(f"{key} {out[key]!r}")
    if not text.endswith("\n"):
        problems.append("no final newline")
    if out_path is not None and out.get("path") != out_path:
        problems.append(f"path {out.get('path')!r} where the pointer's name says {out_path!r}")
    if problems:
        raise DvcFileError(f"{source} is not a complete DVC pointer ({'; '.join(problems)})")
    return DvcOut(path=str(out.get("path", "")), md5=md5, size=out.get("size"), nfiles=out.get("nfiles"))


def read_dvc_file(path: Path) -> DvcOut | None:
    """The pointer at ``path``, or None when there is no such file; its output must be the one
    the pointer is named after (``<output>.dvc``).

    Raises:
        DvcFileError: as :func:`parse_dvc_file` (also for a file that is not UTF-8).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise DvcFileError(f"{path} is not a complete DVC pointer (not UTF-8: {exc})") from exc
    return parse_dvc_file(text, str(path), path.name[:-4] if path.name.endswith(".dvc") else None)


def out_md5(path: Path) -> str | None:
    """The hash the pointer at ``path`` records, or None when there is no pointer.

    Raises:
        DvcFileError: when the pointer is not complete.
    """
    out = read_dvc_file(path)
    return out.md5 if out else None


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a pointer DVC wrote whole (False when missing or cut short)."""
    try:
        return read_dvc_file(path) is not None
    except DvcFileError:
        return False
