"""Register: log the trained model to MLflow and register it as the ``challenger``.

The MLflow run holds the params, the metrics of ``metrics.json``, the per-epoch training curves,
the training, validation and golden sets as MLflow datasets, the batches they came from
(:mod:`promotion.lineage`), the confusion matrix, the predictions, and lineage tags (git commit of the platform, DVC data revision, params hash,
Airflow dag_id / run_id). The model is a pyfunc (``training.serving``) with a signature,
shipped with the code it needs. Registering the same workspace commit again (a retried task, or a week with no new data,
where data, code and params are unchanged) returns the version already registered.

CLI: ``python -m promotion.register --data-rev SHA --workspace-commit SHA`` (the store's and the
golden set's DVC hashes are read from the workspace at ``--data-rev``); prints the
:class:`common.results.RegisterResult` as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from common.cli import configure_logging
from common.params import PROJECT_ROOT, Params, load_params
from common.results import DataVersionResult, RegisterResult, ValidateResult
from common.state import State
from ingestion.manifest import read_manifest
from promotion.registry import (
    ALIAS_CHALLENGER,
    TAG_VALUE_CHARS,
    ensure_experiment,
    golden_frame,
    mlflow_client,
    set_version_tags,
)

logger = logging.getLogger(__name__)


def model_signature(params: Params):
    """The served model's signature (``training.serving.model_signature``): listings in,
    category path + probability out; ``title`` required unless the model has no text branch
    (``train.branches: image``, a catalog without titles)."""
    from training.serving import model_signature as signature

    return signature(title=params.train.branches != "image")


SERVING_DISTRIBUTIONS = ("mlflow", "cloudpickle", "torch", "torchvision", "numpy", "pandas", "pillow",
                         "pydantic", "pyyaml", "scikit-learn", "scipy")
"""The distributions the served model's code (``training/`` and ``common/``, shipped as
``code_paths``) imports when MLflow loads it: its pip requirements (scikit-learn and SciPy for
the title expert's TF-IDF features, ``training.title_expert``)."""


ENCODER_DISTRIBUTIONS = ("timm",)
"""What a frozen-encoder model imports besides (``training.encoders`` builds the encoder with timm;
its weights file ships as an artifact, so no weights package is required)."""


def serving_requirements(frozen_encoder: bool = False) -> list[str]:
    """The served model's pip requirements: :data:`SERVING_DISTRIBUTIONS` (and, with
    ``frozen_encoder``, :data:`ENCODER_DISTRIBUTIONS`) pinned at the versions installed here
    (public version: a local label such as ``+cpu`` is left out, as MLflow does).

    Given explicitly because MLflow's inference (``mlflow.models.infer_pip_requirements``: a
    subprocess that loads the model, about a fifth of the register task) listed this platform's
    own distribution, which no package index holds, and left out Pillow, pydantic and PyYAML.
    """
    from importlib.metadata import version

    from packaging.version import Version

    names = SERVING_DISTRIBUTIONS + (ENCODER_DISTRIBUTIONS if frozen_encoder else ())
    return [f"{name}=={Version(version(name)).public}" for name in names]


def platform_commit() -> str:
    """Git commit of the platform checkout ("unknown" outside a git checkout)."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def _flat(prefix: str, value, out: dict) -> dict:
    """Flattens nested params to MLflow param keys (``a.b.c``; category paths ``A > B`` -> ``A/B``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            key = re.sub(r"[^\w\-. :/]", "_", str(k).replace(" > ", "/"))
            _flat(f"{prefix}.{key}" if prefix else key, v, out)
    else:
        out[prefix] = value
    return out


def lineage_tags(params: Params, data: DataVersionResult, workspace_commit: str, dag_id: str,
                 run_id: str) -> dict[str, str]:
    """The lineage every run carries (the version gets :data:`promotion.registry.VERSION_TAGS`).

    Args:
        params: the effective params (hashed).
        data: the version_data step's result (data revision, store and golden set hashes).
        workspace_commit: the workspace commit after ``dvc repro``.
        dag_id: Airflow dag id.
        run_id: Airflow run id.

    Returns:
        ``{tag: value}``; a hash that is missing has no tag (never the string ``"None"``).
    """
    tags = {
        "git_commit": platform_commit(),
        "data_rev": data.data_rev,
        "listings_md5": data.listings_md5,
        "golden_rev": data.golden_rev,
        "workspace_commit": workspace_commit,
        "params_hash": params.digest(),
        "dag_id": dag_id,
        "airflow_run_id": run_id,
    }
    return {key: str(value) for key, value in tags.items() if value not in (None, "")}


def encoder_entry(checkpoint: Path) -> dict | None:
    """The checkpoint's pretrained-encoder record (``training.train.encoder_record``) with its
    mode under ``"image_encoder"`` (``frozen`` or ``finetune``), None for a model whose image
    branch was trained from scratch."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    encoder = ckpt.get("encoder")
    return None if encoder is None else {**encoder, "image_encoder": ckpt.get("image_encoder", "frozen")}


def encoder_tags(encoder: dict | None) -> dict[str, str]:
    """Run tags of a pretrained encoder (the version description shows them): ``image_encoder``
    (``scratch``, ``frozen`` or ``finetune``) and, for a pretrained one, ``encoder_id``,
    ``encoder_arch``, ``encoder_image_size``, ``encoder_weights_source``,
    ``encoder_weights_licence``, ``encoder_weights_sha256`` (the weights it started from)."""
    if encoder is None:
        return {"image_encoder": "scratch"}
    w = encoder["weights"]
    return {"image_encoder": encoder.get("image_encoder", "frozen"), "encoder_id": encoder["id"], "encoder_arch": encoder["spec"]["arch"],
            "encoder_image_size": str(encoder["spec"]["image_size"]),
            "encoder_weights_source": w["source"], "encoder_weights_licence": w["licence"],
            "encoder_weights_sha256": w["sha256"]}


def encoder_weights_file(encoder: dict) -> str:
    """The weights file the model's encoder was loaded from, to ship with the model.

    Raises:
        FileNotFoundError: when the file is gone or is no longer the one trained with (sha256).
    """
    import hashlib

    path = encoder["weights"].get("path")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"the encoder's weights file {path!r} ({encoder['weights']['source']}) "
                                "is not here: the model cannot be shipped with it")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != encoder["weights"]["sha256"]:
        raise FileNotFoundError(f"the encoder's weights file {path} has sha256 {digest[:12]}..., the model "
                                f"was trained with {encoder['weights']['sha256'][:12]}...")
    return str(path)


def register_challenger(state: State, params: Params, data: DataVersionResult, workspace_commit: str,
                        dag_id: str = "manual", run_id: str = "manual",
                        validation: ValidateResult | None = None) -> RegisterResult:
    """Logs the workspace's trained model and registers it with alias ``challenger``.

    Args:
        state: the state folder (its workspace holds models/, metrics.json, reports/).
        params: the effective params of the run.
        data: the version_data step's result (``data_rev``, ``listings_md5``, ``golden_rev``).
        workspace_commit: the workspace commit after ``dvc repro``.
        dag_id: Airflow dag id (lineage).
        run_id: Airflow run id (lineage).
        validation: the validate step's result, optional (its ``data_docs`` and
            ``validation_ids`` become the run tags ``gx_data_docs`` and ``gx_validation_ids``).

    Returns:
        The model version, its MLflow run and its ``models:/`` URI. Registering a workspace
        commit again returns the version already registered for it.
    """
    import mlflow

    from promotion import lineage  # mlflow at import: only when registering
    from training.serving import ListingClassifierModel

    client = mlflow_client(state)
    name = params.registry.model_name
    tags = lineage_tags(params, data, workspace_commit, dag_id, run_id)
    existing = client.search_model_versions(
        f"name = '{name}' and tags.workspace_commit = '{workspace_commit}'")
    if existing:
        v = existing[0]
        return RegisterResult(version=str(v.version), run_id=v.run_id, model_uri=f"models:/{name}/{v.version}")

    ws = state.workspace
    metrics = json.loads((ws / "metrics.json").read_text())
    experiment_id = ensure_experiment(state, params)
    from training.serving import model_input
    example = model_input(golden_frame(state).head(3))
    checkpoint = ws / "models" / "model.pt"
    train_log = ws / "models" / "train_log.json"
    log = json.loads(train_log.read_text()) if train_log.exists() else {}
    # the run starts when training started, so its duration in the UI is the training's
    started_ms = int((checkpoint.stat().st_mtime - float(log.get("total_seconds") or 0.0)) * 1000)
    created = client.create_run(experiment_id, start_time=started_ms, run_name=f"{dag_id}/{run_id}")
    with mlflow.start_run(run_id=created.info.run_id) as run:
        mlflow.log_params(_flat("", params.to_dict(), {}))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        excluded = ws / "data" / "prepared" / "excluded.json"  # training.prepare's label-issue record
        if excluded.exists():
            record = json.loads(excluded.read_text())
            mlflow.log_metrics({"label_issues_flagged": float(record["flagged"]),
                                "label_issues_excluded": float(record["excluded"])})
            mlflow.set_tag("label_issues_policy", record["policy"])
        lineage.log_epoch_metrics(client, run.info.run_id, log, started_ms)
        splits = lineage.read_splits(ws)
        lineage.log_datasets(splits, ws, workspace_commit)
        batches = lineage.training_batches(splits, read_manifest(state.manifest))
        lineage.log_batches(client, run.info.run_id, batches)
        pretrained, source, precision, init = "unknown", "unknown", "unknown", "unknown"
        if train_log.exists():
            pretrained = str(log.get("pretrained", "unknown"))
            init = str(log.get("init", "scratch"))  # train logs before warm start: from scratch
            source = str(log.get("weights_source") or ("none: no image branch" if params.train.branches == "text"
                                                        else "none: trained from scratch"))
            precision = f"{log.get('device', 'unknown')} {log.get('precision', 'unknown')}"
            mlflow.log_artifact(str(train_log), "training")
        for report in ("reports/confusion_matrix.png", "reports/predictions.csv", "reports/golden_probs.npz",
                       "metrics.json"):
            if (ws / report).exists():
                mlflow.log_artifact(str(ws / report), "evaluation")
        run_tags = {**tags, "pretrained_weights": pretrained, "pretrained_weights_source": source,
                    "backbone": params.train.backbone,
                    "training_precision": precision, "lcp.init": init}
        encoder = encoder_entry(checkpoint)
        run_tags.update(encoder_tags(encoder))
        if validation is not None and validation.data_docs:
            run_tags["gx_data_docs"] = str(validation.data_docs)
        if validation is not None and validation.validation_ids:
            run_tags["gx_validation_ids"] = json.dumps(validation.validation_ids)[:TAG_VALUE_CHARS]
        mlflow.set_tags(run_tags)
        from promotion.report import lineage_markdown

        client.log_text(run.info.run_id, lineage_markdown({**run_tags, "mlflow_run_id": run.info.run_id}, batches),
                        lineage.LINEAGE_ARTIFACT)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ListingClassifierModel(),
            artifacts={"checkpoint": str(checkpoint),
                       **({} if encoder is None else {"encoder_weights": encoder_weights_file(encoder)})},
            code_paths=[str(ws / "training"), str(ws / "common")],
            signature=model_signature(params),
            input_example=example,
            pip_requirements=serving_requirements(frozen_encoder=encoder is not None),
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    # the run keeps them all (the encoder and its weights included, shown in the description);
    # the version those a reviewer filters by
    set_version_tags(client, name, version, {**run_tags, "mlflow_run_id": run.info.run_id})
    client.set_registered_model_alias(name, ALIAS_CHALLENGER, version)
    logger.info(f"[register] {name} version {version} (run {run.info.run_id}) -> alias {ALIAS_CHALLENGER}")
    return RegisterResult(version=version, run_id=run.info.run_id, model_uri=f"models:/{name}/{version}")


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI (module docstring); prints the result as JSON and returns 0."""
    configure_logging()
    from ingestion.versioning import data_version_at

    parser = argparse.ArgumentParser(prog="python -m promotion.register", description=__doc__.split("\n")[0])
    parser.add_argument("--data-rev", required=True)
    parser.add_argument("--workspace-commit", required=True)
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    state = State.from_env()
    params = load_params(args.params or Path(state.workspace) / "params.yaml")
    data = data_version_at(state, args.data_rev)
    print(json.dumps(register_challenger(state, params, data, args.workspace_commit).to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
