"""Runs the ``listings_batch`` suite on a DataFrame through a GX 1.x Checkpoint (file context).

All GX objects (data source, asset, batch definition, suite, validation definition, checkpoint)
are created or updated idempotently, so repeated runs and new batches reuse the same project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlparse

import pandas as pd

from validation.data_docs import data_docs_site
from validation.gx_setup import gx

DATASOURCE = "listings"
ASSET = "listings_batch"
BATCH_DEFINITION = "whole_batch"
VALIDATION_DEFINITION = "listings_batch"
CHECKPOINT = "listings_batch"
ROW = "row_number"
"""Column the caller adds (0..n-1): with ``listing_id`` it identifies failing rows in the results
and on the Data Docs page, which then lists the listing id of every failing value."""


@dataclass
class CheckpointOutcome:
    """What the validation step needs from one checkpoint run.

    Attributes:
        success: all expectations met.
        results: per expectation: ``type``, ``column``, ``reason`` (from meta), ``success``,
            ``unexpected_count``, ``unexpected_index_list`` (row numbers of the DataFrame, or
            ``None`` for table-level expectations), ``observed_value`` and ``details`` (of
            aggregate expectations, e.g. the drift measures; else ``None``), ``error``
            (exception message or ``None``).
        validation_id: the GX validation result's identifier, ``<suite>/<run name = batch
            id>/<run time>/<batch identifier>`` (the path of its result in the GX store and of
            its Data Docs page, below ``validations/``).
        data_docs: path of the Data Docs ``index.html``, ``None`` if not built.
        data_docs_page: path of this validation result's Data Docs page, ``None`` if not built.
    """

    success: bool
    results: list[dict] = field(default_factory=list)
    validation_id: str = ""
    data_docs: str | None = None
    data_docs_page: str | None = None


def open_context(gx_dir: Path):
    """The file Data Context rooted at ``gx_dir`` (scaffolded on first use), analytics and
    progress bars off, Data Docs rendered by the escaping views of :mod:`validation.data_docs`.

    A project whose site was configured otherwise (scaffolded before those views) gets their
    configuration, and its existing pages are built again with them.

    Returns:
        A ``FileDataContext``; its config lives in ``<gx_dir>/gx/``.
    """
    context = gx.get_context(mode="file", project_root_dir=str(gx_dir))
    changed = False
    if context.variables.analytics_enabled is not False:
        context.variables.analytics_enabled = False
        changed = True
    bars = context.variables.progress_bars
    if isinstance(bars, dict):  # as read back from great_expectations.yml
        bars = SimpleNamespace(**bars)
    if bars is None or getattr(bars, "globally", True) or getattr(bars, "metric_calculations", True):
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                             metric_calculations=False)
        changed = True
    escaping = context.variables.data_docs_sites != data_docs_site()
    if escaping:
        context.variables.data_docs_sites = data_docs_site()
        changed = True
    if changed:
        context.variables.save()
    if escaping and context.validation_results_store.list_keys():
        # pages built before the escaping views printed feed values raw: build them all again
        import validation.expectations  # noqa: F401  (the stored results use its expectations)

        context.build_data_docs()
    return context


def _batch_definition(context):
    try:
        source = context.data_sources.get(DATASOURCE)
    except (KeyError, ValueError, LookupError):
        source = context.data_sources.add_pandas(name=DATASOURCE)
    try:
        asset = source.get_asset(ASSET)
    except LookupError:
        asset = source.add_dataframe_asset(name=ASSET)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except (KeyError, LookupError):
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def _path_of(url: str | None) -> str | None:
    if not url:
        return None
    parsed = urlparse(url)
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
    return str(path) if path.exists() else None


def _run_time(ingested_at: str | None) -> datetime | None:
    """Keys the GX result by the batch's ingestion time, so re-validating a batch overwrites it."""
    try:
        when = datetime.fromisoformat(str(ingested_at))
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _error_of(result) -> str | None:
    info = result.exception_info or {}
    infos = [info] if "raised_exception" in info else list(info.values())
    for item in infos:
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message") or "expectation raised an exception")
    return None


def _rows(index_list: list | None) -> list[int] | None:
    """``[{"row_number": 3, "listing_id": ...}, ...]`` (or plain labels) -> ``[3, ...]``."""
    if index_list is None:
        return None
    return [int(item[ROW]) if isinstance(item, dict) else int(item) for item in index_list]


def run_checkpoint(frame: pd.DataFrame, suite: gx.ExpectationSuite, gx_dir: Path,
                   run_name: str, ingested_at: str | None = None) -> CheckpointOutcome:
    """Validates ``frame`` against ``suite`` and updates the Data Docs.

    Args:
        frame: the batch, with a ``row_number`` column (``0..n-1``) and a ``listing_id`` column;
            ``unexpected_index_list`` in the outcome holds row numbers.
        suite: the suite to run (saved/updated in the project under its name).
        gx_dir: GX project root; the context, results and Data Docs live below it.
        run_name: the GX run name (the batch id).
        ingested_at: ISO time used as the run time (stable across re-validations).

    Returns:
        The outcome, with every expectation's result at ``COMPLETE`` detail.
    """
    context = open_context(Path(gx_dir))
    batch_definition = _batch_definition(context)
    suite = context.suites.add_or_update(suite)
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=VALIDATION_DEFINITION, data=batch_definition, suite=suite))
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name=CHECKPOINT,
        validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
        result_format={"result_format": "COMPLETE",
                       "unexpected_index_column_names": [ROW, "listing_id"]},
    ))
    run_id = gx.RunIdentifier(run_name=run_name, run_time=_run_time(ingested_at))
    result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)

    outcome = CheckpointOutcome(success=bool(result.success))
    (key, validation), = result.run_results.items()
    # the result's own key (suite / run name / run time / batch), unique per batch and run; the
    # result meta's "validation_id" names the validation definition, the same for every batch
    outcome.validation_id = "/".join(str(part) for part in key.to_tuple())
    for res in validation.results:
        config = res.expectation_config
        detail = res.result or {}
        outcome.results.append({
            "type": config.type,
            "column": config.kwargs.get("column"),
            "reason": (config.meta or {}).get("reason", config.type),
            "success": bool(res.success),
            "unexpected_count": detail.get("unexpected_count"),
            "unexpected_index_list": _rows(detail.get("unexpected_index_list")),
            "observed_value": detail.get("observed_value"),
            "details": detail.get("details"),
            "error": _error_of(res),
        })
    sites = context.get_docs_sites_urls()
    outcome.data_docs = _path_of(sites[0]["site_url"]) if sites else None
    pages = context.get_docs_sites_urls(resource_identifier=key)
    outcome.data_docs_page = _path_of(pages[0]["site_url"]) if pages else None
    return outcome
