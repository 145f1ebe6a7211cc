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
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from listing_classifier_links import (
    DATA_DOCS_PREFIX,
    REDIRECT_PREFIX,
    MlflowChampionLink,
    MlflowModelVersionLink,
    MlflowRunLink,
    data_docs_result_path,
    mlflow_model_version_page,
    mlflow_run_page,
    mlflow_ui_url,
)

MODEL_NAME = os.environ.get("LCP_MODEL_NAME", "listing-classifier")


def data_docs_dir() -> Path:
    """The GX Data Docs site folder of the state folder (``$LCP_STATE_DIR``, default ``.state``)."""
    state = Path(os.environ.get("LCP_STATE_DIR", ".state")).resolve()
    return state / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site"


ASSETS_PATH = "/_assets"
"""Where the Data Docs app serves the local copies of the pages' scripts and styles."""


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` resolved, or ``None`` when it leaves ``root`` (``..``, links out)."""
    root = root.resolve()
    target = (root / rel).resolve()
    return target if target == root or target.is_relative_to(root) else None


async def logged_in(request: Request):
    """The Airflow user of the request, as the REST API resolves it (bearer token, else the UI's
    session cookie); Airflow's security module is imported on first request, so loading the
    plugin stays cheap. Raises ``HTTPException`` 401 (no token) or 403 (invalid token)."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else None
    return await resolve_user_from_token(token or request.cookies.get(COOKIE_NAME_JWT_TOKEN))


def app_behind_airflow_login(title: str) -> FastAPI:
    """A FastAPI app whose every route sits behind the Airflow UI's login (:func:`logged_in`).

    A browser that is not logged in is sent to Airflow's login page (303, back here after it);
    other clients get the 401/403 as JSON. Every app this plugin mounts on the api-server goes
    through here: a plugin endpoint is no way around the UI's authentication.
    """
    app = FastAPI(title=title, dependencies=[Depends(logged_in)])

    @app.exception_handler(HTTPException)
    async def login_first(request: Request, exc: HTTPException):
        if exc.status_code in (401, 403) and "text/html" in request.headers.get("accept", ""):
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)),
                                    status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    return app


def data_docs_app():
    """A FastAPI app serving the Data Docs site, behind Airflow's authentication.

    Every request needs an Airflow login (the UI's session cookie or a bearer token), as the REST
    API does: Data Docs hold listing rows and failed values. A browser that is not logged in is
    sent to the login page; other clients get 401. HTML pages are served with their CDN
    addresses rewritten to the local copies (``/data-docs/_assets/...``,
    :mod:`data_docs_assets`), so the site works offline. Paths leaving the site are 404; the
    site answers 404 until the first validation.
    """
    from data_docs_assets import assets_dir, localize

    app = app_behind_airflow_login("Great Expectations Data Docs")

    @app.get(ASSETS_PATH + "/{path:path}")
    def asset(path: str) -> FileResponse:
        target = _inside(assets_dir(), path)
        if target is None or not target.is_file():
            raise HTTPException(404, "no such asset")
        return FileResponse(target)

    @app.get("/{path:path}")
    def page(path: str, request: Request):
        target = _inside(data_docs_dir(), path or "index.html")
        if target is not None and target.is_dir():
            target = target / "index.html"
        if target is None or not target.is_file():
            raise HTTPException(404, "no such Data Docs page (nothing validated yet?)")
        if target.suffix == ".html":
            prefix = request.scope.get("root_path", "").rstrip("/") + ASSETS_PATH
            return HTMLResponse(localize(target.read_text(encoding="utf-8"), prefix))
        return FileResponse(target)

    return app


def mlflow_redirect_app():
    """A FastAPI app redirecting the operator links to the MLflow UI of this api-server's config,
    and a GX result id to its Data Docs page.

    ``GET /mlflow/runs/<run id>`` and ``GET /mlflow/models/<name>/versions/<version>`` answer
    ``307`` to the MLflow page; ``LCP_MLFLOW_UI_URL`` is read at each request.
    ``GET /data-docs/<validation result id>`` (the links of a model version description,
    ``promotion.report.data_docs_url``) answers ``307`` to the result's page in the Data Docs
    app, 404 when this state's site has no such page. Behind the Airflow login like every
    endpoint of this plugin (:func:`app_behind_airflow_login`).
    """
    app = app_behind_airflow_login("Listing classifier: links to MLflow and Data Docs")

    @app.get("/data-docs/{validation_id:path}")
    def data_docs_result(validation_id: str) -> RedirectResponse:
        page = _inside(data_docs_dir(), f"validations/{validation_id}.html")
        if page is None or not page.is_file():
            raise HTTPException(404, f"no Data Docs page for GX validation result {validation_id!r} "
                                     "in this state folder")
        return RedirectResponse(data_docs_result_path(validation_id), status_code=307)

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
        {"app": mlflow_redirect_app(), "url_prefix": REDIRECT_PREFIX, "name": "Links to MLflow and Data Docs"},
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
