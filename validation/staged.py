"""The validate step of the DAG: every staged batch through the expectation suite.

Accepted rows join the listings store, bad rows (or whole batches) go to quarantine with
their validation report, and the manifest records the outcome. The step fails only when the
store holds nothing valid to train on.

CLI: ``python -m validation.staged`` (validates what ``python -m ingestion.ingest`` staged).
"""

from __future__ import annotations

import json
import sys

from common.catalog import load_catalog
from common.params import Params, load_params
from common.state import State
from common.store import read_store
from ingestion.manifest import read_manifest, update_entry
from validation.taxonomy import load_taxonomy
from validation.validate import validate_batch


class NothingToTrainError(RuntimeError):
    """No valid listing is left in the store after validation."""


def validate_staged_batches(state: State, params: Params) -> dict:
    """Validates the batches the manifest lists as ``staged``.

    Args:
        state: the state folder (staging, store, quarantine, GX project).
        params: the params (``catalog``, ``validate``).

    Returns:
        ``{"accepted": [...], "partial": [...], "quarantined": [...], "reports": {batch_id:
        report}, "store_listings": n, "data_docs": path or None}``; each report as
        :func:`validation.validate.validate_batch` returns it.

    Raises:
        NothingToTrainError: when the listings store is empty after validation.
    """
    catalog = load_catalog(params.catalog)
    taxonomy = load_taxonomy(state.staging / f"_{catalog.taxonomy.file}")
    manifest = read_manifest(state.manifest)
    outcome: dict = {"accepted": [], "partial": [], "quarantined": [], "reports": {},
                     "data_docs": None}
    for batch_id in sorted(b for b, e in manifest.items() if e.get("status") == "staged"):
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
        update_entry(state.manifest, batch_id, status=report["status"], report=report)
        outcome[report["status"]].append(batch_id)
        outcome["reports"][batch_id] = report
        outcome["data_docs"] = report.get("data_docs")
        print(f"[validate] {batch_id}: {report['status']} ({report['accepted_rows']} accepted, "
              f"{report['rejected_rows']} rejected) reasons={report['reasons']} "
              f"data_docs={report.get('data_docs')}")
    outcome["store_listings"] = len(read_store(state.listings_store))
    if outcome["store_listings"] == 0:
        raise NothingToTrainError(
            "no valid listing to train on: every batch so far was quarantined "
            f"(see {state.quarantine})")
    return outcome


if __name__ == "__main__":
    print(json.dumps(validate_staged_batches(State.from_env(), load_params()), default=str))
    sys.exit(0)
