"""``python -m validation``: validates every batch folder of a local feed into the state layout."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path

from common.batches import batch_date
from common.catalog import load_catalog
from common.params import load_params
from common.state import State
from ingestion.sources import BatchRefused, LocalFeed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m validation",
        description="Validate every batch folder of a local feed: accepted rows go to the "
                    "listings store, rejected rows to quarantine; prints one report per batch.")
    parser.add_argument("--feed", required=True, type=Path,
                        help="feed folder: <feed>/<batch_id>/ batches and the taxonomy file")
    parser.add_argument("--catalog", default=None,
                        help="catalog adapter YAML (default: the params file's `catalog`)")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    parser.add_argument("--state", default=None,
                        help="state folder (default: $LCP_STATE_DIR, else <project>/.state)")
    parser.add_argument("--batch", action="append", default=None,
                        help="validate only this batch id (repeatable)")
    parser.add_argument("--ingested-at", default=None,
                        help="ISO time stamped on the rows (default: midnight UTC of the batch "
                             "id's date)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    return parser


def _batch_names(feed: LocalFeed, only: list[str] | None) -> list[str]:
    """The feed's batches (:meth:`LocalFeed.list_batches`: folders, and links or FIFOs standing
    where a folder would, which are refused), those of ``only`` if given."""
    return [b for b in feed.list_batches() if only is None or b in only]


def _ingested_at(batch_id: str) -> str:
    """The time stamped on a batch's rows: midnight UTC of the date its id carries
    (``fashion-2026-11-09`` -> ``2026-11-09T00:00:00+00:00``), the Unix epoch for an undated id.

    Never a file's modification time: the partner who wrote the file sets it, and a file dated
    2099 would make its rows outrank every later correction. The id's date is stable across
    re-runs, and versions are ordered by it anyway (:func:`common.batches.version_order`).
    """
    when = batch_date(batch_id) or date(1970, 1, 1)
    return datetime.combine(when, time(), tzinfo=UTC).isoformat()


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI.

    Returns:
        0 when every batch was validated (whatever its status); argparse exits with 2 on usage
        errors (no feed folder, no taxonomy, bad catalog or params file).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.feed.is_dir():
        parser.error(f"--feed {args.feed} is not a folder")
    try:
        params = load_params(args.params)
        catalog = load_catalog(args.catalog or params.catalog)
    except (OSError, ValueError) as exc:  # pydantic.ValidationError is a ValueError
        parser.error(f"cannot load params/catalog: {exc}")
    from validation.taxonomy import load_taxonomy

    try:
        taxonomy = load_taxonomy(args.feed / catalog.taxonomy.file)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot load taxonomy: {exc}")
    if args.ingested_at:
        try:
            datetime.fromisoformat(args.ingested_at)
        except ValueError:
            parser.error(f"--ingested-at {args.ingested_at!r} is not an ISO 8601 time")
    state = State.from_env(args.state)
    from validation.taxonomy import effective_taxonomy

    try:  # the state's recorded taxonomy changes apply on top of the feed's file
        effective = effective_taxonomy(state, catalog, declared=taxonomy)
    except ValueError as exc:
        parser.error(f"cannot load taxonomy changes: {exc}")

    from common.results import BatchReport
    from ingestion.ingest import refusal_report
    from validation.validate import validate_batch

    feed = LocalFeed(args.feed)
    reports = []
    for batch_id in _batch_names(feed, args.batch):
        try:  # a link, a FIFO, a hard link out of the feed: refused as ingest refuses it
            feed.check_batch(batch_id)
        except BatchRefused as exc:
            refused = refusal_report(state, feed.url, batch_id, exc, None)
            reports.append(BatchReport.model_validate(refused))
            continue
        reports.append(validate_batch(
            args.feed / batch_id, batch_id, args.ingested_at or _ingested_at(batch_id),
            catalog, effective.paths, params.validate_, state.listings_store, state.quarantine,
            state.gx_dir, retired=effective.retired))
    if args.json:
        json.dump([r.to_json() for r in reports], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in reports:
            print(f"{r.batch_id}: {r.status} rows={r.rows} accepted={r.accepted_rows} "
                  f"rejected={r.rejected_rows} reasons={r.reasons}")
    return 0
