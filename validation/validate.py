"""The validation step of one batch: read -> adapt -> image checks -> GX checkpoint -> route rows.

Accepted rows go to the listings store (one partition folder per batch: its parquet table and
its images named by SHA-256, see :mod:`common.store`); rejected rows, or the whole batch, go to
``<quarantine>/<batch_id>/`` with a report. The raw batch folder is only read.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from common.catalog import CANONICAL_COLUMNS, Catalog
from common.files import atomic_write, write_json
from common.params import ValidateParams
from common.store import (
    INDEX_COLUMNS,
    batch_file,
    read_store,
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
from validation.images import check_image, resolve_image

BATCH_QUARANTINED = "batch_quarantined"
"""Reason given to otherwise good rows of a batch quarantined whole."""

_IMAGE_THREADS = min(8, os.cpu_count() or 1)


def _check_images(batch_dir: Path, keys: list, params: ValidateParams) -> list[tuple]:
    with ThreadPoolExecutor(max_workers=_IMAGE_THREADS) as pool:
        return list(pool.map(lambda key: check_image(batch_dir, key, params), keys))


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
            batch.append(f"expectation_error: {res['type']}({res['column']}): {res['error']}")
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


def _code(reason: str) -> str:
    return reason.split(":", 1)[0]


def _remove_stale(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def validate_batch(batch_dir: Path, batch_id: str, ingested_at: str, catalog: Catalog,
                   taxonomy: frozenset[str], params: ValidateParams, store: Path,
                   quarantine_dir: Path, gx_dir: Path,
                   retired: frozenset[str] = frozenset()) -> dict:
    """Validates one batch and routes its rows to the store or to quarantine.

    Steps: read the listings file (:func:`~validation.adapt.read_listings_file`), map it to
    canonical listings, check every image (:func:`~validation.images.check_image`, in threads),
    run the ``listings_batch`` GX checkpoint (COMPLETE results, Data Docs updated), then decide:

    - no bad row: ``"accepted"``;
    - bad-row share <= ``params.max_bad_row_fraction`` and at least one good row: ``"partial"``,
      good rows accepted, bad rows quarantined;
    - otherwise, or when the file cannot be read/adapted (:class:`BatchError`) or a table-level
      expectation fails: ``"quarantined"``, the whole batch.

    Accepted rows: the batch's partition folder ``store/batches/<batch_id>/`` is written whole
    by :func:`common.store.write_partition`: images copied to ``images/<sha256><ext>``,
    ``image_key``/``image_sha256`` set accordingly, rows in ``listings.parquet`` (exactly
    ``CANONICAL_COLUMNS``).
    Rejected rows: ``quarantine_dir/<batch_id>/rejected.csv`` (canonical columns with the
    batch-relative ``image_key``, plus ``reasons``, ``"; "``-joined). ``report.json`` next to
    it whenever anything was rejected. All writes are atomic (temp file + ``os.replace``);
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

    Returns:
        A JSON-serialisable report: ``batch_id``, ``status``, ``rows``, ``accepted_rows``,
        ``rejected_rows``, ``bad_row_fraction``, ``reasons`` (reason code -> rows failing it),
        ``batch_reasons`` (why the whole batch was quarantined, if it was), ``failed_expectations``
        (``expectation``, ``column``, ``unexpected_count``, ``reason``; drift excluded),
        ``drift`` (:func:`validation.drift.drift_summary`, the figures GX measured and the Data
        Docs page shows), ``warnings`` (unknown categories, drift over a threshold),
        ``validation_id``, ``data_docs`` (index.html path), ``data_docs_page``, ``store_file``,
        ``rejected_file`` and ``report`` (paths or ``None``), ``retired_rows`` (accepted rows of
        a retired category).
    """
    batch_dir, store, gx_dir = Path(batch_dir), Path(store), Path(gx_dir)
    qdir = Path(quarantine_dir) / batch_id
    report: dict = {
        "batch_id": batch_id, "status": "quarantined", "rows": 0, "accepted_rows": 0,
        "rejected_rows": 0, "bad_row_fraction": None, "reasons": {}, "batch_reasons": [],
        "failed_expectations": [], "validation_id": None, "data_docs": None,
        "data_docs_page": None, "store_file": None, "rejected_file": None, "report": None,
        "warnings": [], "drift": None, "relabels": [], "retired_rows": 0,
    }
    partition = batch_file(store, batch_id)
    try:
        raw = read_listings_file(find_listings_file(batch_dir, catalog.listings_file))
        report["rows"] = len(raw)
        canon = to_canonical(raw, catalog, batch_id, ingested_at).reset_index(drop=True)
        source = source_errors(raw, catalog).reset_index(drop=True)
    except BatchError as exc:
        report.update(rejected_rows=report["rows"], reasons={exc.reason: max(report["rows"], 1)},
                      batch_reasons=[str(exc)])
        remove_partition(store, batch_id)
        _remove_stale(qdir / "rejected.csv")
        return _write_report(report, qdir)

    checks = _check_images(batch_dir, canon["image_key"].tolist(), params)
    store_index = read_store(store, INDEX_COLUMNS, exclude_batches=[batch_id])
    frame = canon.copy()
    frame["image_error"] = pd.Series([c[0] for c in checks], index=frame.index, dtype=object)
    frame["source_error"] = source
    frame["duplicate_image"] = pd.Series(_duplicates(frame, [c[1] for c in checks], store_index),
                                         index=frame.index, dtype=object)
    stored = store_index.set_index("listing_id")  # read_store: one row (the latest) per id
    frame[PREVIOUS_CATEGORY] = frame["listing_id"].map(stored["category_path"]).astype(object)
    frame[PREVIOUS_CATEGORY] = frame[PREVIOUS_CATEGORY].where(frame[PREVIOUS_CATEGORY].notna(), None)

    from validation.checkpoint import ROW, run_checkpoint  # GX is slow to import; only when needed
    from validation.suite import WARNING_REASONS, StoreReference, build_suite

    frame[ROW] = range(len(frame))
    same_catalog = store_index[store_index["catalog"] == catalog.name]
    reference = StoreReference(catalog.name, same_catalog["category_path"].dropna().tolist(),
                               same_catalog["price"].dropna().tolist())
    outcome = run_checkpoint(_bounded(frame, params), build_suite(taxonomy, params, reference,
                                                                 titles=catalog.columns.title is not None),
                             gx_dir, batch_id, ingested_at)
    report.update(validation_id=outcome.validation_id, data_docs=outcome.data_docs,
                  data_docs_page=outcome.data_docs_page)
    drift_results = {r["reason"]: r for r in outcome.results if r["reason"] in WARNING_REASONS}
    row_results = [r for r in outcome.results if r["reason"] not in WARNING_REASONS]
    report["failed_expectations"] = [
        {"expectation": r["type"], "column": r["column"], "unexpected_count": r["unexpected_count"],
         "reason": r["reason"], **({"error": r["error"]} if r["error"] else {})}
        for r in row_results if not r["success"]]
    row_reasons, batch_reasons = _row_reasons(row_results, frame)

    rows = len(frame)
    bad = sorted(row_reasons)
    fraction = len(bad) / rows
    report["relabels"] = _relabels(frame, row_reasons, stored)
    report["warnings"] = _unknown_category_warnings(frame, row_reasons) + _relabel_warnings(report["relabels"])
    retired_warnings, report["retired_rows"] = _retired_category_warnings(frame, row_reasons, retired)
    report["warnings"] += retired_warnings
    report["drift"] = _drift(drift_results, params)
    report["warnings"] += report["drift"]["warnings"]
    report["bad_row_fraction"] = round(fraction, 6)
    report["reasons"] = dict(sorted(Counter(
        _code(r) for reasons in row_reasons.values() for r in dict.fromkeys(reasons)).items()))
    if params.drift_blocks and report["drift"]["warnings"]:
        batch_reasons = [*batch_reasons, *report["drift"]["warnings"]]
    if not bad and not batch_reasons:
        status = "accepted"
    elif not batch_reasons and fraction <= params.max_bad_row_fraction and len(bad) < rows:
        status = "partial"
    else:
        status = "quarantined"
        if not batch_reasons:
            batch_reasons = [f"bad_row_fraction {fraction:.4f} > max_bad_row_fraction "
                             f"{params.max_bad_row_fraction}" if len(bad) < rows
                             else "no_good_rows"]
    report["status"], report["batch_reasons"] = status, batch_reasons

    bad_mask = frame.index.isin(bad)
    if status == "quarantined":
        rejected = frame
        remove_partition(store, batch_id)
    else:
        good = canon[~bad_mask].copy()
        good_checks = [checks[i] for i in range(rows) if not bad_mask[i]]
        # the check passed, so each image resolves to a file inside the batch folder
        images = [(resolve_image(batch_dir, key), sha, ext)
                  for key, (_, sha, ext) in zip(good["image_key"], good_checks, strict=True)]
        write_partition(store, batch_id, good, images)
        report["store_file"] = str(partition)
        report["accepted_rows"] = len(good)
        rejected = frame[bad_mask]

    report["rejected_rows"] = len(rejected)
    if len(rejected) == 0:
        _remove_stale(qdir / "rejected.csv", qdir / "report.json")
        if qdir.is_dir() and not any(qdir.iterdir()):
            qdir.rmdir()
        return report
    out = rejected[list(CANONICAL_COLUMNS)].copy()
    out["reasons"] = ["; ".join(dict.fromkeys(row_reasons.get(i, [BATCH_QUARANTINED])))
                      for i in rejected.index]
    rejected_file = qdir / "rejected.csv"
    # RFC 4180 line ends: pandas quotes a value holding a line-end character only when the
    # terminator has it, so with its "\n" a bare CR in a title split the row in two.
    atomic_write(rejected_file, lambda tmp: out.to_csv(tmp, index=False, lineterminator="\r\n"))
    report["rejected_file"] = str(rejected_file)
    return _write_report(report, qdir)


def _unknown_category_warnings(frame: pd.DataFrame, row_reasons: dict[int, list[str]]) -> list[str]:
    """One warning naming the categories outside the taxonomy: they are held back, never
    trained on as a new class; extend the declared taxonomy to accept them."""
    unknown = Counter(frame.at[i, "category_path"] for i, reasons in row_reasons.items()
                      if "unknown_category" in reasons)
    if not unknown:
        return []
    names = ", ".join(f"{shorten(path, 120)!r} ({n})" for path, n in unknown.most_common(10))
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    return [f"unknown_category: {sum(unknown.values())} row(s) held back, categories not in the "
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


def _write_report(report: dict, qdir: Path) -> dict:
    path = qdir / "report.json"
    report["report"] = str(path)
    write_json(path, report)
    return report
