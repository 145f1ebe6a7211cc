"""Typed view of ``params.yaml``, the one parameter file read by DVC stages and by our code.

Example:
    >>> from common.params import load_params
    >>> params = load_params("params.yaml")
    >>> params.train.backbone
    'resnet18'
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""Root of the project checkout (holds ``params.yaml``, ``dvc.yaml``, ``catalogs/``)."""

PARAMS_ENV = "LCP_PARAMS"
"""Environment variable naming another params file (e.g. a small one for tests)."""


PRECISION_ENV = "LCP_TRAIN_PRECISION"
"""Environment variable that pins a new training run's precision (``float32`` or ``bfloat16``)
instead of resolving ``train.amp``: ``promotion.reproduce`` sets it to the registered run's
precision, so that a re-run does not hang on the timing that ``amp: auto`` makes on a CPU."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestParams(_Frozen):
    max_batches: int = Field(10, ge=1, description="New batches ingested per run, at most.")


class ValidateParams(_Frozen):
    max_bad_row_fraction: float = Field(0.2, ge=0.0, le=1.0)
    title_min_length: int = Field(3, ge=0)
    title_max_length: int = Field(400, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    min_image_side: int = Field(16, ge=1)
    min_image_stddev: float = Field(2.0, ge=0.0, description="Grey-level std dev; below: blank.")
    max_price: float = Field(10_000_000.0, gt=0.0, description="Plausible price ceiling.")
    currencies: tuple[str, ...] = ("INR", "USD", "EUR", "GBP")
    drift_label_js_max: float = Field(0.3, ge=0.0, le=1.0)
    drift_price_ks_max: float = Field(0.3, ge=0.0, le=1.0)
    drift_min_rows: int = Field(50, ge=1)
    drift_blocks: bool = False


class PrepareParams(_Frozen):
    golden_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    golden_min_listings: int = Field(3, ge=1)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 42
    image_size: int = Field(64, ge=16, le=512)


class TrainParams(_Frozen):
    backbone: str = "resnet18"
    weights: str = "auto"
    branches: Literal["fused", "image", "text"] = "fused"
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    text_buckets: int = Field(32_768, ge=1024)
    text_dim: int = Field(128, ge=8)
    char_ngrams: tuple[int, ...] = Field((3,), description="Character n-gram lengths of title words.")
    description_words: int = Field(64, ge=0, description="Description words the text branch reads.")
    structured: bool = Field(True, description="Fused model: add the structured branch.")
    fields: tuple[str, ...] = Field(
        ("brand", "currency"),
        description="Categorical fields of the structured branch: canonical columns or keys of "
                    "the listing's catalog-declared attributes; a field a listing lacks adds no token.")
    field_buckets: int = Field(4096, ge=64)
    field_dim: int = Field(32, ge=4)
    hierarchical: bool = Field(True, description="One head per taxonomy level (else leaf only).")
    level_weights: tuple[float, ...] = Field((0.25, 0.5, 1.0), description="Loss weight per level, top first.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    branch_loss_weight: float = Field(0.0, ge=0.0, description="Fused: auxiliary leaf head per branch.")
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    sampling: Literal["uniform", "class_balanced"] = "uniform"
    balance_power: float = Field(0.5, ge=0.0, le=1.0,
                                 description="class_balanced: draw weight of a class ~ n_c ** -power.")
    early_stopping_patience: int = Field(0, ge=0, description="Epochs without a better val score; 0: off.")
    ema_decay: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Exponential moving average of the weights and BatchNorm buffers, updated every "
                    "optimizer step (torchvision reference's --model-ema); the average is what is "
                    "evaluated and kept. 0: off.")
    min_steps: int = Field(
        0, ge=0, description="Train at least this many optimizer steps: epochs are raised to "
                             "ceil(min_steps / steps per epoch) when train.epochs is fewer. 0: off.")
    crop_padding: int = Field(
        0, ge=0, description="Random-translation augmentation: pad each image side by this many "
                             "pixels and crop back to size (He et al. 2016). 0: off.")
    seed: int = 42
    deterministic: bool = False
    num_threads: int = Field(0, ge=0)
    workers: int = Field(0, ge=0, description="DataLoader worker processes assembling batches.")
    amp: bool | Literal["auto"] = Field(
        "auto", description="bf16 autocast. true: on CUDA and on a CPU with native bf16 (AVX512-BF16 "
                            "or AMX); auto: the same, but on such a CPU only when a measured "
                            "training step is clearly faster in bf16; false: fp32.")
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile the model (CUDA).")


class ScoreParams(_Frozen):
    default_value: float = Field(1.0, ge=0.0)
    level_credit: tuple[float, ...] = (0.0, 0.25, 0.5)
    value_table: dict[str, float] = Field(default_factory=dict)

    @field_validator("level_credit")
    @classmethod
    def _credits_in_unit_interval(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= c <= 1.0 for c in v):
            raise ValueError(f"level_credit values must lie in [0, 1], got {v}")
        return v


class GateParams(_Frozen):
    """The promotion gate's thresholds (see ``promotion.gate.decide``)."""

    min_improvement: float = Field(0.002, ge=0.0, description="Absolute score gain required.")
    min_relative_improvement: float = Field(
        0.0, ge=0.0, description="Gain required as a fraction of the champion's score.")
    floor_score: float = Field(0.8, ge=0.0, le=1.0)
    floor_accuracy: float = Field(0.8, ge=0.0, le=1.0)
    mode: Literal["point", "interval"] = Field(
        "interval", description="point: the score delta itself; interval: the lower bound of its "
                                "paired bootstrap interval must clear the required improvement.")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="Two-sided bootstrap interval level.")
    n_bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples.")
    bootstrap_seed: int = 0
    slice_top_n: int = Field(5, ge=0, description="Slices: top-N categories by business value.")
    max_slice_recall_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="A slice may lose at most this much leaf recall (0.05 = 5 points).")


