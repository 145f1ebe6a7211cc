"""The batch manifest: one JSON file keyed by batch id, the watermark of what was ingested.

Each entry: ``{"status": "staged" | "accepted" | "partial" | "quarantined", "ingested_at":
ISO-8601 UTC, "source": feed URL, "files": n, "report": {...}, "data_rev": sha or null}``.
``data_rev`` is set by the validate step to ``null`` (validated, not versioned yet) together
with the outcome, and by the version step to the first workspace commit that holds that
outcome; entries written before the field existed lack it.

Writes are atomic (temp file, flushed to disk, then ``os.replace``), so a killed task or a full
disk leaves the previous manifest intact, and the temp file of a failed write is removed.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.files import atomic_write


class ManifestError(ValueError):
    """The manifest file is not the JSON object this module writes."""


def read_manifest(path: Path) -> dict[str, dict]:
    """The manifest, or ``{}`` when none was written yet.

    Raises:
        ManifestError: when the file is not a JSON object (it was written by something else:
            this module only ever renames a complete file into place).
    """
    path = Path(path)
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"the batch manifest {path} is not valid JSON ({exc}); it holds "
                            f"{len(text)} characters") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"the batch manifest {path} is not a JSON object")
    return manifest


def write_manifest(path: Path, manifest: dict[str, dict]) -> None:
    """Atomically replaces the manifest file (:func:`common.files.atomic_write`: the previous
    one stays whole if this fails; a temporary file a killed writer left is overwritten)."""
    text = json.dumps(manifest, indent=2, sort_keys=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def update_entry(path: Path, batch_id: str, **fields) -> dict:
    """Merges ``fields`` into one batch's entry and writes the manifest; returns the entry."""
    return update_entries(path, {batch_id: fields})[batch_id]


def update_entries(path: Path, updates: dict[str, dict]) -> dict[str, dict]:
    """Merges ``updates[batch_id]`` into each batch's entry in one atomic write.

    Returns:
        The updated entries, keyed by batch id.
    """
    manifest = read_manifest(path)
    for batch_id, fields in updates.items():
        manifest[batch_id] = {**manifest.get(batch_id, {}), **fields}
    write_manifest(path, manifest)
    return {batch_id: manifest[batch_id] for batch_id in updates}
