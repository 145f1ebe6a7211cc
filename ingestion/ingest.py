"""Ingest: copy the feed's new batches to staging and record them in the manifest.

A batch is ingested once: the manifest, keyed by batch id, is the watermark, so re-running
the same interval ingests nothing twice. The copy is atomic: a batch is downloaded into
``staging/.<batch_id>.partial/`` and renamed into place only when complete, so an interrupted
copy leaves no half batch under its id, and a retry resumes the partial folder (files already
there with the right size are not fetched again) and finishes it. Staged batches are the raw
batches, kept unchanged: their files are made read-only once staged, and validation only reads them.

A batch the feed source refuses (a symbolic link, a FIFO or device, a hard link to a file
outside the feed, an unreadable file, an S3 key that leaves its folder, a batch that is no
folder, a folder name that is unsafe or carries no date or an invalid one) is quarantined, not
raised: the manifest
records it as ``quarantined`` with its reason and the content fingerprint it was refused with,
``<quarantine>/<batch>/report.json`` holds the report, and ingest carries on with the next
batches. A retry never stages it again; a re-publication with other content (another
fingerprint) is staged and validated as a new delivery, and so is a batch that validation
quarantined whole. The raw copy of the earlier delivery is kept under
``<quarantine>/<batch>/superseded/<fingerprint>/``.

Batches are named ``<catalog>-YYYY-MM-DD``, the date of the week they belong to: the date places
a batch in time (a run takes the batches dated on or before its data interval end).

How many pending batches one call stages is ``ingest.max_batches`` of the params (the DAG's
form sets it per run); the CLI reads it from ``--params``.

CLI: ``python -m ingestion.ingest [--cutoff 2026-11-09T00:00:00+00:00] [--feed DIR|s3://...]
[--params FILE]``; prints the :class:`common.results.IngestResult` as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from common.batches import BatchDateError, batch_date, is_release_id, parse_batch_date
from common.files import write_json
from common.params import Params, load_params
from common.results import IngestResult, RefusedBatch
from common.state import State
from ingestion.manifest import read_manifest, update_entry
from ingestion.sources import PART, BatchRefused, FeedSource, check_batch_id, open_feed

logger = logging.getLogger(__name__)

NAMING = "batches are named <catalog>-YYYY-MM-DD, the Monday of their week (e.g. fashion-2026-11-02)"
"""How a batch folder must be named; quoted in the refusal of one that is not."""


def check_batch_name(batch_id: str) -> date:
    """The date a batch folder's name places it at.

    Raises:
        BatchRefused: ``batch_name_invalid`` (not a plain folder name, or a release id
            ``<batch>.release-<k>``, which the platform keeps for its own), ``batch_name_undated``
            (no ``YYYY-MM-DD`` at its end) or ``batch_name_date_invalid`` (``YYYY-MM-DD`` digits
            that are no calendar date, e.g. ``2026-02-30``), with :data:`NAMING` in the message.
    """
    check_batch_id(batch_id)
    if is_release_id(batch_id):
        raise BatchRefused("batch_name_invalid",
                           f"batch folder {batch_id!r} is named like a release of held-back "
                           f"listings (<batch>.release-<k>), a name the platform keeps for its "
                           f"own: {NAMING}")
    try:
        when = parse_batch_date(batch_id)
    except BatchDateError as exc:
        raise BatchRefused("batch_name_date_invalid",
                           f"batch folder {batch_id!r}: {exc}, so no run can place it in time: "
                           f"{NAMING}") from None
    if when is None:
        raise BatchRefused("batch_name_undated",
                           f"batch folder {batch_id!r} carries no date, so no run can place it in "
                           f"time: {NAMING}")
    return when


def _redelivered(feed: FeedSource, entry: dict, batch_id: str) -> str | None:
    """The batch's new fingerprint when a whole-quarantined batch was published again with
    other content, else ``None`` (staged, accepted and unchanged batches are never re-staged)."""
    if entry.get("status") != "quarantined" or not entry.get("fingerprint"):
        return None
    now = feed.fingerprint(batch_id)
    return now if now != entry["fingerprint"] else None


def pending_batches(feed: FeedSource, manifest: dict, cutoff: datetime | None) -> dict[str, str | None]:
    """Batches to stage: new in the feed (or re-published after a whole quarantine, with other
    content) and dated on or before ``cutoff`` (if given). Undated or unsafe names are included,
    so that ingest refuses them with a reason.

    Returns:
        ``{batch id: its fingerprint when it was already computed (a re-publication), else
        None}``, in the feed's order; each batch's content is hashed at most once per call.
    """
    pending: dict[str, str | None] = {}
    for batch_id in feed.list_batches():
        entry, fingerprint = manifest.get(batch_id), None
        if entry is not None:
            fingerprint = _redelivered(feed, entry, batch_id)
            if fingerprint is None:
                continue
        when = batch_date(batch_id)
        if cutoff is not None and when is not None and when > cutoff.date():
            continue
        pending[batch_id] = fingerprint
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
        ingestion.sources.BatchRefused: unsafe batch id or batch content (the partial folder is
            removed: retrying would fail the same way).
        OSError, botocore errors: an interrupted copy; the partial folder is kept for the retry.
    """
    staging.mkdir(parents=True, exist_ok=True)
    final = staging / check_batch_id(batch_id)
    tmp = partial_dir(staging, batch_id)
    try:
        count = feed.download_batch(batch_id, tmp)
    except BatchRefused:
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
) -> IngestResult:
    """Stages the feed's new batches and returns the ones waiting for validation.

    A batch the feed source refuses is quarantined (:func:`refuse_batch`) and the next batches
    are staged as usual.

    Args:
        state: the state folder.
        params: the params (``ingest.max_batches``).
        cutoff: the run's data interval end (timezone-aware); batches dated later wait.
            ``None`` takes every pending batch.
        feed_url: the feed (folder or ``s3://``); default ``state.feed_url``.

    Returns:
        The feed, the ids staged by this call, every id waiting for validation (this call's
        and earlier ones', sorted), the batches this call refused, and the path of the feed's
        taxonomy copied to staging.

    Raises:
        ingestion.sources.FeedError: when the feed itself cannot be listed or read.
    """
    state.ensure()
    feed = open_feed(feed_url or state.feed_url)
    manifest = read_manifest(state.manifest)
    catalog_taxonomy = _catalog_taxonomy_name(params)
    taxonomy_copy = state.staging / f"_{catalog_taxonomy}"
    taxonomy_copy.write_bytes(feed.read_bytes(catalog_taxonomy))
    ingested, refused = [], []
    pending = list(pending_batches(feed, manifest, cutoff).items())
    for batch_id, fingerprint in pending[: params.ingest.max_batches]:
        previous = manifest.get(batch_id)
        try:
            check_batch_name(batch_id)
            fingerprint = fingerprint or feed.fingerprint(batch_id)
            if previous is not None:
                _supersede(state, batch_id, previous)
            _, count = stage_batch(feed, batch_id, state.staging)
        except BatchRefused as exc:
            # a refused name has no fingerprint yet: no new content can give that name a date
            refused.append(refuse_batch(state, feed, batch_id, exc, fingerprint))
            logger.warning("[ingest] %r: refused, quarantined: %s", batch_id[:200], exc)
            continue
        update_entry(state.manifest, batch_id, status="staged", source=feed.url, files=count,
                     fingerprint=fingerprint, report=None,
                     ingested_at=datetime.now(UTC).isoformat(timespec="seconds"),
                     **({"redelivered_from": previous.get("fingerprint")} if previous else {}))
        logger.info("[ingest] %s: staged %d file(s)%s", batch_id, count,
                    " (a re-publication of a quarantined batch)" if previous else "")
        ingested.append(batch_id)
    manifest = read_manifest(state.manifest)
    staged = sorted(b for b, e in manifest.items() if e.get("status") == "staged")
    return IngestResult(feed=feed.url, ingested=ingested, staged=staged, refused=refused,
                        taxonomy=str(taxonomy_copy))


