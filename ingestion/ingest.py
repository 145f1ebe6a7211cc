"""Ingest: copy the feed's new batches to staging and record them in the manifest.

A batch is ingested once: the manifest, keyed by batch id, is the watermark, so re-running
the same interval ingests nothing twice. The copy is atomic: a batch is downloaded into
``staging/.<batch_id>.partial/`` and renamed into place only when complete, so an interrupted
copy leaves no half batch under its id, and a retry resumes the partial folder (files already
there with the right size are not fetched again) and finishes it. Staged batches are the raw
batches, kept unchanged: their files are made read-only once staged, and validation only reads them.

CLI: ``python -m ingestion.ingest [--cutoff 2026-11-09T00:00:00+00:00] [--max-batches N]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from common.params import Params, load_params
from common.state import State
from ingestion.manifest import read_manifest, update_entry
from ingestion.sources import PART, FeedError, FeedSource, check_batch_id, open_feed

_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})$")


def batch_date(batch_id: str) -> date | None:
    """The date at the end of a batch id (``fashion-2026-11-02`` -> 2026-11-02), or None."""
    match = _DATE.search(batch_id)
    if not match:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def pending_batches(feed: FeedSource, manifest: dict, cutoff: datetime | None) -> list[str]:
    """Batches in the feed not in the manifest and dated on or before ``cutoff`` (if given)."""
    pending = []
    for batch_id in feed.list_batches():
        if batch_id in manifest:
            continue
        when = batch_date(batch_id)
        if cutoff is not None and when is not None and when > cutoff.date():
            continue
        pending.append(batch_id)
    return pending


def partial_dir(staging: Path, batch_id: str) -> Path:
    """Where a batch is downloaded before it is renamed into ``staging/<batch_id>``."""
    return Path(staging) / f".{check_batch_id(batch_id)}.partial"


def _freeze(folder: Path) -> None:
    """Makes every file below ``folder`` read-only (r--r--r--): the raw batch is kept unchanged."""
    read_only = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    for root, _, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), read_only)


def stage_batch(feed: FeedSource, batch_id: str, staging: Path) -> tuple[Path, int]:
    """Copies one batch into ``staging/<batch_id>`` atomically.

    The batch is downloaded into :func:`partial_dir` (kept when the copy fails, so the next
    attempt resumes it), its files made read-only, then the folder renamed into place.

    Returns:
        ``(staged folder, number of files)``.

    Raises:
        ingestion.sources.FeedError: unsafe batch id or batch content (the partial folder is
            removed: retrying would fail the same way).
        OSError, botocore errors: an interrupted copy; the partial folder is kept for the retry.
    """
    staging.mkdir(parents=True, exist_ok=True)
    final = staging / check_batch_id(batch_id)
    tmp = partial_dir(staging, batch_id)
    try:
        count = feed.download_batch(batch_id, tmp)
    except FeedError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for part in tmp.rglob(f"*{PART}"):  # leftovers of an interrupted copy of a file now complete
        if part.with_name(part.name[: -len(PART)]).is_file():
            part.unlink()
    _freeze(tmp)
    if final.exists():  # left by a run killed between rename and manifest write
        shutil.rmtree(final)
    tmp.rename(final)
    return final, count


def ingest_new_batches(
    state: State,
    params: Params,
    cutoff: datetime | None = None,
    feed_url: str | None = None,
) -> dict:
    """Stages the feed's new batches and returns the ones waiting for validation.

    Args:
        state: the state folder.
        params: the params (``ingest.max_batches``).
        cutoff: the run's data interval end (timezone-aware); batches dated later wait.
            ``None`` takes every pending batch.
        feed_url: the feed (folder or ``s3://``); default ``state.feed_url``.

    Returns:
        ``{"feed": url, "ingested": [ids staged now], "staged": [ids waiting for validation],
        "taxonomy": path of the feed's taxonomy copied to staging}``.

    Raises:
        ingestion.sources.FeedError: when the feed cannot be listed or holds an unsafe batch.
    """
    state.ensure()
    feed = open_feed(feed_url or state.feed_url)
    manifest = read_manifest(state.manifest)
    catalog_taxonomy = _catalog_taxonomy_name(params)
    taxonomy_copy = state.staging / f"_{catalog_taxonomy}"
    taxonomy_copy.write_bytes(feed.read_bytes(catalog_taxonomy))
    ingested = []
    for batch_id in pending_batches(feed, manifest, cutoff)[: params.ingest.max_batches]:
        _, count = stage_batch(feed, batch_id, state.staging)
        update_entry(state.manifest, batch_id, status="staged", source=feed.url, files=count,
                     ingested_at=datetime.now(UTC).isoformat(timespec="seconds"))
        ingested.append(batch_id)
    manifest = read_manifest(state.manifest)
    staged = sorted(b for b, e in manifest.items() if e.get("status") == "staged")
    return {"feed": feed.url, "ingested": ingested, "staged": staged, "taxonomy": str(taxonomy_copy)}


def _catalog_taxonomy_name(params: Params) -> str:
    from common.catalog import load_catalog

    return load_catalog(params.catalog).taxonomy.file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestion.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--cutoff", type=datetime.fromisoformat, default=None)
    parser.add_argument("--feed", default=None)
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(ingest_new_batches(State.from_env(), load_params(args.params), args.cutoff, args.feed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
