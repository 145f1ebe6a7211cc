"""The batch manifest: one entry per batch id, the watermark of what was ingested.

Each entry: ``{"status": "staged" | "accepted" | "partial" | "quarantined", "ingested_at":
ISO-8601 UTC, "source": feed URL, "files": n, "report": {...}, "data_rev": sha or null}``.
``data_rev`` is set by the validate step to ``null`` (validated, not versioned yet) together
with the outcome, and by the version step to the first workspace commit that holds that
outcome; entries written before the field existed lack it.

Layout: the callers name the manifest by its path, ``<state>/manifest.json``; its entries live
beside it in ``<state>/manifest.d/`` (:func:`entries_dir`), one JSON file per batch
(``{"batch_id": ..., "entry": {...}}``, named by :func:`entry_file`), so that updating a batch
writes that batch's entry and nothing else: a week's bookkeeping costs its own batches, not
every report the manifest ever recorded (each entry holds its batch's whole validation report).
A manifest written by an earlier version as one ``manifest.json`` is split into entries on first
read and the file removed (re-done whole if that is killed midway: the file goes last).

Writes are atomic per entry (temp file, flushed to disk, then ``os.replace``), so a killed task
or a full disk leaves the previous entry intact, and the temp file of a failed write is removed.
An update of several entries (:func:`update_entries`) writes them one by one: a kill between two
leaves some updated and the rest as they were, which every caller's retry finishes (each update
is keyed by batch id and idempotent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from urllib.parse import quote

from common.files import atomic_write

ENTRIES_SUFFIX = ".d"
"""``manifest.json`` -> ``manifest.d/``: the folder of the entries."""
_MAX_NAME = 200
"""Longest quoted batch id used as a file name as is; longer ones are named by their SHA-256."""

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """The manifest (a legacy file or an entry) is not the JSON this module writes."""


def entries_dir(path: Path) -> Path:
    """The folder of the manifest's entries: ``manifest.json`` -> ``manifest.d``."""
    path = Path(path)
    return path.with_name(path.stem + ENTRIES_SUFFIX)


def entry_file(path: Path, batch_id: str) -> Path:
    """The file of one batch's entry: the batch id percent-encoded (every character but
    letters, digits and ``-_.``, so never a path separator or a control character), or
    ``_<sha256>`` when that is long or would be hidden."""
    name = quote(batch_id, safe="-_.", errors="surrogatepass")
    if len(name) > _MAX_NAME or name.startswith(".") or not name:
        name = "_" + hashlib.sha256(batch_id.encode("utf-8", "surrogatepass")).hexdigest()
    return entries_dir(path) / f"{name}.json"


def _load_json(file: Path, what: str):
    text = file.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"the batch manifest {what} {file} is not valid JSON ({exc}); it holds "
                            f"{len(text)} characters") from exc


def _write_entry(path: Path, batch_id: str, entry: dict) -> None:
    text = json.dumps({"batch_id": batch_id, "entry": entry}, indent=1, sort_keys=True)
    atomic_write(entry_file(path, batch_id), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _migrate(path: Path) -> None:
    """Splits a legacy single-file manifest into entries, then removes the file."""
    manifest = _load_json(path, "file")
    if not isinstance(manifest, dict):
        raise ManifestError(f"the batch manifest {path} is not a JSON object")
    for batch_id, entry in manifest.items():
        _write_entry(path, batch_id, entry)
    path.unlink()  # last: a kill before this re-does the split, from the same file
    log.info("batch manifest: %d entries of %s moved to %s/", len(manifest), path, entries_dir(path))


def read_manifest(path: Path) -> dict[str, dict]:
    """The manifest ``{batch_id: entry}``, or ``{}`` when none was written yet.

    Reads every entry (one small file per batch; a legacy ``manifest.json`` is split first).

    Raises:
        ManifestError: when an entry (or the legacy file) is not the JSON this module writes
            (it was written by something else: this module only ever renames a complete file
            into place).
    """
    path = Path(path)
    if path.is_file():
        _migrate(path)
    folder = entries_dir(path)
    if not folder.is_dir():
        return {}
    manifest = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue  # a temporary file of a write in progress, or killed
        data = _load_json(Path(entry.path), "entry")
        if not (isinstance(data, dict) and isinstance(data.get("batch_id"), str)
                and isinstance(data.get("entry"), dict)):
            raise ManifestError(f"the batch manifest entry {entry.path} is not a JSON object with "
                                "batch_id and entry")
        manifest[data["batch_id"]] = data["entry"]
    return manifest


def read_entry(path: Path, batch_id: str) -> dict | None:
    """One batch's entry (one file read), or None when the manifest has none."""
    path = Path(path)
    if path.is_file():
        _migrate(path)
    file = entry_file(path, batch_id)
    if not file.is_file():
        return None
    data = _load_json(file, "entry")
    return data.get("entry") if isinstance(data, dict) else None


def update_entry(path: Path, batch_id: str, **fields) -> dict:
    """Merges ``fields`` into one batch's entry and writes that entry; returns the entry."""
    return update_entries(path, {batch_id: fields})[batch_id]


def update_entries(path: Path, updates: dict[str, dict]) -> dict[str, dict]:
    """Merges ``updates[batch_id]`` into each batch's entry; writes only those entries.

    Returns:
        The updated entries, keyed by batch id.
    """
    out = {}
    for batch_id, fields in updates.items():
        out[batch_id] = {**(read_entry(path, batch_id) or {}), **fields}
        _write_entry(path, batch_id, out[batch_id])
    return out
