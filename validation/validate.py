"""The validation step of one batch: read -> adapt -> image checks -> GX checkpoint -> route rows.

Accepted rows go to the listings store (one partition folder per batch: its parquet table and
its images named by SHA-256, see :mod:`common.store`); rejected rows, or the whole batch, go to
``<quarantine>/<batch_id>/`` with a report. The raw batch folder is only read.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.catalog import CANONICAL_COLUMNS, Catalog
from common.csv_safe import neutralise_cell, to_safe_csv
from common.files import atomic_write, write_json
from common.params import ValidateParams
from common.results import BatchReport, ValidationFailure
from common.store import (
    INDEX_COLUMNS,
    batch_file,
    is_disk_full,
    read_index,
    remove_partition,
    write_partition,
)
from validation.adapt import (
    MALFORMED_ROW,
    find_listings_file,
    read_listings_file,
    source_errors,
    to_canonical,
)
from validation.drift import LABEL_DRIFT, PRICE_DRIFT, drift_summary
from validation.errors import (
    DETAIL_COLUMNS,
    PREVIOUS_CATEGORY,
    REPORT_VALUE_CHARS,
    BatchError,
    shorten,
)
from validation.image_shards import load_image_checks
from validation.images import check_image, resolve_image
from validation.reasons import (
    BAD_ROW_FRACTION,
    BATCH_QUARANTINED,
    EXPECTATION_ERROR,
    NO_GOOD_ROWS,
    UNKNOWN_CATEGORY,
    VALIDATION_ERROR,
    code_of,
)

logger = logging.getLogger(__name__)

_IMAGE_THREADS = min(8, os.cpu_count() or 1)


def check_images(batch_dir: Path, keys: list, params: ValidateParams) -> list[tuple]:
    """:func:`validation.images.check_image` of each key, in threads, in the keys' order."""
    with ThreadPoolExecutor(max_workers=_IMAGE_THREADS) as pool:
        return list(pool.map(lambda key: check_image(batch_dir, key, params), keys))


def image_keys(batch_dir: Path, catalog: Catalog, batch_id: str, ingested_at: str) -> tuple[Path, list]:
    """A staged batch's listings file and each row's ``image_key``, as :func:`validate_batch`
    parses them (the image shards of ``validation.image_shards`` are cut along these rows).

    Raises:
        BatchError, OSError: when the file cannot be found, read or adapted.
    """
    path = find_listings_file(batch_dir, catalog.listings_file)
    return path, _parse(read_listings_file(path), catalog, batch_id, ingested_at).canon["image_key"].tolist()


def _duplicates(frame: pd.DataFrame, shas: list[str | None], store_index: pd.DataFrame) -> list:
    """``duplicate_image`` reason per row, or ``None``.

    A row's image is a duplicate when its SHA-256 is held by another listing id: by the latest
    version of a listing in the store (``store_index``), or by an earlier row of this batch. The
    same id re-sending its image is an update, not a duplicate. Identical images under different
    ids leak between the training split and the golden test set, so the later one is held back.
    """
    owner: dict[str, tuple[str, str]] = {}
    for sha, listing_id, batch in zip(store_index["image_sha256"], store_index["listing_id"],
                                      store_index["batch_id"], strict=True):
        if sha:
            owner.setdefault(sha, (listing_id, f"batch {batch}"))
    out: list[str | None] = []
    for sha, listing_id in zip(shas, frame["listing_id"], strict=True):
        held = owner.get(sha) if sha else None
        if held is not None and held[0] != listing_id:
            out.append(f"duplicate_image: same image as listing {held[0]} ({held[1]})")
            continue
        out.append(None)
        if sha and listing_id is not None:
            owner.setdefault(sha, (listing_id, "this batch"))
    return out


def _row_reasons(results: list[dict], frame: pd.DataFrame) -> tuple[dict[int, list[str]], list[str]]:
    """Per-row reasons from the failed expectations, and batch-level failures.

    Args:
        results: :class:`validation.checkpoint.CheckpointOutcome` results, drift ones excluded.
        frame: the validated frame (its detail columns hold the image/source reasons).
    """
    rows: dict[int, list[str]] = {}
    batch: list[str] = []
    for res in results:
        if res["success"]:
            continue
        if res["error"]:
            batch.append(f"{EXPECTATION_ERROR}: {res['type']}({res['column']}): {res['error']}")
            continue
        indexes = res["unexpected_index_list"]
        if res["type"] == "expect_column_to_exist" or indexes is None:
            batch.append(f"{res['reason']}: {res['column'] or res['type']}")
            continue
        for idx in indexes:
            reasons = [res["reason"]]
            if res["column"] in DETAIL_COLUMNS:  # the check's own reasons say more
                reasons = (frame.at[idx, res["column"]] or res["reason"]).split("; ")
            rows.setdefault(int(idx), []).extend(reasons)
    for idx, reasons in rows.items():  # an unreadable record fails every check: say why once
        malformed = [r for r in reasons if r.startswith(MALFORMED_ROW)]
        if malformed:
            rows[idx] = malformed
    return rows, batch


