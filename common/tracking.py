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
    """Points MLflow at the state's tracking store and returns a client.

    ``mlflow.set_tracking_uri`` also exports the URI as ``MLFLOW_TRACKING_URI`` (for
    subprocesses), and :attr:`common.state.State.tracking_uri` lets that variable win (a tracking
    server configured by the user): in a process that opens a second state (a benchmark comparing
    two seasons, a test) the second state's client would then read the first state's store,
    silently. The variable is put back as it was, so only a user's setting ever wins.
    """
    import os

    import mlflow

    exported = os.environ.get("MLFLOW_TRACKING_URI")
    uri = state.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
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
