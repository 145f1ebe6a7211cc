"""MLflow tracking and Model Registry access, and the version scoring both gate sides share."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from common.params import Params
from common.scoring import business_weighted_score, listing_credits
from common.state import State
from common.store import image_path
from promotion.gate import PerListing, per_listing

ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
ALIAS_PREVIOUS = "previous-champion"


def mlflow_client(state: State):
    """Points MLflow at the state's tracking store and returns a client."""
    import mlflow

    mlflow.set_tracking_uri(state.tracking_uri)
    mlflow.set_registry_uri(state.tracking_uri)
    return mlflow.MlflowClient()


def ensure_experiment(state: State, params: Params) -> str:
    """The experiment id, created with its artifacts in the state folder if missing."""
    import mlflow

    client = mlflow_client(state)
    exp = client.get_experiment_by_name(params.registry.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if state.tracking_uri.startswith("sqlite:"):
        location = state.artifact_root.as_uri()
    return mlflow.create_experiment(params.registry.experiment, artifact_location=location)


def alias_version(client, name: str, alias: str) -> str | None:
    """The version an alias points to, or None (also when the model is not registered yet).

    Raises:
        mlflow.exceptions.MlflowException: for any other failure (e.g. the tracking server is
            unreachable): an unknown champion must never read as "no champion".
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def golden_frame(state: State) -> pd.DataFrame:
    """The golden test set as model input: ``title``, ``image_path`` plus ``listing_id`` and
    ``category_path`` (the truth), one row per golden listing."""
    golden = pd.read_parquet(state.golden_dir / "golden.parquet")
    golden["image_path"] = [str(image_path(state.listings_store, k)) for k in golden["image_key"]]
    return golden


def score_version(state: State, params: Params, version: str, golden: pd.DataFrame,
                  golden_rev: str) -> tuple[dict, PerListing]:
    """Scores a registered model version on the golden set, through its served pyfunc.

    Both the challenger and the champion go through this function, on the same golden frame,
    so the gate compares like with like; a champion's stored metrics are never trusted across
    golden revisions. The result is cached on the version, keyed by the golden revision: the
    tag ``golden_scores.<golden_rev>`` (summary) and the artifact
    ``golden_predictions/<golden_rev>.csv`` of its run (``listing_id, predicted_path``), which
    the paired bootstrap and the slice checks need. A cache whose listing ids differ from the
    golden frame's is ignored and the version re-scored.

    Args:
        state: the state folder.
        params: the params (``registry.model_name``, ``score``).
        version: the model version to score.
        golden: :func:`golden_frame`.
        golden_rev: the DVC hash of the golden set.

    Returns:
        ``(summary, per_listing)``: ``{"business_weighted_score", "accuracy", "n", "version",
        "golden_rev"}`` and the per-listing results in golden order.

    Raises:
        RuntimeError: when the version cannot be loaded or fails to predict.
        mlflow.exceptions.MlflowException: when the registry cannot be reached.
    """
    import mlflow

    client = mlflow_client(state)
    name = params.registry.model_name
    tag = f"golden_scores.{golden_rev}"
    artifact = f"golden_predictions/{golden_rev}.csv"
    mv = client.get_model_version(name, version)
    ids = [str(i) for i in golden["listing_id"]]
    true_paths = list(golden["category_path"])
    pred_paths = None
    if mv.tags.get(tag) and mv.run_id:
        try:
            cached = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{mv.run_id}/{artifact}")),
                                 dtype=str, keep_default_na=False)
            if cached["listing_id"].tolist() == ids:
                pred_paths = cached["predicted_path"].tolist()
        except Exception:  # a missing or unreadable cache only costs a re-score
            pred_paths = None
    fresh = pred_paths is None
    if fresh:
        try:
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
            from training.serving import model_input
            predicted = model.predict(model_input(golden))
            pred_paths = [str(p) for p in predicted["category_path"]]
        except Exception as exc:  # any failure to load or predict must stop the gate
            raise RuntimeError(f"model version {name}/{version} cannot be loaded or scored: {exc}") from exc
        if len(pred_paths) != len(ids):
            raise RuntimeError(f"model version {name}/{version} returned {len(pred_paths)} predictions "
                               f"for {len(ids)} golden listings")
    s = params.score
    values, credits = listing_credits(true_paths, pred_paths, s.value_table, s.level_credit, s.default_value)
    listings = per_listing(ids, true_paths, pred_paths, values, credits)
    result = {
        "business_weighted_score": business_weighted_score(true_paths, pred_paths, s.value_table,
                                                           s.level_credit, s.default_value),
        "accuracy": float(sum(p == t for p, t in zip(pred_paths, true_paths, strict=True)) / len(true_paths)),
        "n": len(true_paths),
        "version": str(version),
        "golden_rev": golden_rev,
    }
    if fresh:
        if mv.run_id:
            frame = pd.DataFrame({"listing_id": ids, "predicted_path": pred_paths})
            client.log_text(mv.run_id, frame.to_csv(index=False), artifact)
        client.set_model_version_tag(name, version, tag, json.dumps(result))
    return result, listings


def artifact_file(path: Path) -> str | None:
    """``str(path)`` if the file exists, else None."""
    return str(path) if Path(path).exists() else None
