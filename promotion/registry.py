"""MLflow tracking and Model Registry access, and the version scoring both gate sides share."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from common.params import Params
from common.scoring import business_weighted_score
from common.state import State
from common.store import image_path

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
    """The version an alias points to, or None (also when the model is not registered yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def golden_frame(state: State) -> pd.DataFrame:
    """The golden test set as model input: ``title``, ``image_path`` plus ``listing_id`` and
    ``category_path`` (the truth), one row per golden listing."""
    golden = pd.read_parquet(state.golden_dir / "golden.parquet")
    golden["image_path"] = [str(image_path(state.listings_store, k)) for k in golden["image_key"]]
    return golden


def score_version(state: State, params: Params, version: str, golden: pd.DataFrame,
                  golden_rev: str) -> dict:
    """Scores a registered model version on the golden set, through its served pyfunc.

    Both the challenger and the champion go through this function, on the same golden frame,
    so the gate compares like with like. The result is cached on the version as the tag
    ``golden_scores.<golden_rev>``: a score is reused only for the same golden revision.

    Args:
        state: the state folder.
        params: the params (``registry.model_name``, ``score``).
        version: the model version to score.
        golden: :func:`golden_frame`.
        golden_rev: the DVC hash of the golden set.

    Returns:
        ``{"business_weighted_score", "accuracy", "n", "version"}``.

    Raises:
        RuntimeError: when the version cannot be loaded or fails to predict.
    """
    import mlflow

    client = mlflow_client(state)
    name = params.registry.model_name
    tag = f"golden_scores.{golden_rev}"
    cached = client.get_model_version(name, version).tags.get(tag)
    if cached:
        return json.loads(cached)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        predicted = model.predict(golden[["title", "image_path"]])
    except Exception as exc:  # any failure to load or predict must stop the gate
        raise RuntimeError(f"model version {name}/{version} cannot be loaded or scored: {exc}") from exc
    pred_paths = list(predicted["category_path"])
    true_paths = list(golden["category_path"])
    s = params.score
    result = {
        "business_weighted_score": business_weighted_score(true_paths, pred_paths, s.value_table,
                                                           s.level_credit, s.default_value),
        "accuracy": float(sum(p == t for p, t in zip(pred_paths, true_paths, strict=True)) / len(true_paths)),
        "n": len(true_paths),
        "version": str(version),
    }
    client.set_model_version_tag(name, version, tag, json.dumps(result))
    return result


def artifact_file(path: Path) -> str | None:
    """``str(path)`` if the file exists, else None."""
    return str(path) if Path(path).exists() else None
