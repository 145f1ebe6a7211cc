"""Whether a weekly run retrains: a week with nothing new costs nothing.

A run retrains (``dvc repro``, register, gate, promote) only when it has something to learn from:

- listings were accepted into the store by this run (new batches, or a release of held-back
  listings after a taxonomy change);
- or the trigger form asked for it (``retrain``: a params change, a retired category, a new
  encoder...);
- or the model was never registered (the first run, or every earlier training failed).

Otherwise the run stops after versioning (the DAG's ``retrain_decision`` branch skips the
training tasks) and says why in the task log and in its XCom, which the season table reads.
Without this, a scheduled run with an empty feed still ran ``dvc repro``, and retrained the whole
store whenever the code or params had changed since the last run.
"""

from __future__ import annotations

import logging

from common.params import Params
from common.results import BatchReport, DataVersionResult, StepResult, ValidateResult
from common.state import State

logger = logging.getLogger(__name__)


class RetrainDecision(StepResult):
    """``retrain_decision``'s result.

    Attributes:
        retrain: whether this run trains, registers and gates a model.
        reason: why, in words (the task log and the season table show it).
        new_listings: listings accepted into the store by this run (released ones included).
        data_rev: the data revision the decision is about.
    """

    retrain: bool
    reason: str
    new_listings: int
    data_rev: str


def decide_retrain(state: State, params: Params, validated: ValidateResult, data: DataVersionResult,
                   requested: bool = False) -> RetrainDecision:
    """Decides whether this run retrains (see the module doc).

    Args:
        state: the state folder (its model registry).
        params: the run's params (``registry.model_name``).
        validated: the validate step's result (the batches stored, the release batches).
        data: the version step's result.
        requested: the trigger form's ``retrain`` toggle.

    Returns:
        The decision, logged at INFO.

    Raises:
        mlflow.exceptions.MlflowException: when the registry cannot be read (an unknown
            registry never reads as "no model yet").
    """
    from ingestion.manifest import read_manifest

    manifest = read_manifest(state.manifest)  # the reports stay out of XCom; the manifest has them
    new = sum((BatchReport.from_entry(manifest.get(b)) or BatchReport(batch_id=b)).accepted_rows
              for b in validated.stored_batches) + validated.released_listings
    stored, released = validated.stored_batches, validated.released
    if requested:
        retrain, reason = True, "retrain requested from the trigger form"
    elif stored or released:
        parts = [f"batch(es) {', '.join(stored)}" if stored else "",
                 f"release(s) {', '.join(released)}" if released else ""]
        retrain, reason = True, f"new listings accepted: {' and '.join(p for p in parts if p)}"
    elif not _registered(state, params.registry.model_name):
        retrain, reason = True, "no model registered yet"
    else:
        retrain, reason = False, ("nothing new this week: no batch accepted, no held-back listing "
                                  "released, no retrain requested; nothing trained or registered "
                                  "(trigger with retrain to train anyway)")
    decision = RetrainDecision(retrain=retrain, reason=reason, new_listings=new, data_rev=data.data_rev)
    logger.info("[retrain] %s: %s", "retrain" if retrain else "skip", reason)
    return decision


def _registered(state: State, model_name: str) -> bool:
    from promotion.registry import mlflow_client

    # the search lists only what exists: no model (or no version) is an empty list, not an error
    return bool(mlflow_client(state).search_model_versions(f"name = '{model_name}'", max_results=1))
