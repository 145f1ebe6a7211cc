"""The validate step of the DAG: the batches ingest staged, each through the expectation suite.

Accepted rows join the listings store, bad rows (or whole batches) go to quarantine with
their validation report, and the manifest records the outcome. The step fails only when the
store holds nothing valid to train on.

The DAG passes the batch ids ingest staged (``IngestResult.staged``) and the batches it refused;
the manifest supplies each batch's state (``ingested_at``, an outcome recorded earlier).

A retry after a killed attempt is safe: a batch is recorded in the manifest only after its
partition (or quarantine report) is in place, so a batch the killed attempt was working on is
still ``staged`` and is validated again, whole; what the killed writer left in the store is
recovered first (:func:`common.store.recover_partitions`). Batches the killed attempt finished
are not validated again, but the retry still reports them (their manifest entry's ``data_rev``
is null until the version_data step records the revision holding them), so the version_data
step and the model's lineage get every batch of the run exactly once.

Taxonomy changes (:mod:`validation.taxonomy`) apply here: the taxonomy is the feed's file plus the
recorded changes. Before the staged batches, :func:`release_held_back` validates again the rows
held back as ``unknown_category`` whose category is now in it, as a release batch
``<origin>.release-<k>`` with its own store partition and manifest entry (status ``released``);
the rows leave the origin's held-back list, so nothing is released twice. Rows of a retired
category are accepted with a warning, and the retired paths are written to the workspace for
prepare (:func:`validation.taxonomy.write_retired`).

CLI: ``python -m validation.staged [--batch ID ...]`` (default: every batch the manifest lists
as staged, i.e. what ``python -m ingestion.ingest`` staged); prints the result, reports
included, as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from common.batches import date_key
from common.catalog import Catalog, load_catalog
from common.cli import run_command, step_parser
from common.csv_safe import read_safe_csv
from common.files import write_json
from common.params import Params, load_params
from common.results import BatchReport, RefusedBatch, ValidateResult
from common.state import State
from common.store import batch_ids as store_batch_ids
from common.store import (
    count_listings,
    disk_full_errors,
    is_disk_full,
    read_index,
    recover_partitions,
    remove_partition,
)
from ingestion.manifest import read_manifest, update_entry
from validation.image_shards import checks_dir
from validation.reasons import UNKNOWN_CATEGORY
from validation.taxonomy import Taxonomy, effective_taxonomy, write_retired
from validation.validate import validate_batch, write_rejected

OUTCOMES = ("accepted", "partial", "quarantined")
RELEASED = "released"
"""Manifest status of a release batch (held-back listings validated again after a taxonomy change)."""
HELD_BACK_FROM = ("partial",)
"""Origins whose held-back rows are released: a batch quarantined whole is not released row by
row (its other rows were refused with it); it is validated again when re-published."""
_RELEASE_ID = re.compile(r"^(?P<origin>.+)\.release-(?P<k>[0-9]+)$")

logger = logging.getLogger(__name__)


class NothingToTrainError(RuntimeError):
    """No valid listing is left in the store after validation."""


def validate_staged_batches(state: State, params: Params, batch_ids: Sequence[str] | None = None,
                            refused: Sequence[RefusedBatch] = ()) -> ValidateResult:
    """Validates the batches ingest staged and records each outcome in the manifest.

    Args:
        state: the state folder (staging, store, quarantine, GX project).
        params: the params (``catalog``, ``validate``).
        batch_ids: the batches to validate: ingest's ``staged`` ids. ``None`` (the CLI, a run
            by hand) takes every batch the manifest lists as ``staged``. An id whose entry is no
            longer ``staged`` (validated by an earlier attempt) is not validated again.
        refused: the batches ingest refused in this run (``IngestResult.refused``): listed
            among the quarantined ones, with their report, so that the run's result and log
            name them.

    Returns:
        The batch ids by outcome, the listings in the store, the last Data Docs index, each
        batch's GX validation id and report (:func:`validation.validate.validate_batch`).
        Batches validated by an earlier attempt that did not reach the version_data step (a
        killed worker) are listed too, with the report the manifest recorded for them. Release
        batches (:func:`release_held_back`) are in ``released`` (and their reports and GX ids).

    Raises:
        KeyError: when a batch id is not in the manifest (ingest never staged it).
        NothingToTrainError: when the listings store is empty after validation.
        common.store.DiskFullError: when the state folder's disk is full; the batch being
            validated stays ``staged`` and nothing of it is left half written.
    """
    catalog = load_catalog(params.catalog)
    taxonomy = effective_taxonomy(state, catalog)
    recover_partitions(state.listings_store)
    write_retired(state.workspace, taxonomy.retired)
    manifest = read_manifest(state.manifest)
    if batch_ids is None:
        batch_ids = [b for b, e in manifest.items() if e.get("status") == "staged"]
    unknown = sorted(set(batch_ids) - set(manifest))
    if unknown:
        raise KeyError(f"batch(es) {unknown} are not in the manifest {state.manifest}: ingest never staged them")
    outcome: dict[str, list[str]] = {status: [] for status in (*OUTCOMES, RELEASED)}
    reports: dict[str, BatchReport] = {}
    data_docs = None
    for batch_id, entry in sorted(manifest.items()):  # finished by an attempt that was killed
        if (entry.get("status") in (*OUTCOMES, RELEASED) and "data_rev" in entry
                and entry["data_rev"] is None):
            outcome[entry["status"]].append(batch_id)
            reports[batch_id] = _entry_report(batch_id, entry)
            logger.info("[validate] %s: %s (validated by an earlier attempt, not versioned yet)",
                        batch_id, entry["status"])
    with disk_full_errors(state.root, "release held-back listings"):
        for release, report in release_held_back(state, params, catalog, taxonomy):
            outcome[RELEASED].append(release)
            reports[release] = report
            data_docs = report.data_docs or data_docs
    for item in refused:
        outcome["quarantined"].append(item.batch_id)
        reports[item.batch_id] = BatchReport.from_entry(manifest.get(item.batch_id)) or BatchReport(
            batch_id=item.batch_id, reasons={item.reason: 1}, batch_reasons=[f"{item.reason}: {item.detail}"],
            report=item.report)
        logger.warning("[validate] %r: quarantined at ingest (%s): %s report=%s", item.batch_id[:200],
                       item.reason, item.detail, item.report)
    for batch_id in sorted(set(batch_ids)):
        entry = manifest[batch_id]
        if entry.get("status") != "staged":
            if batch_id not in reports:
                logger.info("[validate] %s: already %s (data_rev %s), not validated again",
                            batch_id, entry.get("status"), entry.get("data_rev"))
            continue
        with disk_full_errors(state.root, f"validate batch {batch_id}"):
            report = validate_batch(
                batch_dir=state.staging / batch_id,
                batch_id=batch_id,
                ingested_at=entry["ingested_at"],
                catalog=catalog,
                taxonomy=taxonomy.paths,
                params=params.validate_,
                store=state.listings_store,
                quarantine_dir=state.quarantine,
                gx_dir=state.gx_dir,
                retired=taxonomy.retired,
                image_checks=checks_dir(state, batch_id),  # the DAG's mapped check_images tasks
            )
            shutil.rmtree(checks_dir(state, batch_id), ignore_errors=True)
            # after the partition: a kill before this line leaves the batch staged, retried whole
            update_entry(state.manifest, batch_id, status=report.status, report=report.to_json(),
                         data_rev=None)
        outcome[report.status].append(batch_id)
        reports[batch_id] = report
        data_docs = report.data_docs or data_docs
        log = logger.warning if report.status == "quarantined" else logger.info
        log("[validate] %s: %s (%d accepted, %d rejected) reasons=%s%s data_docs=%s", batch_id,
            report.status, report.accepted_rows, report.rejected_rows, report.reasons,
            f" batch_reasons={report.batch_reasons}" if report.status == "quarantined" else "",
            report.data_docs)
    store_listings = count_listings(state.listings_store)  # from the store's index
    if store_listings == 0:
        raise NothingToTrainError(
            "no valid listing to train on: every batch so far was quarantined "
            f"(see {state.quarantine})")
    released = sorted(set(outcome.pop(RELEASED)))
    return ValidateResult(
        **{status: sorted(ids) for status, ids in outcome.items()},
        store_listings=store_listings,
        data_docs=data_docs,
        validation_ids={b: r.validation_id for b, r in reports.items()},
        reports=reports,
        released=released,
        released_listings=sum(reports[b].accepted_rows for b in released),
    )


def _entry_report(batch_id: str, entry: dict) -> BatchReport:
    """A manifest entry's report, or a minimal one with its status when it holds none."""
    report = BatchReport.from_entry(entry)
    if report is not None:
        return report
    status = entry.get("status")
    return BatchReport(batch_id=batch_id, status=status if status in OUTCOMES else "accepted")


