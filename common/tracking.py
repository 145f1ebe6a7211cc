"""The state's MLflow tracking store and registry: the client and the alias lookup every layer
may need (ingestion's workspace asks which version is the champion before ``dvc repro``;
promotion moves the aliases). Kept here, below every package, so that no module imports upwards
to reach the registry; ``promotion.registry`` re-exports them."""

from __future__ import annotations

from common.state import State

ALIAS_CHAMPION = "champion"
"""The registry alias of the version in production."""
ALIAS_CHALLENGER = "challenger"
"""The registry alias of the latest registered candidate."""
ALIAS_PREVIOUS = "previous-champion"
"""The registry alias of the champion before the current one (what a rollback restores)."""


def mlflow_client(state: State):
    """Points MLflow at the state's tracking store and returns a client."""
    import mlflow

    mlflow.set_tracking_uri(state.tracking_uri)
    mlflow.set_registry_uri(state.tracking_uri)
    return mlflow.MlflowClient()


def alias_version(client, name: str, alias: str) -> str | None:
    """The version an alias points to, or None (also when the model is not registered yet).

    Raises:
        mlflow.exceptions.MlflowException: for any other failure (e.g. the tracking server is
            unreachable): an unknown champion must never read as "no champion".
    """
    from mlflow.exceptions import MlflowException

    # a tracking server with MLflow's basic-auth answers a model that does not exist yet with
    # 403 (no permission on it), not 404: ask the search, which lists only what exists
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        return None
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
