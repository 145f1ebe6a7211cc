"""A version description's GX links reach the batch's Data Docs page on the Airflow UI the
reviewer runs (issue 29): the port comes from the UI's configuration, not ``localhost:8080``, and
the result id resolves through the plugin's redirect, behind the Airflow login."""

from __future__ import annotations

import shutil
from urllib.parse import urlsplit

import pandas as pd
import pytest

from common.catalog import PATH_SEP, load_catalog
from common.params import ValidateParams
from tests.conftest import PROJECT_ROOT
from validation.validate import validate_batch

pytestmark = pytest.mark.integration


def test_a_gx_result_link_of_the_description_opens_its_data_docs_page(tmp_path, fashion_dir, monkeypatch,
                                                                      airflow_db):
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from promotion.report import markdown_report

    fashion = load_catalog("catalogs/fashion.yaml")
    styles = pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False).iloc[300:312]
    taxonomy = frozenset(PATH_SEP.join(r) for r in styles[["masterCategory", "subCategory", "articleType"]]
                         .itertuples(index=False))
    folder = tmp_path / "raw" / "fashion-2025-01-06"
    (folder / "images").mkdir(parents=True)
    styles.to_csv(folder / "styles.csv", index=False)
    for listing_id in styles["id"]:
        shutil.copy(fashion_dir / "images" / f"{listing_id}.jpg", folder / "images" / f"{listing_id}.jpg")
    report = validate_batch(folder, folder.name, "2025-01-06T00:00:00+00:00", fashion, taxonomy, ValidateParams(),
                            tmp_path / "store", tmp_path / "quarantine", tmp_path / "gx")
    assert report.validation_id and report.data_docs_page

    monkeypatch.setenv("LCP_STATE_DIR", str(tmp_path))  # the api-server's state: its gx/ site
    monkeypatch.delenv("LCP_AIRFLOW_UI_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__PORT", "18080")  # make ui AIRFLOW_PORT=18080
    batches = [{"batch_id": folder.name, "listings": 12, "status": report.status, "rows": report.rows,
                "accepted_rows": report.accepted_rows, "rejected_rows": report.rejected_rows,
                "validation_id": report.validation_id, "data_docs_page": report.data_docs_page}]
    result = {"decision": "promoted", "reason": "first model", "version": "1", "candidate_score": 0.5,
              "golden_rev": "abc.dir", "n_golden": 10, "experiment_id": "1"}
    per_class = pd.DataFrame(columns=["category_path", "support", "value", "recall_candidate",
                                      "recall_champion", "delta"])
    text = markdown_report(result, per_class, {"mlflow_run_id": "r1", "gx_data_docs": report.data_docs},
                           5, batches)
    assert "localhost:8080" not in text
    url = next(part.split(")")[0] for part in text.split("](")[1:] if "/lcp/data-docs/" in part)
    assert url.startswith("http://localhost:18080/lcp/data-docs/")

    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "plugins"))
    import listing_classifier_ui as ui

    redirects, docs = TestClient(ui.mlflow_redirect_app()), TestClient(ui.data_docs_app())
    path = urlsplit(url).path.removeprefix("/lcp")
    assert redirects.get(path, follow_redirects=False).status_code == 401  # behind the login
    token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    answer = redirects.get(path, follow_redirects=False, cookies={"_token": token})
    assert answer.status_code == 307, answer.text
    page = answer.headers["location"]
    assert page.startswith("/data-docs/validations/")
    shown = docs.get(page.removeprefix("/data-docs"), cookies={"_token": token})
    assert shown.status_code == 200
    assert shown.status_code == 200 and "<html" in shown.text.lower() and folder.name in shown.text
    missing = redirects.get("/data-docs/listings_batch/nothing/20250106T000000Z/x", follow_redirects=False,
                            cookies={"_token": token})
    assert missing.status_code == 404 and "nothing" in missing.json()["detail"]
