"""The Airflow UI plugin: loaded by Airflow's plugin manager, links well formed, Data Docs served,
operator extra links to the exact MLflow run and model version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def test_airflow_loads_the_plugin_with_its_views(tmp_path):
    """`airflow plugins` (the real plugin manager) lists our external views and FastAPI app."""
    env = {"AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
           "LCP_MLFLOW_UI_URL": "http://mlflow.example:5000/", "LCP_STATE_DIR": str(tmp_path)}
    proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), "plugins", "--output", "json"],
                          capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "listing_classifier_ui" in proc.stdout
    assert "http://mlflow.example:5000/#/models/listing-classifier" in proc.stdout
    assert "/data-docs" in proc.stdout


def test_data_docs_are_served_behind_airflow_login_with_local_assets(tmp_path, monkeypatch, airflow_db):
    """No login: 401 (a browser is sent to the login page). Logged in (bearer token or the UI's
    cookie): the page, its CDN addresses rewritten to the local copies, which are served too."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    monkeypatch.setenv("LCP_STATE_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "plugins"))
    import data_docs_assets
    import listing_classifier_ui as ui

    token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    client = TestClient(ui.data_docs_app())
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/index.html", headers=auth).status_code == 404  # nothing validated yet
    site = ui.data_docs_dir()
    site.mkdir(parents=True)
    cdn = "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"
    (site / "index.html").write_text(f'<link href="{cdn}"><script src="https://code.jquery.com/'
                                     f'jquery-3.7.1.min.js"></script><h1>expectation suite</h1>')
    assert client.get("/index.html").status_code == 401
    to_login = client.get("/index.html", headers={"accept": "text/html"}, follow_redirects=False)
    assert to_login.status_code == 303 and to_login.headers["location"].startswith("/auth/login")
    assert client.get("/index.html", cookies={"_token": "forged"}).status_code == 403
    assets = data_docs_assets.assets_dir()
    assert (assets / "bootstrap" / "dist" / "css" / "bootstrap.min.css").is_file(), \
        f"run `make venv` (it fetches the Data Docs assets into {assets})"
    response = client.get("/index.html", cookies={"_token": token})
    assert response.status_code == 200 and "expectation suite" in response.text
    assert cdn not in response.text and "code.jquery.com" not in response.text
    assert '"/_assets/bootstrap/dist/css/bootstrap.min.css"' in response.text
    css = client.get("/_assets/bootstrap/dist/css/bootstrap.min.css", headers=auth)
    assert css.status_code == 200 and css.content == (assets / "bootstrap/dist/css/bootstrap.min.css").read_bytes()
    for trick in ("/../../../etc/passwd", "/..%2F..%2F..%2Fetc%2Fpasswd", "/_assets/..%2F..%2F..%2Fetc%2Fpasswd"):
        assert client.get(trick, headers=auth).status_code == 404, trick


def test_every_cdn_address_of_a_real_data_docs_page_has_a_local_copy():
    """The addresses GX 1.x writes (read from its own page template) all map to fetched files."""
    import re

    import great_expectations

    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    try:
        import data_docs_assets
    finally:
        sys.path.remove(str(PROJECT_ROOT / "plugins"))
    templates = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
    text = "\n".join(p.read_text(encoding="utf-8") for p in templates.rglob("*.j2"))
    cdn = set(re.findall(r'(?:src|href)="(https://(?:cdn|unpkg|code\.jquery|maxcdn|stackpath|cdnjs)[^"]+)"', text))
    assert cdn, "no CDN address found in GX's templates: the template folder moved?"
    root = data_docs_assets.assets_dir()
    for url in sorted(cdn):
        local = data_docs_assets.localize(f'"{url}"', "").strip('"')
        assert local != url, f"{url} has no local copy in data_docs_assets.CDN_PREFIXES"
        assert (root / local.lstrip("/")).is_file(), f"{url} -> {local} is not in {root}"


def _links_module(monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "plugins"))
    import listing_classifier_links

    return listing_classifier_links


class _FakeTI:
    """The worker's running task instance as the links use it: ids and ``xcom_pull``."""

    dag_id, run_id, map_index = "listing_classifier_retraining", "manual__1", -1

    def __init__(self, task_id: str, xcoms: dict):
        self.task_id, self.xcoms = task_id, xcoms

    def xcom_pull(self, task_ids: str, key: str):
        assert key == "return_value"
        return self.xcoms.get(task_ids)


