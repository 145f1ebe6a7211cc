"""The step results the DAG passes through XCom: one shape each, JSON both ways, and the keys the
UI plugin and the approval request read."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from common.results import (
    BatchReport,
    DataVersionResult,
    GateResult,
    IngestResult,
    PromoteResult,
    RefusedBatch,
    RegisterResult,
    ReproduceResult,
    ReviewResult,
    ValidateResult,
)
from tests.conftest import PROJECT_ROOT

SHA = "0" * 40
GATE = GateResult(
    version="3", promote=True, decision="promoted", reason="score 0.8 beats the champion's 0.7",
    candidate_score=0.8, champion_score=0.7, delta=0.1, required_improvement=0.01,
    interval=(0.05, 0.15), confidence=0.95, mode="interval",
    slices=({"category": "A > B", "value": 1.0, "n": 3, "recall_candidate": 1.0, "recall_champion": 0.5,
             "drop": -0.5, "passed": True},),
    champion_version="2", candidate_accuracy=0.6, champion_accuracy=0.5, golden_rev="abc.dir", n_golden=40,
    serving_check={"ok": True, "detail": "5 predictions", "seconds": 2.5}, experiment_id="1")
RESULTS = [
    IngestResult(feed="/feed", ingested=("b-2026-11-02",), staged=("b-2026-11-02",),
                 refused=(RefusedBatch(batch_id="b\udcff-2026-11-03", reason="batch_name_invalid", detail="bytes",
                                       report="/q/_refused-1/report.json"),),
                 taxonomy="/staging/_taxonomy.json"),
    ValidateResult(accepted=("b1",), partial=("b2",), quarantined=("b3",), store_listings=7, data_docs="/gx/index.html",
                   validation_ids={"b1": "listings_batch/b1", "b2": "listings_batch/b2", "b3": None}),
    DataVersionResult(data_rev=SHA, listings_md5="d.dir", golden_rev="g.dir", remote="/remote", workspace="/ws",
                      added=("data/listings/batches/b1",), pushed=("data/listings/batches/b1",)),
    ReproduceResult(workspace_commit=SHA, metrics={"accuracy": 0.5, "per_level": {"1": 0.9}}, workspace="/ws"),
    RegisterResult(version="3", run_id="r1", model_uri="models:/listing-classifier/3"),
    GATE,
    PromoteResult(champion="3", moved=True, decision="promoted"),
    ReviewResult(version="3", approval="not required"),
]


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
def test_a_result_survives_xcom(result):
    """What a task returns is JSON (Airflow's XCom), and the next task gets the same object back."""
    sent = json.loads(json.dumps(result.to_xcom()))
    assert type(result).from_xcom(sent) == result
    with pytest.raises(ValidationError):  # one shape: no extra key is taken silently
        type(result).from_xcom({**sent, "unexpected": 1})
    with pytest.raises(ValidationError):
        type(result).from_xcom({k: v for k, v in sent.items() if k != next(iter(sent))})


def test_validation_reports_stay_out_of_xcom():
    full = ValidateResult(accepted=("b1",), partial=(), quarantined=(), store_listings=1, data_docs=None,
                          validation_ids={"b1": "v"}, reports={"b1": BatchReport(batch_id="b1", rows=10)})
    assert "reports" not in full.to_xcom() and full.to_dict()["reports"]["b1"]["rows"] == 10
    assert ValidateResult.from_xcom(full.to_xcom()).reports == {}
    assert ValidateResult(accepted=("b3", "b1"), partial=("b2",), quarantined=("b4",), store_listings=1,
                          data_docs=None, validation_ids={}).stored_batches == ("b1", "b2", "b3")


def test_the_approval_request_and_the_links_read_keys_the_results_carry(monkeypatch):
    """The DAG's approval templates read ``version`` and ``reason`` of the gate's XCom; the
    plugin's extra links read the register and promote XComs."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "plugins"))
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    import listing_classifier_links as links

    dag_text = (PROJECT_ROOT / "dags" / "listing_classifier_retraining.py").read_text()
    for key in ("version", "reason"):
        assert f"xcom_pull(task_ids='gate')['{key}']" in dag_text and key in GATE.to_xcom()

    class TI:
        dag_id, run_id, map_index, task_id = "listing_classifier_retraining", "manual__1", -1, "promote"

        def xcom_pull(self, task_ids, key):
            return {"register": RESULTS[4].to_xcom(), "promote": RESULTS[6].to_xcom()}[task_ids]

    assert [link.get_link(None, ti_key=TI()) for link in links.PROMOTE_LINKS] == [
        "/lcp/mlflow/runs/r1", "/lcp/mlflow/models/listing-classifier/versions/3",
        "/lcp/mlflow/models/listing-classifier/versions/3"]
