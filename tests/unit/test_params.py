"""params.yaml loads into the typed config, and the trigger form overrides it."""

from __future__ import annotations

import pydantic
import pytest

from common.params import load_params, run_params


def test_project_params_load_and_hash_is_stable():
    p = load_params()
    assert p.registry.model_name == "listing-classifier"
    assert p.train.backbone == "resnet18"
    assert p.digest() == load_params().digest()


def test_form_overrides_only_given_fields():
    base = load_params()
    p = run_params({"epochs": 2, "backbone": None, "min_improvement": 0.05, "unrelated": 1})
    assert p.train.epochs == 2
    assert p.train.backbone == base.train.backbone
    assert p.gate.min_improvement == 0.05
    assert p.digest() != base.digest()


def test_invalid_form_value_is_a_clear_error():
    with pytest.raises(pydantic.ValidationError, match="epochs"):
        run_params({"epochs": 0})


def test_unknown_key_in_params_file_is_refused(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(pydantic.ValidationError, match="epoch"):
        load_params(bad)


def test_every_param_is_a_valid_mlflow_param_key():
    """Category paths in the value table (``A > B``) must flatten to keys MLflow accepts."""
    from mlflow.utils.validation import _validate_param

    from promotion.register import _flat

    flat = _flat("", load_params().to_dict(), {})
    assert "score.value_table.Accessories/Watches" in flat
    for key, value in flat.items():
        _validate_param(key, str(value))