def release_id(origin: str, k: int) -> str:
    """The id of the ``k``-th release batch of an origin batch: ``<origin>.release-<k>``.

    It names the store partition, the staged folder, the quarantine folder and the manifest
    entry, like any batch id (letters, digits, ``.``, ``_``, ``-``).
    """
    return f"{origin}.release-{k}"


def read_rejected(path: Path) -> pd.DataFrame:
    """A quarantine's ``rejected.csv`` as text (empty cells ``""``), row order kept, the cells
    :func:`validation.validate.write_rejected` neutralised against formulas restored."""
    return read_safe_csv(path)


def held_back(state: State, statuses: Sequence[str] = HELD_BACK_FROM) -> pd.DataFrame:
    """The listings held back because their category is not in the taxonomy.

    A held-back row is a row of a quarantine's ``rejected.csv`` whose only reason is
    ``unknown_category`` (its images and every other check passed).

    Args:
        state: the state folder (manifest, quarantine).
        statuses: manifest statuses of the batches to read (default: partially accepted ones;
            the candidate groups also read batches quarantined whole).

    Returns:
        The canonical columns of ``rejected.csv`` (text; ``image_key`` relative to the batch
        folder ``<state>/staging/<batch_id>``), one row per held-back listing, with
        ``batch_id`` the batch that holds it; sorted by batch id, in file order.
    """
    frames = []
    for batch_id, entry in sorted(read_manifest(state.manifest).items()):
        path = state.quarantine / batch_id / "rejected.csv"
        if entry.get("status") not in statuses or not path.is_file():
            continue
        rows = read_rejected(path)
        frames.append(rows[rows["reasons"] == UNKNOWN_CATEGORY].assign(batch_id=batch_id))
    if not frames:
        return pd.DataFrame(columns=["listing_id", "title", "category_path", "image_key",
                                     "ingested_at", "reasons", "batch_id"])
    return pd.concat(frames, ignore_index=True)