def _drift(results: dict[str, dict], params: ValidateParams) -> dict:
    """The report's ``drift`` section from the drift expectations' GX results.

    A measure counts only when GX measured it (``details.measured``); an expectation that raised
    is a warning (``<reason>: not measured, <error>``), never a rejection.
    """
    measures, extra = {}, []
    for reason in (LABEL_DRIFT, PRICE_DRIFT):
        res = results.get(reason) or {}
        details = res.get("details") or {}
        measures[reason] = res.get("observed_value") if details.get("measured") else None
        if res.get("error"):
            extra.append(f"{reason}: not measured, the expectation raised: {res['error']}")
    label = (results.get(LABEL_DRIFT) or {}).get("details") or {}
    summary = drift_summary(measures[LABEL_DRIFT], measures[PRICE_DRIFT],
                            int(label.get("batch_rows", 0)), int(label.get("store_rows", 0)), params)
    summary["warnings"] += extra
    return summary


def _remove_stale(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


@dataclass
class _Read:
    """A batch's listings file read and mapped: the raw table, the canonical listings and the
    per-row source errors (same row order)."""

    raw: pd.DataFrame
    canon: pd.DataFrame
    source: pd.Series


@dataclass
class _Checked:
    """The canonical listings with the detail columns the suite checks, and what the store holds."""

    frame: pd.DataFrame
    checks: list[tuple]
    store_index: pd.DataFrame
    stored: pd.DataFrame


@dataclass
class _Routed:
    """The decision on a batch: its status, the rejected row indexes and their reasons."""

    status: str
    bad: list[int]
    row_reasons: dict[int, list[str]]


STAGES = ("read", "parse", "images", "gx", "drift", "route", "store", "data_docs")
"""The steps of :func:`validate_batch`, in order; a report's ``error.stage`` names one."""


def validate_batch(batch_dir: Path, batch_id: str, ingested_at: str, catalog: Catalog,
                   taxonomy: frozenset[str], params: ValidateParams, store: Path,
                   quarantine_dir: Path, gx_dir: Path,
                   retired: frozenset[str] = frozenset(), image_checks: Path | None = None) -> BatchReport:
    """Validates one batch and routes its rows to the store or to quarantine.

    Steps (:data:`STAGES`): read the listings file (:func:`~validation.adapt.read_listings_file`)
    and map it to canonical listings (:func:`_parse`), check every image
    (:func:`~validation.images.check_image`, in threads) and duplicates against the store
    (:func:`_check`), run the ``listings_batch`` GX checkpoint (COMPLETE results, Data Docs
    updated) and read its drift measures, then decide (:func:`_route`):

    - no bad row: ``"accepted"``;
    - bad-row share <= ``params.max_bad_row_fraction`` and at least one good row: ``"partial"``,
      good rows accepted, bad rows quarantined;
    - otherwise, or when the file cannot be read/adapted (:class:`BatchError`) or a table-level
      expectation fails: ``"quarantined"``, the whole batch.

    Exception barrier: any other exception raised by any step (a ``RecursionError`` from a
    poison record, a bug, a library error) quarantines the batch with reason
    ``validation_error`` (its stage, type and message in the report's ``error``, the traceback
    in the log) and leaves the store as it was before the batch (its partition removed, if a
    step had written it); the caller goes on with the next batch. Only a full disk
    (:func:`common.store.is_disk_full`) and what is not an ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``) propagate: they are not the batch's fault, and it stays staged.

    Accepted rows: the batch's partition folder ``store/batches/<batch_id>/`` is written whole
    by :func:`common.store.write_partition`: images copied to ``images/<sha256><ext>``,
    ``image_key``/``image_sha256`` set accordingly, rows in ``listings.parquet`` (exactly
    ``CANONICAL_COLUMNS``).
    Rejected rows: ``quarantine_dir/<batch_id>/rejected.csv`` (canonical columns with the
    batch-relative ``image_key``, plus ``reasons``, ``"; "``-joined; cells neutralised against
    spreadsheet formulas, :mod:`common.csv_safe`). ``report.json`` next to it whenever anything
    was rejected, with the raw values. All writes are atomic (temp file + ``os.replace``);
    re-validating a batch replaces its outputs and removes stale ones (a store partition of a
    now-quarantined batch, a quarantine report of a now-accepted batch). ``batch_dir`` is only
    read; nothing is written outside ``store``, ``quarantine_dir`` and ``gx_dir``.

    Args:
        batch_dir: the raw batch folder (listings file + ``images/``).
        batch_id: id of the batch; names the store partition and the quarantine folder.
        ingested_at: ISO 8601 ingestion time, copied to every row (and the GX run time).
        catalog: the catalog adapter.
        taxonomy: valid category paths (:func:`validation.taxonomy.load_taxonomy`).
        params: the ``validate`` group of ``params.yaml``.
        store: the listings store (``data/listings``).
        quarantine_dir: the quarantine root.
        gx_dir: the GX project root.
        retired: retired category paths (:func:`validation.taxonomy.effective_taxonomy`): their
            rows are accepted but flagged (a ``retired_category`` warning, ``retired_rows``).
        image_checks: the batch's shard results folder (``validation.image_shards.checks_dir``):
            the image checks found there for this listings file and these params are used, the
            other rows are checked here. None: every image is checked here.

    Returns:
        The batch's :class:`common.results.BatchReport`.

    Raises:
        OSError: a full disk (the batch stays as it was; see :func:`common.store.disk_full_errors`).
    """
    batch_dir, store, gx_dir = Path(batch_dir), Path(store), Path(gx_dir)
    qdir = Path(quarantine_dir) / batch_id
    report = BatchReport(batch_id=batch_id)
    stage = STAGES[0]
    try:
        try:
            listings_file = find_listings_file(batch_dir, catalog.listings_file)
            raw = read_listings_file(listings_file)
            report.rows = len(raw)
            stage = "parse"
            read = _parse(raw, catalog, batch_id, ingested_at)
        except BatchError as exc:
            report.rejected_rows = report.rows
            report.reasons = {exc.reason: max(report.rows, 1)}
            report.batch_reasons = [str(exc)]
            remove_partition(store, batch_id)
            _remove_stale(qdir / "rejected.csv")
            return _write_report(report, qdir)
        stage = "images"
        checked = _check(batch_dir, batch_id, read, params, store, image_checks, listings_file)
        stage = "gx"
        outcome = _run_gx(checked, catalog, taxonomy, params, gx_dir, batch_id, ingested_at, report)
        stage = "drift"
        from validation.suite import WARNING_REASONS  # GX is slow to import; only when needed

        drift_results = {r["reason"]: r for r in outcome.results if r["reason"] in WARNING_REASONS}
        report.drift = _drift(drift_results, params)
        stage = "route"
        row_results = [r for r in outcome.results if r["reason"] not in WARNING_REASONS]
        routed = _route(checked, row_results, params, retired, report)
        stage = "store"
        report = _write(batch_dir, batch_id, read, checked, routed, store, qdir, report)
        stage = "data_docs"
        from validation.data_docs import record_decision  # GX is slow to import; only when needed

        record_decision(gx_dir, report)  # the Data Docs show this decision, not GX's "Failed"
        return report
    except Exception as exc:  # noqa: BLE001 -- the barrier: one poison batch never stops the feed
        if is_disk_full(exc):
            raise
        failed = _quarantine_error(exc, stage, batch_id, store, qdir, report)
        _record_failed_decision(gx_dir, failed)
        return failed


def _record_failed_decision(gx_dir: Path, report: BatchReport) -> None:
    """Shows a batch quarantined by the barrier as quarantined in Data Docs when GX had already
    validated it; a failure here is logged, never raised (the batch is already quarantined)."""
    if report.validation_id is None:
        return
    try:
        from validation.data_docs import record_decision

        record_decision(gx_dir, report)
    except Exception:  # noqa: BLE001 -- the report and the quarantine are what count
        logger.exception("batch %s: its Data Docs page could not be marked quarantined", report.batch_id)


def _quarantine_error(exc: Exception, stage: str, batch_id: str, store: Path, qdir: Path,
                      report: BatchReport) -> BatchReport:
    """Quarantines a batch whose validation raised: reason ``validation_error``, the store
    without its partition, the traceback in the log (see :func:`validate_batch`)."""
    message = shorten(str(exc) or repr(exc))
    logger.error("batch %s: validation raised %s during %s; the batch is quarantined "
                 "(validation_error), the other batches go on", batch_id, type(exc).__name__, stage,
                 exc_info=(type(exc), exc, exc.__traceback__))
    remove_partition(store, batch_id)
    _remove_stale(qdir / "rejected.csv")
    failed = BatchReport(
        batch_id=batch_id, status="quarantined", rows=report.rows, rejected_rows=report.rows,
        reasons={VALIDATION_ERROR: max(report.rows, 1)},
        batch_reasons=[f"{VALIDATION_ERROR}: {type(exc).__name__} while validating ({stage}): {message}"],
        validation_id=report.validation_id, data_docs=report.data_docs,
        data_docs_page=report.data_docs_page,
        error=ValidationFailure(stage=stage, type=type(exc).__name__, message=message))
    return _write_report(failed, qdir)


def _parse(raw: pd.DataFrame, catalog: Catalog, batch_id: str, ingested_at: str) -> _Read:
    """Maps the raw listings to canonical listings and their per-row source errors.

    Raises:
        BatchError: the table cannot be adapted (the whole batch is quarantined).
    """
    canon = to_canonical(raw, catalog, batch_id, ingested_at).reset_index(drop=True)
    source = source_errors(raw, catalog).reset_index(drop=True)
    return _Read(raw, canon, source)


def _check(batch_dir: Path, batch_id: str, read: _Read, params: ValidateParams,
           store: Path, image_checks: Path | None = None, listings_file: Path | None = None) -> _Checked:
    """Checks every image (in threads) and adds the columns the suite checks: ``image_error``,
    ``source_error``, ``duplicate_image`` (against the store's latest versions) and
    ``previous_category`` (the stored category of a listing seen before)."""
    keys = read.canon["image_key"].tolist()
    done = load_image_checks(image_checks, listings_file, keys, params) if listings_file else {}
    todo = [i for i in range(len(keys)) if i not in done]
    done.update(zip(todo, check_images(batch_dir, [keys[i] for i in todo], params), strict=True))
    checks = [done[i] for i in range(len(keys))]
    if image_checks is not None:
        logger.info("batch %s: %d image checks from its shards, %d checked here", batch_id,
                    len(keys) - len(todo), len(todo))
    store_index = read_index(store, INDEX_COLUMNS, exclude_batches=[batch_id])  # one file, not every partition
    frame = read.canon.copy()
    frame["image_error"] = pd.Series([c[0] for c in checks], index=frame.index, dtype=object)
    frame["source_error"] = read.source
    frame["duplicate_image"] = pd.Series(_duplicates(frame, [c[1] for c in checks], store_index),
                                         index=frame.index, dtype=object)
    stored = store_index.set_index("listing_id")  # read_index: one row (the latest) per id
    frame[PREVIOUS_CATEGORY] = frame["listing_id"].map(stored["category_path"]).astype(object)
    frame[PREVIOUS_CATEGORY] = frame[PREVIOUS_CATEGORY].where(frame[PREVIOUS_CATEGORY].notna(), None)
    return _Checked(frame, checks, store_index, stored)


def _run_gx(checked: _Checked, catalog: Catalog, taxonomy: frozenset[str], params: ValidateParams,
            gx_dir: Path, batch_id: str, ingested_at: str, report: BatchReport):
    """Runs the ``listings_batch`` checkpoint on the checked frame (Data Docs updated); sets the
    report's GX ids and pages. Returns the :class:`validation.checkpoint.CheckpointOutcome`."""
    from validation.checkpoint import ROW, run_checkpoint  # GX is slow to import; only when needed
    from validation.suite import StoreReference, build_suite

    frame, store_index = checked.frame, checked.store_index
    frame[ROW] = range(len(frame))
    same_catalog = store_index[store_index["catalog"] == catalog.name]
    reference = StoreReference(catalog.name, same_catalog["category_path"].dropna().tolist(),
                               same_catalog["price"].dropna().tolist())
    suite = build_suite(taxonomy, params, reference, titles=catalog.columns.title is not None)
    outcome = run_checkpoint(_bounded(frame, params), suite, gx_dir, batch_id, ingested_at)
    report.validation_id = outcome.validation_id
    report.data_docs, report.data_docs_page = outcome.data_docs, outcome.data_docs_page
    return outcome


def _route(checked: _Checked, row_results: list[dict], params: ValidateParams,
           retired: frozenset[str], report: BatchReport) -> _Routed:
    """Decides the batch's status from the row expectations' results and the drift summary
    (already in ``report.drift``); fills the report's counts, reasons and warnings."""
    frame = checked.frame
    report.failed_expectations = [
        {"expectation": r["type"], "column": r["column"], "unexpected_count": r["unexpected_count"],
         "reason": r["reason"], **({"error": r["error"]} if r["error"] else {})}
        for r in row_results if not r["success"]]
    row_reasons, batch_reasons = _row_reasons(row_results, frame)
    rows = len(frame)
    bad = sorted(row_reasons)
    fraction = len(bad) / rows
    report.relabels = _relabels(frame, row_reasons, checked.stored)
    report.warnings = _unknown_category_warnings(frame, row_reasons) + _relabel_warnings(report.relabels)
    retired_warnings, report.retired_rows = _retired_category_warnings(frame, row_reasons, retired)
    report.warnings += retired_warnings
    report.warnings += report.drift["warnings"]
    report.bad_row_fraction = round(fraction, 6)
    report.reasons = dict(sorted(Counter(
        code_of(r) for reasons in row_reasons.values() for r in dict.fromkeys(reasons)).items()))
    if params.drift_blocks and report.drift["warnings"]:
        batch_reasons = [*batch_reasons, *report.drift["warnings"]]
    if not bad and not batch_reasons:
        status = "accepted"
    elif not batch_reasons and fraction <= params.max_bad_row_fraction and len(bad) < rows:
        status = "partial"
    else:
        status = "quarantined"
        if not batch_reasons:
            batch_reasons = [f"{BAD_ROW_FRACTION}: {fraction:.4f} > max_bad_row_fraction "
                             f"{params.max_bad_row_fraction}" if len(bad) < rows
                             else NO_GOOD_ROWS]
    report.status, report.batch_reasons = status, batch_reasons
    return _Routed(status, bad, row_reasons)


def _write(batch_dir: Path, batch_id: str, read: _Read, checked: _Checked, routed: _Routed,
           store: Path, qdir: Path, report: BatchReport) -> BatchReport:
    """Writes the outcome: the store partition (good rows and their images), ``rejected.csv``
    and ``report.json``; removes the outputs a previous validation of the batch left."""
    frame, rows = checked.frame, len(checked.frame)
    bad_mask = frame.index.isin(routed.bad)
    if routed.status == "quarantined":
        rejected = frame
        remove_partition(store, batch_id)
    else:
        good = read.canon[~bad_mask].copy()
        good_checks = [checked.checks[i] for i in range(rows) if not bad_mask[i]]
        # the check passed, so each image resolves to a file inside the batch folder
        images = [(resolve_image(batch_dir, key), sha, ext)
                  for key, (_, sha, ext) in zip(good["image_key"], good_checks, strict=True)]
        write_partition(store, batch_id, good, images)
        report.store_file = str(batch_file(store, batch_id))
        report.accepted_rows = len(good)
        rejected = frame[bad_mask]

    report.rejected_rows = len(rejected)
    if len(rejected) == 0:
        _remove_stale(qdir / "rejected.csv", qdir / "report.json")
        if qdir.is_dir() and not any(qdir.iterdir()):
            qdir.rmdir()
        return report
    out = rejected[list(CANONICAL_COLUMNS)].copy()
    out["reasons"] = ["; ".join(dict.fromkeys(routed.row_reasons.get(i, [BATCH_QUARANTINED])))
                      for i in rejected.index]
    rejected_file = qdir / "rejected.csv"
    write_rejected(rejected_file, out)
    report.neutralised_cells = _neutralised(out)
    report.rejected_file = str(rejected_file)
    return _write_report(report, qdir)


def _neutralised(rows: pd.DataFrame) -> list[dict]:
    """The text cells :func:`write_rejected` writes neutralised, with their raw values."""
    out = []
    for column in rows.columns:
        if rows[column].dtype != object:
            continue
        for i, (listing_id, value) in enumerate(zip(rows["listing_id"], rows[column], strict=True)):
            if isinstance(value, str) and neutralise_cell(value) != value:
                out.append({"row": i, "listing_id": listing_id, "column": column, "value": value})
    return out


def write_rejected(path: Path, rows: pd.DataFrame) -> Path:
    """Writes a quarantine's ``rejected.csv``, safe to open in a spreadsheet.

    Text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``,
    ``@``, tab or CR) get a leading ``'`` (OWASP's CSV-injection rule, :mod:`common.csv_safe`);
    :func:`validation.staged.read_rejected` restores them exactly, and the batch's
    ``report.json`` and the raw batch keep the values as they came. RFC 4180 line ends: pandas
    quotes a value holding a line-end character only when the terminator has it, so with its
    ``"\\n"`` a bare CR in a title split the row in two.
    """
    return atomic_write(path, lambda tmp: to_safe_csv(rows, tmp))


def _unknown_category_warnings(frame: pd.DataFrame, row_reasons: dict[int, list[str]]) -> list[str]:
    """One warning naming the categories outside the taxonomy: they are held back, never
    trained on as a new class; extend the declared taxonomy to accept them."""
    unknown = Counter(frame.at[i, "category_path"] for i, reasons in row_reasons.items()
                      if UNKNOWN_CATEGORY in reasons)
    if not unknown:
        return []
    names = ", ".join(f"{shorten(path, 120)!r} ({n})" for path, n in unknown.most_common(10))
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    return [f"{UNKNOWN_CATEGORY}: {sum(unknown.values())} row(s) held back, categories not in the "
            f"declared taxonomy: {names}{more}"]


def _retired_category_warnings(frame: pd.DataFrame, row_reasons: dict[int, list[str]],
                               retired: frozenset[str]) -> tuple[list[str], int]:
    """One warning naming the retired categories of accepted rows, and their row count.

    A retired category stays valid (its listings are accepted and kept in the store) but is
    no longer trained on (``training.prepare`` leaves it out), so a new listing of it is
    flagged rather than rejected.
    """
    if not retired:
        return [], 0
    found = Counter(path for i, path in enumerate(frame["category_path"])
                    if i not in row_reasons and path in retired)
    if not found:
        return [], 0
    names = ", ".join(f"{shorten(path, 120)!r} ({n})" for path, n in found.most_common(10))
    rows = sum(found.values())
    return [f"retired_category: {rows} accepted row(s) of retired categories, kept in the store "
            f"but not trained on: {names}"], rows


def _relabels(frame: pd.DataFrame, row_reasons: dict[int, list[str]],
              stored: pd.DataFrame) -> list[dict]:
    """The accepted rows whose category differs from their listing's stored version.

    Args:
        frame: the validated frame (``previous_category`` filled from the store).
        row_reasons: the rejected rows (they update nothing).
        stored: the store's latest version per listing id (index ``listing_id``).

    Returns:
        ``[{"listing_id", "previous_category", "category_path", "previous_batch"}]`` in row
        order, values cut to :data:`~validation.errors.REPORT_VALUE_CHARS`.
    """
    out = []
    for i, (listing_id, before, now) in enumerate(zip(
            frame["listing_id"], frame[PREVIOUS_CATEGORY], frame["category_path"], strict=True)):
        if i in row_reasons or before is None or now is None or before == now:
            continue
        out.append({"listing_id": shorten(listing_id), "previous_category": shorten(before),
                    "category_path": shorten(now),
                    "previous_batch": str(stored.at[listing_id, "batch_id"])})
    return out


def _relabel_warnings(relabels: list[dict]) -> list[str]:
    """One warning naming the relabelled listings (the first 20 in the text; all in
    ``report["relabels"]`` and on the Data Docs page)."""
    if not relabels:
        return []
    shown = "; ".join(f"{r['listing_id']}: {r['previous_category']!r} -> {r['category_path']!r} "
                      f"(was batch {r['previous_batch']})" for r in relabels[:20])
    more = f"; and {len(relabels) - 20} more" if len(relabels) > 20 else ""
    return [f"relabel: {len(relabels)} listing(s) arrive again with another category; the latest "
            f"version wins, but a label flip is also the commonest labelling error: check "
            f"them: {shown}{more}"]


def _bounded(frame: pd.DataFrame, params: ValidateParams) -> pd.DataFrame:
    """The frame GX validates, text cut so that its results and Data Docs stay small.

    Values longer than ``max(REPORT_VALUE_CHARS, title_max_length + 1)`` characters are cut to
    that length: every check still decides the same way (a cut value is still too long, and no
    taxonomy path or currency code is that long), but a 1,000,000-character title no longer
    fills the GX result JSON and the Data Docs page.
    """
    limit = max(REPORT_VALUE_CHARS, params.title_max_length + 1)
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = [v[:limit] if isinstance(v, str) and len(v) > limit else v for v in out[col]]
    return out


def _write_report(report: BatchReport, qdir: Path) -> BatchReport:
    path = qdir / "report.json"
    report.report = str(path)
    write_json(path, report.to_json())
    return report
