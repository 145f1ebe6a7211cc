"""The batch manifest: one JSON file keyed by batch id, the watermark of what was ingested.

Each entry: ``{"status": "staged" | "accepted" | "partial" | "quarantined", "ingested_at":
ISO-8601 UTC, "source": feed URL, "files": n, "report": {...}}``. Writes are atomic (temp
file + ``os.replace``), so a killed task leaves the previous manifest intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def read_manifest(path: Path) -> dict[str, dict]:
    """The manifest, or ``{}`` when none was written yet."""
    path = Path(path)
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def write_manifest(path: Path, manifest: dict[str, dict]) -> None:
    """Atomically replaces the manifest file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def update_entry(path: Path, batch_id: str, **fields) -> dict:
    """Merges ``fields`` into one batch's entry and writes the manifest; returns the entry."""
    manifest = read_manifest(path)
    entry = {**manifest.get(batch_id, {}), **fields}
    manifest[batch_id] = entry
    write_manifest(path, manifest)
    return entry
