"""The Airflow UI plugin: loaded by Airflow's plugin manager, links well formed, Data Docs served."""

from __future__ import annotations

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


def test_data_docs_are_served_from_the_state_folder(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("LCP_STATE_DIR", str(tmp_path))
    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    try:
        import listing_classifier_ui as ui
    finally:
        sys.path.remove(str(PROJECT_ROOT / "plugins"))
    client = TestClient(ui.data_docs_app())
    assert client.get("/index.html").status_code == 404  # nothing validated yet
    site = ui.data_docs_dir()
    site.mkdir(parents=True)
    (site / "index.html").write_text("<h1>expectation suite listings</h1>")
    response = client.get("/index.html")
    assert response.status_code == 200 and "expectation suite" in response.text
    assert client.get("/../../../etc/passwd").status_code == 404