def _utc(values: pd.Series) -> pd.Series:
    """ISO 8601 strings or timestamps (partitions written by other tools) as UTC times; NaT
    where there is none."""
    return pd.to_datetime(values.map(lambda v: None if v is None or v != v else str(v)),
                          utc=True, format="ISO8601", errors="coerce")


def _stored_is_newer(rows: pd.DataFrame, origin: str, latest: pd.DataFrame) -> np.ndarray:
    """For each held-back row of ``origin``: whether the store's latest version of its listing
    is a later version, in the store's own order (:func:`common.batches.version_order`: the
    batch's date, then ``ingested_at``, then the batch id; never a partner's clock).

    Args:
        rows: held-back rows (``listing_id``, ``ingested_at``).
        origin: the batch holding them.
        latest: the store's latest versions (index ``listing_id``; ``batch_id``, ``ingested_at``).

    Returns:
        bool ``(len(rows),)``.
    """
    def key(batch_id: object, ingested_at: pd.Timestamp) -> tuple:  # version_order's keys
        return (date_key(batch_id), ingested_at, str(batch_id))

    stored = latest.reindex(rows["listing_id"])
    oldest = pd.Timestamp.min.tz_localize("UTC")
    stored_at = [oldest if pd.isna(t) else t for t in _utc(stored["ingested_at"])]
    held_at = [oldest if pd.isna(t) else t for t in _utc(rows["ingested_at"])]
    out = [isinstance(batch_id, str) and key(batch_id, at) > key(origin, held)
           for batch_id, at, held in zip(stored["batch_id"], stored_at, held_at, strict=True)]
    return np.array(out, dtype=bool)


def _freeze(folder: Path) -> None:
    read_only = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    for root, _, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), read_only)


