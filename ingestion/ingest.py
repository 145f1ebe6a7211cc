"""Ingest: copy the feed's new batches to staging and record them in the manifest.

A batch is ingested once: the manifest, keyed by batch id, is the watermark, so re-running
the same interval ingests nothing twice. The copy is atomic: a batch is downloaded into a
temporary folder next to staging and renamed into place, so an interrupted copy leaves no
half batch and a retry starts it again. Staged batches are the raw batches, kept unchanged.

CLI: ``python -m ingestion.ingest [--cutoff 2026-11-09T00:00:00+00:00] [--max-batches N]``
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

from common.params import Params, load_params
from common.state import State
from ingestion.manifest import read_manifest, update_entry
from ingestion.sources import FeedSource, check_batch_id, open_feed

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


def stage_batch(feed: FeedSource, batch_id: str, staging: Path) -> tuple[Path, int]:
    """Copies one batch into ``staging/<batch_id>`` atomically; returns (folder, file count)."""
    check_batch_id(batch_id)
    staging.mkdir(parents=True, exist_ok=True)
    final = staging / batch_id
    tmp = Path(tempfile.mkdtemp(dir=staging, prefix=f".{batch_id}."))
    try:
        count = feed.download_batch(batch_id, tmp)
        if final.exists():  # left by a run killed between rename and manifest write
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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

    return load_catalog(params.catalog).taxonomy


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
