"""Who may look at the tracking server, and who may move the champion: MLflow's own basic-auth app.

The tracking server runs as ``mlflow server --app-name basic-auth`` (docker-compose, the native
stack test). Every request then needs an account; an anonymous one gets HTTP 401, an account
without the permission 403. Three kinds of account:

* the admin (``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD``, from ``.env``),
  created by MLflow on the first start against an empty user store;
* the account the Airflow tasks use (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
  in the tasks' environment, which every MLflow client reads): :func:`ensure_task_account` creates
  it and grants it ``MANAGE`` on the registered model and the experiment, which registering,
  tagging and moving aliases need;
* reviewers: any other account, created by the admin (MLflow UI, or
  ``mlflow.server.auth.client.AuthServiceClient``); the server's ``default_permission`` (``READ``)
  lets them browse runs and versions but not move an alias.

Source: MLflow, "Basic HTTP authentication" (mlflow.org/docs/latest/auth), and
``mlflow/server/auth/basic_auth.ini``.

CLI::

    python -m promotion.tracking_auth config --out /path/auth.ini --database-uri postgresql://...
    python -m promotion.tracking_auth account --tracking-uri http://mlflow:5000
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
from pathlib import Path
from unittest import mock

from common.cli import run_command

PERMISSION_TASKS = "MANAGE"
"""What the Airflow tasks' account holds on the registered model and the experiment: MLflow's
``EDIT`` cannot delete or manage, ``MANAGE`` can also set permissions; aliases need ``EDIT`` or
more, and the tasks' account must be able to repair its own model's permissions after a restore."""

DEFAULT_PERMISSION = "READ"
"""What every authenticated account may do on a resource nobody granted it (reviewers browse)."""


class TrackingAuthError(RuntimeError):
    """The tracking server's accounts could not be set up (missing credentials, refused call)."""


def write_server_config(path: Path, database_uri: str, default_permission: str = DEFAULT_PERMISSION) -> Path:
    """Writes the basic-auth app's config file (``MLFLOW_AUTH_CONFIG_PATH``).

    The admin's name and password are not written: MLflow reads them from
    ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD`` at start.

    Args:
        path: where to write the ``.ini`` file (its folder is created).
        database_uri: SQLAlchemy URI of the user and permission store (e.g. the MLflow
            database on PostgreSQL, or ``sqlite:////path/auth.db``).
        default_permission: ``READ``, ``EDIT``, ``MANAGE`` or ``NO_PERMISSIONS``.

    Returns:
        ``path``.
    """
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        config.write(f)
    os.chmod(path, 0o600)
    return path


def as_account(username: str, password: str):
    """A context in which MLflow clients of this process use this account: MLflow reads its
    credentials from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, restored after."""
    return mock.patch.dict(os.environ, {"MLFLOW_TRACKING_USERNAME": username,
                                        "MLFLOW_TRACKING_PASSWORD": password})


def _grant(auth, username: str, resource_type: str, resource_id: str) -> None:
    """Grants :data:`PERMISSION_TASKS`, replacing a weaker permission the account already has."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, PERMISSION_TASKS)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        current = auth.get_user_permission(username, resource_type, resource_id)
        if getattr(current, "permission", None) != PERMISSION_TASKS:
            auth.revoke_user_permission(username, resource_type, resource_id)
            auth.grant_user_permission(username, resource_type, resource_id, PERMISSION_TASKS)


def ensure_task_account(tracking_uri: str, username: str, password: str, model_name: str,
                        experiment: str, admin_username: str, admin_password: str) -> dict:
    """Creates (or updates the password of) the Airflow tasks' account and grants it
    :data:`PERMISSION_TASKS` on the registered model and the experiment, when they exist.

    Idempotent: run it at every deployment (``airflow-init``). A model or experiment the account
    creates itself is its own already (MLflow grants ``MANAGE`` to the creator).

    Args:
        tracking_uri: the tracking server (``http://...``), running the basic-auth app.
        username, password: the tasks' account.
        model_name: the registered model (``registry.model_name``).
        experiment: the experiment name (``registry.experiment``).
        admin_username, admin_password: the server's admin.

    Returns:
        ``{"user": username, "created": bool, "granted": [resource, ...]}``.

    Raises:
        TrackingAuthError: missing credentials, or the server refused a call (e.g. wrong admin
            password: HTTP 401).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    if not (username and password and admin_username and admin_password):
        raise TrackingAuthError("the tasks' account and the admin's credentials are all needed "
                                "(MLFLOW_TRACKING_USERNAME/PASSWORD, MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD)")
    auth = AuthServiceClient(tracking_uri)
    granted = []
    with as_account(admin_username, admin_password):
        try:
            try:
                auth.get_user(username)
                created = False
                auth.update_user_password(username, password)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                auth.create_user(username, password)
                created = True
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            try:
                client.get_registered_model(model_name)
                _grant(auth, username, "registered_model", model_name)
                granted.append(f"registered_model:{model_name}")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                _grant(auth, username, "experiment", exp.experiment_id)
                granted.append(f"experiment:{exp.experiment_id}")
        except MlflowException as exc:
            raise TrackingAuthError(f"the tracking server {tracking_uri} refused to set up account "
                                    f"{username!r}: {exc}") from exc
    return {"user": username, "created": created, "granted": granted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promotion.tracking_auth", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="write the basic-auth app's config file")
    config.add_argument("--out", required=True, type=Path)
    config.add_argument("--database-uri", required=True)
    config.add_argument("--default-permission", default=DEFAULT_PERMISSION)
    account = sub.add_parser("account", help="create the Airflow tasks' account and grant it the model")
    account.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    args = parser.parse_args(argv)
    if args.command == "config":
        print(write_server_config(args.out, args.database_uri, args.default_permission))
        return 0
    from common.params import load_params

    registry = load_params().registry
    return run_command(lambda: ensure_task_account(
        args.tracking_uri, os.environ.get("MLFLOW_TRACKING_USERNAME", ""),
        os.environ.get("MLFLOW_TRACKING_PASSWORD", ""), registry.model_name, registry.experiment,
        os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")),
        TrackingAuthError, status=1, prefix="[tracking-auth] ")


if __name__ == "__main__":
    sys.exit(main())
