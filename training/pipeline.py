"""The training pipeline's run: ``dvc repro`` (prepare -> train -> evaluate) in the state's DVC
workspace, after putting the model training starts from into ``models/init``.

:func:`run_pipeline` is the DAG's ``train_evaluate`` task: under the workspace lock
(:func:`ingestion.workspace.workspace_lock`) it clears stale git/DVC locks, makes sure the
retired-categories file prepare depends on exists (:func:`ensure_retired_file`), asks the
registry for the champion (:func:`fetch_init`, ``train.init: champion``), adds ``models/init`` to
DVC, runs ``dvc repro``, commits ``dvc.lock`` and pushes the outputs. (Re-running a registered
version's pipeline from its workspace commit is ``promotion.reproduce``.)

The workspace itself, and the one way our code runs git and DVC in it, is
:mod:`ingestion.workspace`; the registry's client and alias lookup are :mod:`common.tracking`.

CLI: ``python -m training.pipeline`` runs :func:`run_pipeline` on ``LCP_STATE_DIR`` and prints
its result as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from common.files import atomic_write
from common.params import Params, load_params
from common.results import ReproduceResult
from common.state import State
from common.store import disk_full_errors
from common.tracking import ALIAS_CHAMPION, alias_version, mlflow_client
from ingestion.workspace import (
    VersioningError,
    clear_stale_locks,
    commit,
    run_dvc,
    workspace_lock,
    write_store_version,
)

log = logging.getLogger(__name__)

INIT = "models/init"
"""The model a run may start from (``train.init``), relative to the workspace: one DVC output
(``models/init.dvc``) and a dependency of the train stage, so a new champion re-runs training and
a workspace commit pins the start too (``promotion.reproduce`` pulls it). It holds ``init.json``
always and the champion's ``model.pt`` when a run starts from it (:func:`fetch_init`)."""


def fetch_init(state: State, params: Params) -> dict:
    """Puts the model the train stage starts from into ``<workspace>/models/init`` (:data:`INIT`).

    With ``train.init: champion`` and a registered version holding the alias ``champion``, its
    checkpoint (the ``model.pt`` of its MLflow model) is downloaded there and ``init.json`` says
    ``{"init": "champion", "model": name, "version": "N", "run_id": ...}``; otherwise ``init.json``
    says ``{"init": "scratch", "reason": ...}`` and no checkpoint is left there. The file holds no
    time stamp: the same champion gives the same bytes, so ``dvc repro`` re-runs train only when
    the champion (or the choice) changed. Whether the champion's architecture fits is the train
    stage's decision (``training.warm_start.init_model``), made with the params it trains with.

    Args:
        state: the state folder (its workspace and tracking store).
        params: the effective params (``train.init``, ``registry.model_name``).

    Returns:
        The ``init.json`` content written.

    Raises:
        RuntimeError: when the champion exists but its checkpoint cannot be downloaded (an
            unreachable store must not silently turn a warm start into a cold one).
        mlflow.exceptions.MlflowException: when the registry cannot be asked (see
            ``promotion.registry.alias_version``).
    """
    folder = state.workspace / INIT
    folder.mkdir(parents=True, exist_ok=True)
    # the line `dvc add` writes, written first: a commit between this and the add (a failed add,
    # then the next run's version_data) must not put a checkpoint into git
    ignore = folder.parent / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if f"/{folder.name}" not in lines:
        ignore.write_text("".join(f"{line}\n" for line in [*lines, f"/{folder.name}"]))
    checkpoint = folder / "model.pt"
    spec: dict = {"init": "scratch", "reason": "train.init is scratch"}
    if params.train.init == "champion":
        import tempfile

        import mlflow

        name = params.registry.model_name
        client = mlflow_client(state)
        version = alias_version(client, name, ALIAS_CHAMPION)
        if version is None:
            spec = {"init": "scratch", "reason": f"no {ALIAS_CHAMPION} of {name} yet"}
        else:
            with tempfile.TemporaryDirectory(dir=state.root) as tmp:
                try:
                    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
                    found = next(local.rglob("model.pt"))
                except Exception as exc:  # any failure to fetch the champion's checkpoint
                    raise RuntimeError(f"the {ALIAS_CHAMPION} (version {version}) checkpoint cannot be "
                                       f"downloaded for train.init champion: {exc}") from exc
                os.replace(found, checkpoint)
            spec = {"init": "champion", "model": name, "version": version,
                    "run_id": client.get_model_version(name, version).run_id}
    if spec["init"] == "scratch":
        checkpoint.unlink(missing_ok=True)
    (folder / "init.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("train init: %s", spec)
    return spec


RETIRED = Path("data") / "retired_categories.json"
"""The retired categories (``validation.taxonomy.write_retired``), a dependency of prepare."""


def ensure_retired_file(ws: Path) -> bool:
    """Writes an empty retired-categories file when the workspace has none (nothing was ever
    retired), in the format ``validation.taxonomy.write_retired`` writes, so that prepare's DVC
    dependency exists and a later retirement re-runs prepare.

    Returns:
        Whether the file was written.
    """
    path = ws / RETIRED
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"retired": []}, indent=1) + "\n", encoding="utf-8"))
    return True


def pipeline_stages(ws: Path) -> list[str]:
    """The stage names of the workspace's ``dvc.yaml``, in file order."""
    import yaml

    return list((yaml.safe_load((ws / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {}))


def run_pipeline(state: State, note: str = "") -> ReproduceResult:
    """Runs ``dvc repro`` (prepare -> train -> evaluate), commits ``dvc.lock``, pushes outputs.

    Before the run, :func:`fetch_init` puts the model training starts from (``train.init`` of
    the workspace's params) into ``models/init``, which is added to DVC (``models/init.dvc``).

    Args:
        state: the state folder; its workspace must have been versioned once.
        note: appended to the commit message (e.g. the start of the data revision).

    Returns:
        The workspace commit after the run, ``metrics.json`` and the workspace folder.

    Raises:
        VersioningError: when there is no workspace yet, or a stage or DVC fails (the stage's
            output is in the message).
        common.store.DiskFullError: when the state folder's disk is full.
    """
    ws = state.workspace
    if not (ws / "dvc.yaml").exists():
        raise VersioningError(f"no DVC workspace at {ws}: run the version_data step first")
    with workspace_lock(state), disk_full_errors(state.root, "dvc repro"):
        clear_stale_locks(ws)
        ensure_retired_file(ws)
        write_store_version(ws)  # as version_data left it; a workspace from before it gets one
        fetch_init(state, load_params(ws / "params.yaml"))
        run_dvc(ws, "add", "-q", INIT)
        out = run_dvc(ws, "repro")
        log.info("dvc repro:\n%s", out[-6000:])
        rev = commit(ws, f"repro: prepare -> train -> evaluate {note}".strip())
        # the stages' outputs and the start model: the store and the golden set were pushed by
        # version_data (a failed push is retried there); a whole-workspace push checked every
        # object of the store on the remote (docs/measurements.md, session 21)
        run_dvc(ws, "push", *pipeline_stages(ws), f"{INIT}.dvc")
    metrics = json.loads((ws / "metrics.json").read_text())
    return ReproduceResult(workspace_commit=rev, metrics=metrics, workspace=str(ws))


def main(argv: list[str] | None = None) -> int:
    """``python -m training.pipeline``: runs :func:`run_pipeline` on the state folder
    (``LCP_STATE_DIR``; the workspace's own ``params.yaml``) and prints its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m training.pipeline", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    result = run_pipeline(State.from_env())
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