def test_extra_links_point_at_the_exact_mlflow_run_and_version(monkeypatch, airflow_db):
    """The stored links are api-server paths (no MLflow address frozen in them); the redirect
    app sends each to the MLflow UI the api-server is configured with when it is opened, to a
    logged-in Airflow user only (no login: 401, a browser to the login page)."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    links = _links_module(monkeypatch)
    monkeypatch.setenv("LCP_MLFLOW_UI_URL", "http://frozen.example:5000")  # the worker's, at run time
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    registered = {"version": "7", "run_id": "abc123", "model_uri": "models:/listing-classifier/7"}
    register_ti = _FakeTI("register", {"register": registered})
    assert [link.get_link(None, ti_key=register_ti) for link in links.REGISTER_LINKS] == [
        "/lcp/mlflow/runs/abc123", "/lcp/mlflow/models/listing-classifier/versions/7"]
    promote_ti = _FakeTI("promote", {"register": registered,
                                     "promote": {"champion": "6", "moved": False, "decision": "rejected"}})
    stored = [link.get_link(None, ti_key=promote_ti) for link in links.PROMOTE_LINKS]
    assert stored == ["/lcp/mlflow/runs/abc123", "/lcp/mlflow/models/listing-classifier/versions/7",
                      "/lcp/mlflow/models/listing-classifier/versions/6"]
    assert all("frozen.example" not in url for url in stored)
    # before registration (or a skipped promote) the links are empty: the UI shows them disabled
    assert [link.get_link(None, ti_key=_FakeTI("promote", {})) for link in links.PROMOTE_LINKS] == ["", "", ""]
    assert links.MlflowChampionLink().get_link(
        None, ti_key=_FakeTI("promote", {"promote": {"champion": None}})) == ""
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example/tools/airflow/")
    assert links.run_url("abc123") == "/tools/airflow/lcp/mlflow/runs/abc123"

    import listing_classifier_ui as ui

    client = TestClient(ui.mlflow_redirect_app())
    monkeypatch.setenv("LCP_MLFLOW_UI_URL", "http://localhost:15001/")  # the UI as opened later
    for url in stored:  # no login: never the redirect target
        path = url.removeprefix("/lcp")
        assert client.get(path, follow_redirects=False).status_code == 401
        assert client.get(path, cookies={"_token": "forged"}, follow_redirects=False).status_code == 403
        to_login = client.get(path, headers={"accept": "text/html"}, follow_redirects=False)
        assert to_login.status_code == 303 and to_login.headers["location"].startswith("/auth/login"), \
            to_login.headers.get("location")
    token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    targets = [client.get(url.removeprefix("/lcp"), follow_redirects=False, cookies={"_token": token})
               for url in stored]
    assert [r.status_code for r in targets] == [307, 307, 307]
    assert [r.headers["location"] for r in targets] == [
        "http://localhost:15001/#/runs/abc123",
        "http://localhost:15001/#/models/listing-classifier/versions/7",
        "http://localhost:15001/#/models/listing-classifier/versions/6"]


def test_the_dag_attaches_the_links_to_register_and_promote(airflow_db):
    """With the plugins folder on sys.path (as in every Airflow component) the serialized DAG
    carries the links by name and XCom key, which is what the api-server reads back."""
    code = f"""
import json, sys
sys.path.insert(0, {str(PROJECT_ROOT / "plugins")!r})
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
bag = DagBag(dag_folder={str(PROJECT_ROOT / "dags")!r})
assert not bag.import_errors, bag.import_errors
ser = DagSerialization.to_dict(bag.get_dag("listing_classifier_retraining"))
out = {{}}
for t in ser["dag"]["tasks"]:
    t = t.get("__var", t)
    if "_operator_extra_links" in t:
        out[t["task_id"]] = t["_operator_extra_links"]
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    links = json.loads(proc.stdout.strip().splitlines()[-1])
    assert links == {
        "register": {"MLflow run": "_link_MlflowRunLink", "MLflow model version": "_link_MlflowModelVersionLink"},
        "promote": {"MLflow run": "_link_MlflowRunLink", "MLflow model version": "_link_MlflowModelVersionLink",
                    "MLflow champion": "_link_MlflowChampionLink"},
    }
