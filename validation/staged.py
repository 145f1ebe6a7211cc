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

CLI: ``python -m validation.staged [--batch ID ...]`` (default: every batch the manifest lists
as staged, i.e. what ``python -m ingestion.ingest`` staged); prints the result, reports
included, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from common.catalog import load_catalog
from common.params import Params, load_params
from common.results import RefusedBatch, ValidateResult
from common.state import State
from common.store import disk_full_errors, read_store, recover_partitions
from ingestion.manifest import read_manifest, update_entry
from validation.taxonomy import load_taxonomy
from validation.validate import validate_batch

OUTCOMES = ("accepted", "partial", "quarantined")


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
        killed worker) are listed too, with the report the manifest recorded for them.

    Raises:
        KeyError: when a batch id is not in the manifest (ingest never staged it).
        NothingToTrainError: when the listings store is empty after validation.
        common.store.DiskFullError: when the state folder's disk is full; the batch being
            validated stays ``staged`` and nothing of it is left half written.
    """
    catalog = load_catalog(params.catalog)
    taxonomy = load_taxonomy(state.staging / f"_{catalog.taxonomy.file}")
    recover_partitions(state.listings_store)
    manifest = read_manifest(state.manifest)
    if batch_ids is None:
        batch_ids = [b for b, e in manifest.items() if e.get("status") == "staged"]
    unknown = sorted(set(batch_ids) - set(manifest))
    if unknown:
        raise KeyError(f"batch(es) {unknown} are not in the manifest {state.manifest}: ingest never staged them")
    outcome: dict[str, list[str]] = {status: [] for status in OUTCOMES}
    reports: dict[str, dict] = {}
    data_docs = None
    for batch_id, entry in sorted(manifest.items()):  # finished by an attempt that was killed
        if entry.get("status") in OUTCOMES and "data_rev" in entry and entry["data_rev"] is None:
            outcome[entry["status"]].append(batch_id)
            reports[batch_id] = entry.get("report") or {}
            print(f"[validate] {batch_id}: {entry['status']} (validated by an earlier attempt, "
                  "not versioned yet)")
    for item in refused:
        outcome["quarantined"].append(item.batch_id)
        reports[item.batch_id] = (manifest.get(item.batch_id) or {}).get("report") or item.to_dict()
        print(f"[validate] {item.batch_id[:200]!r}: quarantined at ingest ({item.reason}): "
              f"{item.detail} report={item.report}")
    for batch_id in sorted(set(batch_ids)):
        entry = manifest[batch_id]
        if entry.get("status") != "staged":
            if batch_id not in reports:
                print(f"[validate] {batch_id}: already {entry.get('status')} (data_rev "
                      f"{entry.get('data_rev')}), not validated again")
            continue
        with disk_full_errors(state.root, f"validate batch {batch_id}"):
            report = validate_batch(
                batch_dir=state.staging / batch_id,
                batch_id=batch_id,
                ingested_at=entry["ingested_at"],
                catalog=catalog,
                taxonomy=taxonomy,
                params=params.validate_,
                store=state.listings_store,
                quarantine_dir=state.quarantine,
                gx_dir=state.gx_dir,
            )
            # after the partition: a kill before this line leaves the batch staged, retried whole
            update_entry(state.manifest, batch_id, status=report["status"], report=report,
                         data_rev=None)
        outcome[report["status"]].append(batch_id)
        reports[batch_id] = report
        data_docs = report.get("data_docs")
        print(f"[validate] {batch_id}: {report['status']} ({report['accepted_rows']} accepted, "
              f"{report['rejected_rows']} rejected) reasons={report['reasons']} "
              f"data_docs={report.get('data_docs')}")
    store_listings = len(read_store(state.listings_store))
    if store_listings == 0:
        raise NothingToTrainError(
            "no valid listing to train on: every batch so far was quarantined "
            f"(see {state.quarantine})")
    return ValidateResult(
        **{status: sorted(ids) for status, ids in outcome.items()},
        store_listings=store_listings,
        data_docs=data_docs,
        validation_ids={b: r.get("validation_id") for b, r in reports.items()},
        reports=reports,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m validation.staged [--batch ID ...] [--params FILE]``: prints the result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m validation.staged", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", action="append", default=None,
                        help="validate this staged batch id (repeatable; default: every staged batch)")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    result = validate_staged_batches(State.from_env(), load_params(args.params), args.batch)
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
