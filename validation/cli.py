"""``python -m validation``: validates every batch folder of a local feed into the state layout."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from common.catalog import load_catalog
from common.params import load_params
from common.state import State


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
                        help="ISO time stamped on the rows (default: the listings file's mtime)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    return parser


def _batch_dirs(feed: Path, only: list[str] | None) -> list[Path]:
    dirs = sorted(p for p in feed.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    return [p for p in dirs if only is None or p.name in only]


def _ingested_at(batch_dir: Path, listings_file: str) -> str:
    """The listings file's mtime (UTC, ISO): stable across re-runs, unlike now()."""
    source = batch_dir / listings_file
    stamp = (source if source.exists() else batch_dir).stat().st_mtime
    return datetime.fromtimestamp(stamp, tz=UTC).isoformat()


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

    from validation.validate import validate_batch

    reports = []
    for batch_dir in _batch_dirs(args.feed, args.batch):
        reports.append(validate_batch(
            batch_dir, batch_dir.name,
            args.ingested_at or _ingested_at(batch_dir, catalog.listings_file),
            catalog, effective.paths, params.validate_, state.listings_store, state.quarantine,
            state.gx_dir, retired=effective.retired))
    if args.json:
        json.dump(reports, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in reports:
            print(f"{r['batch_id']}: {r['status']} rows={r['rows']} accepted={r['accepted_rows']} "
                  f"rejected={r['rejected_rows']} reasons={r['reasons']}")
    return 0
