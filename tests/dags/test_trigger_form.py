"""The trigger forms as Airflow 3's UI draws them from the DAGs' Params: a title on every field,
what an empty field means, and no toggle marked required."""

from __future__ import annotations

import pytest

from tests.conftest import PROJECT_ROOT


def ui_marks_required(schema: dict) -> bool:
    """Airflow 3.x's trigger form rule (``airflow/ui/src/components/FlexibleForm``, the
    ``isRequired`` helper): a field is required when its schema has a type that does not admit
    ``null``."""
    kind = schema.get("type")
    return bool(kind) and (not isinstance(kind, list) or "null" not in kind)


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return [bag.get_dag("listing_classifier_retraining"), bag.get_dag("listing_classifier_rollback")]


def test_every_field_has_a_title_and_says_what_empty_means(dags):
    for dag in dags:
        for name in dag.params:
            param = dag.params.get_param(name)
            schema = param.schema
            assert schema.get("title") and schema["title"] != name, (dag.dag_id, name, schema)
            assert param.description, (dag.dag_id, name)
            if "null" in (schema.get("type") or []) and schema.get("type") != ["boolean", "null"]:
                assert "empty:" in param.description, (dag.dag_id, name, param.description)


def test_a_toggle_is_not_a_required_field(dags):
    retraining = dags[0]
    toggles = [n for n in retraining.params if "boolean" in retraining.params.get_param(n).schema["type"]]
    assert toggles == ["retrain", "full_retrain", "require_approval"]
    for toggle in toggles:
        schema = retraining.params.get_param(toggle).schema
        assert not ui_marks_required(schema), schema
        assert retraining.params[toggle] is False