def _build_release_batch(state: State, catalog: Catalog, origin: str, ingested_at: str,
                         release: str, ids: set[str]) -> Path:
    """Stages a release batch: the origin's raw rows of ``ids`` and their images.

    The rows are taken from the origin's raw listings file (so validation reads them as it read
    them the first time: same adapter, same checks) and written as JSON Lines under the
    catalog's listings file stem; their images are copied under the same batch-relative keys.
    Built in ``staging/.<release>.partial`` and renamed into place, files read-only, like an
    ingested batch.

    Returns:
        ``<state>/staging/<release>``.
    """
    from validation.adapt import find_listings_file, read_listings_file, to_canonical
    from validation.images import resolve_image

    source = state.staging / origin
    raw = read_listings_file(find_listings_file(source, catalog.listings_file))
    canon = to_canonical(raw, catalog, origin, ingested_at)
    mask = canon["listing_id"].isin(ids).to_numpy()
    final, tmp = state.staging / release, state.staging / f".{release}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lines = [json.dumps(record) for record in raw[mask].to_dict(orient="records")]
    (tmp / f"{Path(catalog.listings_file).stem}.jsonl").write_text("\n".join(lines) + "\n",
                                                                   encoding="utf-8")
    for key in canon.loc[mask, "image_key"]:
        image = resolve_image(source, key) if isinstance(key, str) else None
        if image is not None and image.is_file():  # a missing one is the release's image_missing
            (tmp / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, tmp / key)
    _freeze(tmp)
    if final.exists():  # left by an attempt killed before its manifest entry
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _drop_held(state: State, origin: str, ids: set[str], release: str | None) -> None:
    """Removes listings from an origin's held-back list (``rejected.csv``) and records where
    they went in its ``report.json`` and manifest entry; idempotent."""
    qdir = state.quarantine / origin
    path = qdir / "rejected.csv"
    if path.is_file():
        rows = read_rejected(path)
        keep = rows[~rows["listing_id"].isin(ids)]
        if len(keep) < len(rows):
            if keep.empty:
                path.unlink()
            else:
                write_rejected(path, keep)
    if release is None:
        return
    report_file = qdir / "report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text(encoding="utf-8"))
        if release not in report.setdefault("released_to", []):
            report["released_to"].append(release)
            write_json(report_file, report)
    entry = read_manifest(state.manifest).get(origin) or {}
    if release not in entry.get("released_to", []):
        update_entry(state.manifest, origin, released_to=[*entry.get("released_to", []), release])


def _finish_killed_releases(state: State, manifest: dict[str, dict]) -> None:
    """Completes what a killed release left: rows already released still in their origin's
    held-back list are removed; a release partition with no manifest entry (killed before it
    was recorded) is removed, and the rows are released again."""
    for release, entry in manifest.items():
        if entry.get("status") == RELEASED and entry.get("released_from"):
            tried = set(entry.get("listing_ids") or []) | set(entry.get("superseded") or [])
            _drop_held(state, entry["released_from"], tried, release)
    for name in store_batch_ids(state.listings_store):
        if _RELEASE_ID.match(name) and name not in manifest:
            remove_partition(state.listings_store, name)