def quarantine_folder(state: State, batch_id: str) -> Path:
    """``<quarantine>/<batch_id>``; a name that is no safe folder name gets
    ``<quarantine>/_refused-<sha1 of the name>`` instead."""
    try:
        return state.quarantine / check_batch_id(batch_id)
    except BatchRefused:
        return state.quarantine / f"_refused-{hashlib.sha1(batch_id.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


def refusal_report(state: State, source: str, batch_id: str, exc: BatchRefused,
                   fingerprint: str | None) -> dict:
    """Writes and returns the quarantine report of a refused batch,
    ``<quarantine>/<batch>/report.json`` (:func:`quarantine_folder`): the shape of a validation
    report (``status: quarantined``, ``rows: 0``, ``batch_reasons``, ``reasons``), with
    ``stage: "ingest"``, the feed ``source`` and the ``fingerprint`` it was refused with."""
    folder = quarantine_folder(state, batch_id)
    report = {"batch_id": batch_id, "stage": "ingest", "status": "quarantined", "rows": 0,
              "accepted_rows": 0, "rejected_rows": 0, "reasons": {exc.reason: 1},
              "batch_reasons": [str(exc)], "warnings": [], "source": source,
              "fingerprint": fingerprint, "report": str(folder / "report.json")}
    write_json(folder / "report.json", report)
    return report


