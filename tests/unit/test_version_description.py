"""The model version description stays within MLflow's limit by design (issue 29): a bounded
summary ending with its last lineage row, the whole lineage in an artifact it links to."""

from __future__ import annotations

import json

import pandas as pd

RUN_ID = "0123456789abcdef0123456789abcdef"
AIRFLOW_RUN = "manual__2026-06-01T12:34:56.123456+00:00_" + "retrained-after-a-feed-correction-" * 2


def season(weeks: int) -> tuple[dict, list[dict], dict, pd.DataFrame]:
    """A gate result, the training batches of ``weeks`` weeks, the run's lineage tags (long ids,
    a frozen encoder) and a per-category table, as a season of that length leaves them."""
    batches = [{"batch_id": f"fashion-2026-{1 + w // 4:02d}-{1 + 7 * (w % 4):02d}", "listings": 180 + w,
                "status": "partial" if w % 5 == 0 else "accepted", "rows": 200, "accepted_rows": 190 - w % 3,
                "rejected_rows": 10 + w % 3,
                "validation_id": f"listings_batch/fashion-2026-{1 + w // 4:02d}-{1 + 7 * (w % 4):02d}-"
                                 f"{'x' * 40}/20260105T000000.000000Z/listings-listings_batch-{w}",
                "data_docs_page": f"/state/gx/validations/{w}.html"} for w in range(weeks)]
    lineage = {"mlflow_run_id": RUN_ID, "data_rev": "a" * 40, "workspace_commit": "b" * 40,
               "listings_md5": "c" * 32 + ".dir", "golden_rev": "d" * 32 + ".dir", "git_commit": "e" * 40,
               "params_hash": "f" * 64, "dag_id": "listing_classifier_weekly", "airflow_run_id": AIRFLOW_RUN,
               "encoder_id": "efficientnet_lite0-" + "1" * 12, "encoder_weights_source":
               "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-weights/"
               "tf_efficientnet_lite0-0aa007d2.pth", "encoder_weights_licence": "Apache-2.0",
               "encoder_weights_sha256": "9" * 64, "gx_data_docs": "/state/gx/index.html",
               "gx_validation_ids": json.dumps({b["batch_id"]: b["validation_id"] for b in batches[-6:]})}
    result = {"decision": "rejected", "reason": "the delta's 95% interval includes zero; " * 40,
              "version": "23", "champion_version": "21", "candidate_score": 0.61, "champion_score": 0.6,
              "delta": 0.01, "interval": [-0.004, 0.024], "candidate_accuracy": 0.7, "champion_accuracy": 0.69,
              "golden_rev": lineage["golden_rev"], "n_golden": 900, "mode": "bootstrap", "experiment_id": "1",
              "failing_slices": ["Clothing > Women > Dresses > Maxi dresses"],
              "leaves_without_golden": [f"Clothing > Women > Category number {i} with a long name"
                                        for i in range(60)],
              "serving_check": {"ok": True, "detail": "5 rows predicted " * 60},
              "coverage": {"candidate": {"coverage": 0.5, "auto_precision": 0.9, "value_coverage": 0.6},
                           "champion": {"coverage": 0.45, "auto_precision": 0.91, "value_coverage": 0.55},
                           "max_drop": 0.05, "note": "coverage held " * 80},
              "golden_label_issues": {"flagged": 4, "scored_by": "21", "artifact": "label_issues/golden.csv"}}
    per_class = pd.DataFrame({"category_path": [f"Clothing > Women > Leaf {i} " + "y" * 90 for i in range(12)],
                              "support": 30, "value": [100.0 - i for i in range(12)], "recall_candidate": 0.7,
                              "recall_champion": 0.6, "delta": 0.1})
    return result, batches, lineage, per_class


def mlflow_description_limit() -> int:
    """MLflow 3's limit on a model version description: the SQL registry's column length."""
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

    return SqlModelVersion.description.type.length


def test_a_long_season_description_fits_and_ends_with_its_last_lineage_row():
    from promotion.registry import DESCRIPTION_CHARS
    from promotion.report import markdown_report

    assert DESCRIPTION_CHARS <= mlflow_description_limit() == 5000
    for weeks in (1, 3, 25, 60):
        result, batches, lineage, per_class = season(weeks)
        text = markdown_report(result, per_class, lineage, 12, batches)
        assert len(text) <= DESCRIPTION_CHARS - 200, (weeks, len(text))  # room for the review headline
        # the last row whole: the Airflow run (an id this long is shown to 100 characters)
        assert text.splitlines()[-1] == f"| the Airflow run that trained it | `{AIRFLOW_RUN[:99]}…` |"
        assert "| the platform's code (this repository) | `" + "e" * 40 + "` |" in text
        assert "| its weights file (SHA-256) | `" + "9" * 64 + "` |" in text
        assert "| its weights' licence | `Apache-2.0` |" in text
        assert "[-0.0040, +0.0240]" in text and "**REJECTED**" in text
        assert f"](#/experiments/1/runs/{RUN_ID}/artifacts/lineage/lineage.md)" in text
        assert f"{len(batches)} batch(es)" in text
        assert f"| {batches[-1]['batch_id']} | {batches[-1]['listings']} |" in text


def test_the_description_is_stored_whole_by_a_real_registry(tmp_path):
    import mlflow

    from promotion.report import markdown_report

    result, batches, lineage, per_class = season(30)
    text = markdown_report(result, per_class, lineage, 12, batches)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("m")
    version = client.create_model_version("m", str(tmp_path), description=text).version
    stored = client.get_model_version("m", version).description
    assert stored == text and len(stored) <= mlflow_description_limit()
    assert stored.splitlines()[-1].startswith("| the Airflow run that trained it | `manual__2026-06-01")


def test_gx_result_ids_are_links_through_the_airflow_ui(monkeypatch):
    from promotion.report import lineage_markdown, markdown_report

    monkeypatch.delenv("LCP_AIRFLOW_UI_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__PORT", "8793")  # what make ui exports to its processes
    result, batches, lineage, per_class = season(4)
    text = markdown_report(result, per_class, lineage, 5, batches)
    assert "localhost:8080" not in text
    assert "[GX Data Docs](http://localhost:8793/data-docs/index.html)" in text
    gx = batches[-1]["validation_id"]
    assert f"`](http://localhost:8793/lcp/data-docs/{gx})" in text  # was plain text
    monkeypatch.setenv("LCP_AIRFLOW_UI_URL", "https://airflow.example/ui/")
    assert f"(https://airflow.example/ui/lcp/data-docs/{gx})" in markdown_report(result, per_class, lineage, 5,
                                                                                   batches)
    full = lineage_markdown(lineage, season(40)[1])
    assert full.count("/lcp/data-docs/") == 40 + 4  # every batch, and this run's 4 GX results
    assert f"[`{gx}`](https://airflow.example/ui/lcp/data-docs/{gx})" in full
    assert full.rstrip().splitlines()[-1] == f"| the Airflow run that trained it | `{AIRFLOW_RUN}` |"
