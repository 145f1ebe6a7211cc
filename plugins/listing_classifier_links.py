"""Operator extra links from the register and promote tasks to the exact MLflow run and version.

Airflow 3 computes an operator's extra links on the worker when the task finishes
(``airflow.sdk.execution_time.task_runner.finalize`` calls ``get_link`` for each link of
``task.operator_extra_links`` and stores the URL as the XCom ``_link_<ClassName>``); the
api-server only reads that XCom back. So the links are attached to the tasks in the DAG file
(``<XComArg>.operator.operator_extra_links``), and read the task's own return value:

- ``register`` returns ``{"version", "run_id", "model_uri"}``
  (``common.results.RegisterResult.to_xcom``);
- ``promote`` returns ``{"champion", "moved", "decision"}`` (``PromoteResult.to_xcom``): the run
  and the challenger's version come from the same DAG run's ``register`` XCom.

Because the URL is stored when the task finishes, it must not hold the MLflow UI's address
(a UI opened later on other ports would get refused links): each link is a path on the Airflow
api-server itself (``/lcp/mlflow/runs/<run id>``, ``/lcp/mlflow/models/<name>/versions/<n>``,
relative to the Airflow UI's own origin, prefixed by the path of ``[api] base_url`` when Airflow
is served under one), which the plugin (``listing_classifier_ui``) answers with a redirect to
the MLflow UI that the *api-server's* ``LCP_MLFLOW_UI_URL`` names when the link is opened.
Only ``airflow.sdk`` is imported (the links read those keys of the XCom dicts, not the result
types): the DAG file imports this module, and parsing it must stay cheap.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

REGISTER_TASK_ID = "register"
DEFAULT_MODEL_NAME = "listing-classifier"


REDIRECT_PREFIX = "/lcp"
"""Where the plugin's redirect app is mounted on the api-server."""


def mlflow_ui_url() -> str:
    """Base URL of the MLflow UI, from ``LCP_MLFLOW_UI_URL`` (no trailing slash), read when called:
    by the api-server's redirect, each time a link is opened."""
    return os.environ.get("LCP_MLFLOW_UI_URL", "http://localhost:5000").rstrip("/")


def _base_path() -> str:
    """The path part of Airflow's ``[api] base_url`` (``""`` when Airflow is served at ``/``)."""
    base = os.environ.get("AIRFLOW__API__BASE_URL")
    if base is None:
        try:
            from airflow.configuration import conf

            base = conf.get("api", "base_url", fallback="") or ""
        except Exception:  # noqa: BLE001 -- no Airflow config at hand: served at /
            base = ""
    return urlsplit(base).path.rstrip("/")


def run_url(run_id: str) -> str:
    """The link to a run: a path on the Airflow UI that redirects to the MLflow run page."""
    return f"{_base_path()}{REDIRECT_PREFIX}/mlflow/runs/{quote(run_id, safe='')}"


def model_version_url(name: str, version: str | int) -> str:
    """The link to a model version: a path on the Airflow UI that redirects to its MLflow page."""
    return (f"{_base_path()}{REDIRECT_PREFIX}/mlflow/models/{quote(name, safe='')}/versions/"
            f"{quote(str(version), safe='')}")


DATA_DOCS_PREFIX = "/data-docs"
"""Where the plugin's Data Docs app serves the GX site on the api-server."""


def data_docs_result_path(validation_id: str) -> str:
    """The Data Docs page of a GX validation result id (``<suite>/<run name>/<run time>/<batch>``,
    the result store's key, as ``validation.checkpoint`` records it), as a path on the Airflow UI:
    the site keeps each result's page at ``validations/<key>.html``."""
    return f"{_base_path()}{DATA_DOCS_PREFIX}/validations/{quote(validation_id, safe='/')}.html"


def mlflow_run_page(run_id: str) -> str:
    """The MLflow UI page of a run (``#/runs/<id>`` redirects to its experiment's run page)."""
    return f"{mlflow_ui_url()}/#/runs/{quote(run_id, safe='')}"


def mlflow_model_version_page(name: str, version: str | int) -> str:
    """The MLflow UI page of one registered model version."""
    return f"{mlflow_ui_url()}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


def model_name_of(result: dict) -> str:
    """The registered model's name from a ``models:/<name>/<version>`` URI, else the default."""
    uri = str(result.get("model_uri") or "")
    if uri.startswith("models:/") and uri.count("/") >= 2:
        return uri[len("models:/"):].rsplit("/", 1)[0]
    return os.environ.get("LCP_MODEL_NAME", DEFAULT_MODEL_NAME)


def _return_value(ti_key: Any, task_id: str | None = None) -> dict:
    """The ``return_value`` XCom of this task (or of ``task_id`` in the same DAG run), or ``{}``.

    On the worker ``ti_key`` is the running task instance (``xcom_pull`` reads through the
    supervisor); a bare ``TaskInstanceKey`` is read with the SDK's XCom backend.
    """
    if callable(getattr(ti_key, "xcom_pull", None)):
        value = ti_key.xcom_pull(task_ids=task_id or ti_key.task_id, key="return_value")
    else:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_one(key="return_value", dag_id=ti_key.dag_id, run_id=ti_key.run_id,
                             task_id=task_id or ti_key.task_id,
                             map_index=ti_key.map_index if task_id is None else -1)
    return value if isinstance(value, dict) else {}


def _registered(ti_key: Any) -> dict:
    """The register task's result: this task's own when it is ``register``, else its XCom."""
    own = _return_value(ti_key)
    if own.get("run_id") and own.get("version"):
        return own
    return _return_value(ti_key, REGISTER_TASK_ID)


class MlflowRunLink(BaseOperatorLink):
    """"MLflow run": the run that logged the challenger (params, metrics, artifacts, lineage)."""

    name = "MLflow run"

    def get_link(self, operator, *, ti_key) -> str:
        """The run's URL, or ``""`` (a disabled link) before the model is registered."""
        run_id = _registered(ti_key).get("run_id")
        return run_url(run_id) if run_id else ""


class MlflowModelVersionLink(BaseOperatorLink):
    """"MLflow model version": the challenger's version, with its decision tags and report."""

    name = "MLflow model version"

    def get_link(self, operator, *, ti_key) -> str:
        """The version's URL, or ``""`` before the model is registered."""
        registered = _registered(ti_key)
        version = registered.get("version")
        return model_version_url(model_name_of(registered), version) if version else ""


class MlflowChampionLink(BaseOperatorLink):
    """"MLflow champion": the version holding alias ``champion`` after the promote task."""

    name = "MLflow champion"

    def get_link(self, operator, *, ti_key) -> str:
        """The champion version's URL, or ``""`` when there is none yet."""
        champion = _return_value(ti_key).get("champion")
        if not champion or str(champion).lower() == "none":
            return ""
        return model_version_url(model_name_of(_registered(ti_key)), champion)


REGISTER_LINKS = (MlflowRunLink(), MlflowModelVersionLink())
"""Extra links of the register task."""
PROMOTE_LINKS = (MlflowRunLink(), MlflowModelVersionLink(), MlflowChampionLink())
"""Extra links of the promote task."""
