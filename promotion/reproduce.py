"""Reproduce a registered model version: restore its data, code and params, re-run the pipeline.

A version's tag ``workspace_commit`` names the DVC workspace commit that pinned its data (the
``.dvc`` pointers of the listings store's partitions and the golden set), code snapshot, params and
``dvc.lock``. This clones the workspace into ``<state>/reproduce/v<N>`` (the live workspace is
never touched, so no lock is needed), checks that commit out, pulls the data from the DVC remote
(``dvc pull``; S3 credentials from the environment), runs ``dvc repro --force``, and compares the
new ``metrics.json`` with the metrics logged on the version's MLflow run.

On CPU the training is deterministic for the same seed and thread count (``train.seed``,
``train.num_threads``) and precision, so the figures match exactly; across GPU kinds expect
small differences. The re-run's precision is the registered run's (``models/train_log.json``,
passed to the train stage as ``common.params.PRECISION_ENV``): with ``amp: auto`` a CPU with
native bf16 picks it by timing a step, and a timing near the bar can go either way.

CLI (``make reproduce VERSION=<n>``)::

    python -m promotion.reproduce --version 3 [--tolerance 1e-6]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common.params import PRECISION_ENV, Params, load_params
from common.state import State
from ingestion.versioning import data_pointer_names
from ingestion.workspace import VersioningError, run_dvc, run_git
from promotion.registry import mlflow_client

COMPARED = ("accuracy", "business_weighted_score", "macro_f1", "top5_accuracy")


def reproduce_version(state: State, params: Params, version: str, workdir: Path | None = None,
                      tolerance: float = 1e-6) -> dict:
    """Re-runs the pipeline of a registered version and compares its metrics.

    Args:
        state: the state folder (its workspace is the git source; its remote holds the data).
        params: the params (``registry.model_name`` only: the version's own params are restored).
        version: the model version.
        workdir: where to clone (default ``<state>/reproduce/v<version>``; replaced if present).
        tolerance: largest absolute metric difference counted as a match.

    Returns:
        ``{"version", "workspace_commit", "workdir", "metrics", "registered", "diffs",
        "max_abs_diff", "match"}``.

    Raises:
        VersioningError: when the commit is not in the workspace, or git / DVC fails.
    """
    client = mlflow_client(state)
    mv = client.get_model_version(params.registry.model_name, str(version))
    commit = mv.tags.get("workspace_commit", "")
    registered = client.get_run(mv.run_id).data.metrics
    target = Path(workdir or state.root / "reproduce" / f"v{version}")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    run_git(state.workspace.parent, "clone", "-q", str(state.workspace), str(target))
    try:
        run_git(target, "checkout", "-q", commit)
    except VersioningError as exc:
        raise VersioningError(f"version {version}'s workspace commit {commit!r} is not in {state.workspace}") from exc
    # no -q: it would silence DVC's ERROR line (e.g. S3 refusing the credentials)
    # the pointers versioning writes that this commit holds (a commit from before 2026-12 has
    # data/listings.dvc instead of the partitions', and older ones no data/label_issues.dvc)
    pointers = [f"{name}.dvc" for name in data_pointer_names(target) if (target / f"{name}.dvc").exists()]
    run_dvc(target, "pull", *pointers)
    if (target / "models" / "init.dvc").exists():  # the model its training started from (train.init)
        run_dvc(target, "pull", "models/init.dvc")
    # train in the precision the registered run trained in: with amp auto a CPU picks it by a
    # timing, which can go the other way on a re-run
    log = target / "models" / "train_log.json"
    precision = json.loads(log.read_text()).get("precision") if log.is_file() else None
    run_dvc(target, "repro", "--force", env={PRECISION_ENV: precision} if precision else None)
    metrics = json.loads((target / "metrics.json").read_text())
    diffs = {k: abs(float(metrics[k]) - float(registered[k])) for k in COMPARED
             if k in metrics and k in registered}
    max_diff = max(diffs.values(), default=float("inf"))
    return {"version": str(version), "workspace_commit": commit, "workdir": str(target),
            "metrics": {k: metrics[k] for k in diffs}, "registered": {k: registered[k] for k in diffs},
            "diffs": diffs, "max_abs_diff": max_diff, "match": max_diff <= tolerance}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promotion.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--version", required=True)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    result = reproduce_version(State.from_env(), load_params(args.params), args.version,
                               tolerance=args.tolerance)
    print(json.dumps(result, indent=2))
    return 0 if result["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