class RegistryParams(_Frozen):
    model_name: str = "listing-classifier"
    experiment: str = "listing-classifier"


class Params(_Frozen):
    """All of ``params.yaml``; each field is one stage's group."""

    catalog: str = "catalogs/fashion.yaml"
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    score: ScoreParams = ScoreParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def with_overrides(self, overrides: dict[str, dict]) -> Params:
        """Returns a copy with some fields of some groups replaced.

        Args:
            overrides: ``{group: {field: value}}``, e.g. ``{"train": {"epochs": 2}}``.

        Raises:
            pydantic.ValidationError: when a group, field or value is not valid.
        """
        data = self.to_dict()
        for group, fields in overrides.items():
            if isinstance(fields, dict):
                data.setdefault(group, {}).update(fields)
            else:
                data[group] = fields
        return Params.model_validate(data)

    def to_dict(self) -> dict:
        """The params as plain data, with the group names of ``params.yaml``."""
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """SHA-256 (hex, 12 chars) of the params, key-order independent: the params hash tag."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def load_params(path: str | Path | None = None) -> Params:
    """Reads and validates a params file.

    Args:
        path: the YAML file; defaults to ``$LCP_PARAMS`` if set, else ``params.yaml`` at the
            project root.

    Returns:
        The frozen, validated params.

    Raises:
        FileNotFoundError: when the file does not exist.
        pydantic.ValidationError: when a value is missing a constraint or a key is unknown.
    """
    path = Path(path or os.environ.get(PARAMS_ENV) or PROJECT_ROOT / "params.yaml")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    return Params.model_validate(data)


def write_params(params: Params, path: str | Path) -> None:
    """Writes params as YAML (the format DVC reads)."""
    Path(path).write_text(yaml.safe_dump(params.to_dict(), sort_keys=False), encoding="utf-8")


FORM_FIELDS = {
    "epochs": ("train", "epochs"),
    "backbone": ("train", "backbone"),
    "branches": ("train", "branches"),
    "min_improvement": ("gate", "min_improvement"),
    "max_batches": ("ingest", "max_batches"),
}
"""Airflow trigger-form fields -> (params.yaml group, field) they override."""


def run_params(form: dict | None = None, path: str | Path | None = None) -> Params:
    """The params of one DAG run: ``params.yaml`` with the trigger form's values applied.

    Args:
        form: the DAG run's ``params`` (Airflow Params form); unknown keys are ignored,
            ``None`` values keep the file's value.
        path: the params file (default: the project's ``params.yaml``).

    Raises:
        pydantic.ValidationError: when a form value violates a constraint.
    """
    overrides: dict[str, dict] = {}
    for key, value in (form or {}).items():
        if key in FORM_FIELDS and value is not None:
            group, field = FORM_FIELDS[key]
            overrides.setdefault(group, {})[field] = value
    return load_params(path).with_overrides(overrides)