def refuse_batch(state: State, feed: FeedSource, batch_id: str, exc: BatchRefused,
                 fingerprint: str | None) -> RefusedBatch:
    """Quarantines a batch the feed source refused: its report (:func:`refusal_report`), and its
    manifest entry.

    The manifest entry records the
    content ``fingerprint`` it was refused with, so the batch is not tried again until it is
    re-published with other content; ``None`` (a refused name) means never again under this name.

    Returns:
        The refusal, with the path of its report file.
    """
    report = refusal_report(state, feed.url, batch_id, exc, fingerprint)
    update_entry(state.manifest, batch_id, status="quarantined", stage="ingest", source=feed.url,
                 fingerprint=fingerprint, files=0, report=report,
                 refused_at=datetime.now(UTC).isoformat(timespec="seconds"))
    return RefusedBatch(batch_id=batch_id, reason=exc.reason, detail=exc.detail, report=report["report"])


def _supersede(state: State, batch_id: str, previous: dict) -> None:
    """Moves the staged copy of an earlier delivery of ``batch_id`` (if any) to
    ``<quarantine>/<batch_id>/superseded/<its fingerprint>/``: a re-publication replaces it in
    staging, and the earlier raw batch is kept."""
    staged = state.staging / batch_id
    if not staged.exists():
        return
    target = state.quarantine / batch_id / "superseded" / str(previous.get("fingerprint") or "unknown")[:16]
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # the same earlier delivery moved by a killed run: this copy is the same
        shutil.rmtree(staged)
    else:
        staged.rename(target)


def _catalog_taxonomy_name(params: Params) -> str:
    from common.catalog import load_catalog

    return load_catalog(params.catalog).taxonomy.file


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI (module docstring); prints the result as JSON and returns 0."""
    parser = argparse.ArgumentParser(prog="python -m ingestion.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--cutoff", type=datetime.fromisoformat, default=None,
                        help="ISO 8601 time; batches dated later wait (default: take every pending batch)")
    parser.add_argument("--feed", default=None,
                        help="feed folder or s3:// URL (default: $LCP_FEED_URL, else <state>/feed)")
    parser.add_argument("--params", default=None,
                        help="params file (default: params.yaml); ingest.max_batches caps the batches staged")
    args = parser.parse_args(argv)
    result = ingest_new_batches(State.from_env(), load_params(args.params), args.cutoff, args.feed)
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
