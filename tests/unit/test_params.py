"""params.yaml loads into the typed config, the trigger form overrides it, and the defaults
have one source: ``common.params`` equals ``params.yaml``, and ``training.model`` (with its branches' modules) has
none of its own."""

from __future__ import annotations

import inspect
import re

import pydantic
import pytest
import yaml
from pydantic import BaseModel

from common.params import PROJECT_ROOT, Params, TrainParams, load_params, run_params


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


def test_the_full_retrain_toggle_asks_when_on_and_keeps_the_files_value_when_off(tmp_path):
    assert run_params({"full_retrain": True}).train.full_retrain is True
    assert run_params({"full_retrain": False}).digest() == load_params().digest()
    on = tmp_path / "params.yaml"
    on.write_text((PROJECT_ROOT / "params.yaml").read_text().replace("full_retrain: false", "full_retrain: true"))
    assert run_params({"full_retrain": False}, on).train.full_retrain is True


def test_invalid_form_value_is_a_clear_error():
    with pytest.raises(pydantic.ValidationError, match="epochs"):
        run_params({"epochs": 0})


def test_unknown_key_in_params_file_is_refused(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(pydantic.ValidationError, match="epoch"):
        load_params(bad)


PROFILES = sorted((PROJECT_ROOT / "profiles").glob("*.yaml"))


def _season_params(tmp_path, profile):
    """``scripts/season.py``'s own merge of a profile over params.yaml, read back."""
    import sys

    sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
    from season import season_params

    from common.state import State

    return load_params(season_params(State(tmp_path / "state").ensure(), profile))


def test_there_is_a_season_profile():
    assert PROJECT_ROOT / "profiles" / "season.yaml" in PROFILES


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_run_profile_overrides_existing_params_with_valid_values(profile, tmp_path):
    """A profile (make season's) is applied over params.yaml: a renamed or misspelt key, or a
    value the typed config refuses, fails here rather than in the season's first task."""
    overrides = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    assert overrides, f"{profile.name} overrides nothing"
    params = _season_params(tmp_path, profile)
    for group, values in overrides.items():
        for key, value in values.items():
            assert getattr(getattr(params, group), key) == value, f"{group}.{key}"


def test_a_profile_naming_no_param_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  warm_epoch: 2\n", encoding="utf-8")
    with pytest.raises(pydantic.ValidationError, match="warm_epoch"):
        _season_params(tmp_path, bad)


def test_every_param_is_a_valid_mlflow_param_key():
    """Category paths in the value table (``A > B``) must flatten to keys MLflow accepts."""
    from mlflow.utils.validation import _validate_param

    from promotion.register import _flat

    flat = _flat("", load_params().to_dict(), {})
    assert "score.value_table.Accessories/Watches" in flat
    for key, value in flat.items():
        _validate_param(key, str(value))


# --- One source per default: params.yaml, the typed config and training.model agree ----------

def _yaml_file() -> dict:
    with open(PROJECT_ROOT / "params.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _groups() -> dict[str, type[BaseModel]]:
    """``params.yaml`` group name -> its pydantic model (``validate`` is ``validate_``'s alias)."""
    return {field.alias or name: field.annotation for name, field in Params.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}


def test_typed_defaults_equal_the_values_params_yaml_runs_with():
    """``Params()`` is what ``params.yaml`` says: a default changed in one place only fails here."""
    defaults, project = Params().to_dict(), load_params(PROJECT_ROOT / "params.yaml").to_dict()
    drift = []
    for group in sorted(set(defaults) | set(project)):
        d, p = defaults.get(group), project.get(group)
        if isinstance(d, dict) and isinstance(p, dict):
            drift += [f"{group}.{key}: common/params.py default {d.get(key)!r} != params.yaml {p.get(key)!r}"
                      for key in sorted(set(d) | set(p)) if d.get(key) != p.get(key)]
        elif d != p:
            drift.append(f"{group}: common/params.py default {d!r} != params.yaml {p!r}")
    assert not drift, "defaults drifted from params.yaml:\n" + "\n".join(drift)
    assert Params().digest() == load_params(PROJECT_ROOT / "params.yaml").digest()


def test_params_yaml_spells_out_every_config_field_and_no_other_key():
    """DVC reads params.yaml alone, so it lists every field; a key the config lacks is a typo."""
    data, groups = _yaml_file(), _groups()
    top_level = {field.alias or name for name, field in Params.model_fields.items()}
    assert set(data) == top_level, (f"params.yaml unknown groups {sorted(set(data) - top_level)}, "
                                    f"missing {sorted(top_level - set(data))}")
    problems = []
    for group, model in groups.items():
        fields, keys = set(model.model_fields), set(data[group])
        problems += [f"{group}.{k}: not a field of {model.__name__}" for k in sorted(keys - fields)]
        problems += [f"{group}.{k}: missing from params.yaml" for k in sorted(fields - keys)]
    assert not problems, "\n".join(problems)


def test_descriptions_live_once_in_the_typed_config():
    """Each field says what it means in ``Field(description=...)``; params.yaml keeps section
    headers only, so that no second, differing text grows beside a value."""
    undescribed = [f"{group}.{name}" for group, model in _groups().items()
                   for name, field in model.model_fields.items() if not field.description]
    assert not undescribed, f"fields without a description: {undescribed}"
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    trailing = [line for line in text.splitlines()
                if re.match(r"^\s*[^\s#].*\s#", line)]
    assert not trailing, "params.yaml: describe keys in common/params.py, not here:\n" + "\n".join(trailing)


MODEL_MODULES = ("training.model", "training.backbones", "training.encoders")
"""The modules the classifier is built from (the model and its branches)."""


def _model_signatures() -> dict[str, inspect.Signature]:
    """``{"<file> <name>": signature}`` of the classes and functions defined in :data:`MODEL_MODULES`."""
    import importlib

    found = {}
    for module in map(importlib.import_module, MODEL_MODULES):
        where = module.__name__.replace(".", "/") + ".py"
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj):
                found[f"{where} {name}.__init__"] = inspect.signature(obj.__init__)
            elif inspect.isfunction(obj):
                found[f"{where} {name}"] = inspect.signature(obj)
    return found


def test_training_model_has_no_default_of_its_own_for_a_train_param():
    """A constructor argument named like a ``train`` field has no default in the model's modules
    (the config's is the one), or, for a helper, exactly the config's."""
    config, signatures = TrainParams(), _model_signatures()
    classifier = "training/model.py ListingClassifier.__init__"
    assert classifier in signatures and "training/backbones.py build_backbone" in signatures
    disagree = []
    for where, sig in signatures.items():
        for name, parameter in sig.parameters.items():
            if name not in TrainParams.model_fields or parameter.default is inspect.Parameter.empty:
                continue
            if where == classifier or parameter.default != getattr(config, name):
                disagree.append(f"{where}({name}={parameter.default!r}); "
                                f"TrainParams().{name} is {getattr(config, name)!r}")
    assert not disagree, "\n".join(disagree)


def test_build_model_passes_every_train_param_the_classifier_takes(monkeypatch):
    """Each classifier argument that is a ``train`` field comes from the params given (values
    unlike the defaults, so that an argument left out or taken from elsewhere shows)."""
    from training import model

    config_args = set(inspect.signature(model.ListingClassifier.__init__).parameters) & set(TrainParams.model_fields)
    assert {"text_buckets", "structured", "weights"} <= config_args
    taken: dict = {}

    class Recorder:
        pretrained = False

        def __init__(self, *args, **kwargs):
            taken.update(kwargs)

    cfg = TrainParams(backbone="resnet50", weights="none", branches="text", structured=False,
                      text_buckets=2048, text_dim=16, field_buckets=128, field_dim=8,
                      dropout=0.3, branch_loss_weight=0.25, level_weights=(1.0, 2.0, 3.0))
    monkeypatch.setattr(model, "ListingClassifier", Recorder)
    model.build_model(["A > B > C", "A > B > D", "E > F > G"], cfg)
    assert config_args <= set(taken), f"not passed by name: {sorted(config_args - set(taken))}"
    for name in config_args - {"level_weights"}:  # level_weights: resolved to the tree's depth
        assert taken[name] == getattr(cfg, name), name
    assert list(taken["level_weights"]) == [1.0, 2.0, 3.0]


def test_a_state_folder_remembers_its_params(tmp_path, monkeypatch):
    """Without LCP_PARAMS, a step reads the state folder's own params.yaml (written by make demo
    and make season), not the checkout's: make ui on a season's state keeps the season's profile."""
    from common.params import PROJECT_ROOT, load_params, params_path, write_params

    monkeypatch.delenv("LCP_PARAMS", raising=False)
    monkeypatch.setenv("LCP_STATE_DIR", str(tmp_path))
    assert params_path() == PROJECT_ROOT / "params.yaml"  # a state without its own params
    season = load_params(PROJECT_ROOT / "params.yaml").with_overrides({"train": {"epochs": 3}})
    write_params(season, tmp_path / "params.yaml")
    assert params_path() == tmp_path / "params.yaml"
    assert load_params().train.epochs == 3
    monkeypatch.setenv("LCP_PARAMS", str(PROJECT_ROOT / "params.yaml"))  # an explicit file wins
    assert load_params().train.epochs == load_params(PROJECT_ROOT / "params.yaml").train.epochs


def test_the_demo_writes_its_profile_once_and_a_state_keeps_its_params(tmp_path):
    """``make demo`` trains with ``profiles/demo.yaml`` over params.yaml, written to the state's
    params.yaml; a state that already has one keeps it (``make ui`` and a rerun use what it was
    built with)."""
    import sys

    sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
    from demo import DEMO_PROFILE, profile_params

    from common.state import State

    state = State(tmp_path / "state").ensure()
    path = profile_params(state, DEMO_PROFILE)
    assert load_params(path).train.image_encoder == "frozen"
    path.write_text(path.read_text().replace("image_encoder: frozen", "image_encoder: scratch"))
    assert profile_params(state, DEMO_PROFILE) == path
    assert load_params(path).train.image_encoder == "scratch"