def release_held_back(state: State, params: Params, catalog: Catalog,
                      taxonomy: Taxonomy) -> list[tuple[str, dict]]:
    """Releases the held-back listings whose category the taxonomy now has.

    For each partially accepted batch whose quarantine holds rows rejected only as
    ``unknown_category`` with a category now in ``taxonomy.paths`` (added with
    ``python -m validation.taxonomy add``, or declared by the feed's taxonomy file since):

    1. rows whose listing the store already holds in a later version are *superseded*: they
       only leave the held-back list (the later version wins anyway);
    2. the others are staged as a release batch ``<origin>.release-<k>`` (their raw rows and
       images, :func:`_build_release_batch`) and validated whole by
       :func:`validation.validate.validate_batch`: images, the GX suite, duplicates against
       the store, with the origin's ``ingested_at`` (a later update of a listing still wins).
       The bad-row share does not quarantine a release (``max_bad_row_fraction`` 1: each row
       was already judged on its own) and drift never blocks it (a release is one category by
       construction). Accepted rows become the release's own store partition, so versioning,
       the golden set (a new batch's rows: ``ingestion.versioning.update_golden``) and training
       take them like any batch; a row failing now is quarantined under the release id with
       its reason;
    3. the manifest records the release (``status: released``, ``released_from``,
       ``listing_ids``, ``superseded``, ``report``, ``data_rev: null``), then the rows leave
       the origin's ``rejected.csv`` (its ``report.json`` and manifest entry list
       ``released_to``).

    A killed attempt is finished by the next call (:func:`_finish_killed_releases`): a
    recorded release is never redone, an unrecorded one is redone under the same id.

    Args:
        state: the state folder.
        params: the params (``validate``).
        catalog: the catalog adapter.
        taxonomy: the effective taxonomy (:func:`validation.taxonomy.effective_taxonomy`).

    Returns:
        ``[(release id, validation report)]`` of the releases made now, in batch order.
    """
    manifest = read_manifest(state.manifest)
    _finish_killed_releases(state, manifest)
    manifest = read_manifest(state.manifest)
    ready = held_back(state)
    ready = ready[ready["category_path"].isin(taxonomy.paths)]
    if ready.empty:
        return []
    latest = read_index(state.listings_store, ["listing_id", "batch_id", "ingested_at"]).set_index("listing_id")
    release_params = params.validate_.model_copy(update={"max_bad_row_fraction": 1.0, "drift_blocks": False})
    out = []
    for origin, rows in ready.groupby("batch_id", sort=True):
        entry = manifest[origin]
        newer = _stored_is_newer(rows, origin, latest)
        superseded = sorted(rows.loc[newer, "listing_id"])
        ids = sorted(rows.loc[~newer, "listing_id"])
        if not ids:
            _drop_held(state, origin, set(superseded), None)
            logger.info("[validate] %s: %d held-back listing(s) already stored in a later version: "
                        "no longer held back", origin, len(superseded))
            continue
        k = 1 + sum(1 for e in manifest.values() if e.get("released_from") == origin)
        release = release_id(origin, k)
        try:
            folder = _build_release_batch(state, catalog, origin, entry["ingested_at"], release, set(ids))
        except Exception as exc:  # noqa: BLE001 -- one origin's release never stops the others
            if is_disk_full(exc):
                raise
            logger.exception("[validate] %s: its held-back listings cannot be staged for release "
                             "(%s: %s); they stay held back, the next run tries again", origin,
                             type(exc).__name__, exc)
            continue
        report = validate_batch(batch_dir=folder, batch_id=release, ingested_at=entry["ingested_at"],
                                catalog=catalog, taxonomy=taxonomy.paths, params=release_params,
                                store=state.listings_store, quarantine_dir=state.quarantine,
                                gx_dir=state.gx_dir, retired=taxonomy.retired)
        report.released_from = origin
        categories = rows.loc[~newer, "category_path"].value_counts().to_dict()
        update_entry(state.manifest, release, status=RELEASED, released_from=origin,
                     listing_ids=ids, superseded=superseded, categories=categories,
                     ingested_at=entry["ingested_at"], report=report.to_json(), data_rev=None,
                     released_at=datetime.now(UTC).isoformat(timespec="seconds"))
        _drop_held(state, origin, set(ids) | set(superseded), release)
        manifest = read_manifest(state.manifest)
        logger.info("[validate] %s: released %d of %d held-back listing(s) of %s (%s); %d rejected "
                    "now, reasons=%s%s", release, report.accepted_rows, len(ids), origin,
                    ", ".join(f"{c!r}: {n}" for c, n in categories.items()), report.rejected_rows,
                    report.reasons,
                    f", {len(superseded)} superseded by a later version" if superseded else "")
        out.append((release, report))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m validation.staged [--batch ID ...] [--params FILE]``: prints the result as JSON."""
    parser = step_parser("validation.staged", __doc__)
    parser.add_argument("--batch", action="append", default=None,
                        help="validate this staged batch id (repeatable; default: every staged batch)")
    args = parser.parse_args(argv)
    return run_command(lambda: validate_staged_batches(State.from_env(), load_params(args.params), args.batch).to_dict())


if __name__ == "__main__":
    sys.exit(main())
