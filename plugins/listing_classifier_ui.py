"""Airflow UI plugin: links to the MLflow registry and the latest Great Expectations Data Docs.

- An external view in Airflow's navigation opens the registered model page in the MLflow UI;
  its base URL comes from ``LCP_MLFLOW_UI_URL`` (default ``http://localhost:5000``).
- The Data Docs site that the validate task builds (``<state>/gx/gx/uncommitted/data_docs/
  local_site``) is served by the Airflow api-server under ``/data-docs/`` (a FastAPI static
  app), and linked from the navigation too, so reviewers need no file access.
- Operator extra links on the ``register`` and ``promote`` tasks open the exact MLflow run and
  model version (``listing_classifier_links``: the DAG attaches them to the two tasks; they are
  listed here too so ``airflow plugins`` shows them). They point at ``/lcp/mlflow/...`` on the
  api-server, which redirects to the MLflow UI named by the api-server's ``LCP_MLFLOW_UI_URL``
  at the moment the link is opened (:func:`mlflow_redirect_app`).

Kept light: no heavy imports at module level (the plugin manager imports this in every
Airflow component).
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin
from listing_classifier_links import (
    REDIRECT_PREFIX,
    MlflowChampionLink,
    MlflowModelVersionLink,
    MlflowRunLink,
    mlflow_model_version_page,
    mlflow_run_page,
)

MODEL_NAME = os.environ.get("LCP_MODEL_NAME", "listing-classifier")
DATA_DOCS_PREFIX = "/data-docs"


def mlflow_ui_url() -> str:
    """Base URL of the MLflow UI, from ``LCP_MLFLOW_UI_URL`` (no trailing slash)."""
    return os.environ.get("LCP_MLFLOW_UI_URL", "http://localhost:5000").rstrip("/")


def data_docs_dir() -> Path:
    """The GX Data Docs site folder of the state folder (``$LCP_STATE_DIR``, default ``.state``)."""
    state = Path(os.environ.get("LCP_STATE_DIR", ".state")).resolve()
    return state / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site"


def data_docs_app():
    """A FastAPI app serving the Data Docs site as static HTML (404 until the first validation)."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    class DataDocsFiles(StaticFiles):
        """StaticFiles that answers 404 (not 500) while the site does not exist yet."""

        async def check_config(self) -> None:
            if Path(self.directory).is_dir():
                await super().check_config()

    app = FastAPI(title="Great Expectations Data Docs")
    app.mount("/", DataDocsFiles(directory=data_docs_dir(), html=True, check_dir=False), name="data-docs")
    return app


def mlflow_redirect_app():
    """A FastAPI app redirecting the operator links to the MLflow UI of this api-server's config.

    ``GET /mlflow/runs/<run id>`` and ``GET /mlflow/models/<name>/versions/<version>`` answer
    ``307`` to the MLflow page; ``LCP_MLFLOW_UI_URL`` is read at each request.
    """
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    app = FastAPI(title="Listing classifier: links to MLflow")

    @app.get("/mlflow/runs/{run_id}")
    def run(run_id: str) -> RedirectResponse:
        return RedirectResponse(mlflow_run_page(run_id), status_code=307)

    @app.get("/mlflow/models/{name}/versions/{version}")
    def model_version(name: str, version: str) -> RedirectResponse:
        return RedirectResponse(mlflow_model_version_page(name, version), status_code=307)

    return app


class ListingClassifierUIPlugin(AirflowPlugin):
    """Navigation links to the MLflow registered model and to the GX Data Docs; MLflow task links."""

    name = "listing_classifier_ui"
    operator_extra_links = [MlflowRunLink(), MlflowModelVersionLink(), MlflowChampionLink()]
    fastapi_apps = [
        {"app": data_docs_app(), "url_prefix": DATA_DOCS_PREFIX, "name": "GX Data Docs"},
        {"app": mlflow_redirect_app(), "url_prefix": REDIRECT_PREFIX, "name": "Links to MLflow"},
    ]
    external_views = [
        {
            "name": "MLflow: listing-classifier",
            "href": f"{mlflow_ui_url()}/#/models/{MODEL_NAME}",
            "destination": "nav",
            "category": "Listing classifier",
            "url_route": None,
        },
        {
            "name": "GX Data Docs",
            "href": f"{DATA_DOCS_PREFIX}/index.html",
            "destination": "nav",
            "category": "Listing classifier",
            "url_route": None,
        },
    ]
