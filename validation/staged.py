"""The validate step of the DAG: every staged batch through the expectation suite.

Accepted rows join the listings store, bad rows (or whole batches) go to quarantine with
their validation report, and the manifest records the outcome. The step fails only when the
store holds nothing valid to train on.

A retry after a killed attempt is safe: a batch is recorded in the manifest only after its
partition (or quarantine report) is in place, so a batch the killed attempt was working on is
still ``staged`` and is validated again, whole; what the killed writer left in the store is
recovered first (:func:`common.store.recover_partitions`). Batches the killed attempt finished
are not validated again, but the retry still reports them (their manifest entry's ``data_rev``
is null until the version step records the revision holding them), so the version step and
the model's lineage get every batch of the run exactly once.

CLI: ``python -m validation.staged`` (validates what ``python -m ingestion.ingest`` staged).
"""

from __future__ import annotations

import json
import sys

from common.catalog import load_catalog
from common.params import Params, load_params
from common.state import State
from common.store import disk_full_errors, read_store, recover_partitions
from ingestion.manifest import read_manifest, update_entry
from validation.taxonomy import load_taxonomy
from validation.validate import validate_batch

OUTCOMES = ("accepted", "partial", "quarantined")


class NothingToTrainError(RuntimeError):
    """No valid listing is left in the store after validation."""


def validate_staged_batches(state: State, params: Params, refused: list[dict] | None = None) -> dict:
    """Validates the batches the manifest lists as ``staged``.

    Args:
        state: the state folder (staging, store, quarantine, GX project).
        params: the params (``catalog``, ``validate``).

    Args:
        state: the state folder (staging, store, quarantine, GX project).
        params: the params (``catalog``, ``validate``).
        refused: the batches ingest refused in this run (``ingest_new_batches``'
            ``refused``): listed among the quarantined ones, with their report, so that the
            run's result and log name them.

    Returns:
        ``{"accepted": [...], "partial": [...], "quarantined": [...], "reports": {batch_id:
        report}, "store_listings": n, "data_docs": path or None}``; each report as
        :func:`validation.validate.validate_batch` returns it. Batches validated by an earlier
        attempt that did not reach the version step (a killed worker) are listed too, with
        the report the manifest recorded for them.

    Raises:
        NothingToTrainError: when the listings store is empty after validation.
        common.store.DiskFullError: when the state folder's disk is full; the batch being
            validated stays ``staged`` and nothing of it is left half written.
    """
    catalog = load_catalog(params.catalog)
    taxonomy = load_taxonomy(state.staging / f"_{catalog.taxonomy.file}")
    recover_partitions(state.listings_store)
    manifest = read_manifest(state.manifest)
    outcome: dict = {"accepted": [], "partial": [], "quarantined": [], "reports": {},
                     "data_docs": None}
    for batch_id, entry in sorted(manifest.items()):  # finished by an attempt that was killed
        if entry.get("status") in OUTCOMES and "data_rev" in entry and entry["data_rev"] is None:
            outcome[entry["status"]].append(batch_id)
            outcome["reports"][batch_id] = entry.get("report") or {}
            print(f"[validate] {batch_id}: {entry['status']} (validated by an earlier attempt, "
                  "not versioned yet)")
    for item in refused or []:
        batch_id = item["batch_id"]
        outcome["quarantined"].append(batch_id)
        outcome["reports"][batch_id] = (manifest.get(batch_id) or {}).get("report") or dict(item)
        print(f"[validate] {batch_id[:200]!r}: quarantined at ingest ({item['reason']}): "
              f"{item.get('detail', '')} report={item.get('report')}")
    for batch_id in sorted(b for b, e in manifest.items() if e.get("status") == "staged"):
        with disk_full_errors(state.root, f"validate batch {batch_id}"):
            report = validate_batch(
                batch_dir=state.staging / batch_id,
                batch_id=batch_id,
                ingested_at=manifest[batch_id]["ingested_at"],
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
        outcome["reports"][batch_id] = report
        outcome["data_docs"] = report.get("data_docs")
        print(f"[validate] {batch_id}: {report['status']} ({report['accepted_rows']} accepted, "
              f"{report['rejected_rows']} rejected) reasons={report['reasons']} "
              f"data_docs={report.get('data_docs')}")
    for status in OUTCOMES:
        outcome[status].sort()
    outcome["store_listings"] = len(read_store(state.listings_store))
    if outcome["store_listings"] == 0:
        raise NothingToTrainError(
            "no valid listing to train on: every batch so far was quarantined "
            f"(see {state.quarantine})")
    return outcome


if __name__ == "__main__":
    print(json.dumps(validate_staged_batches(State.from_env(), load_params()), default=str))
    sys.exit(0)
