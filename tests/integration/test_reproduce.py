"""Reproducibility: a registered version's data, code and params are restored from its workspace
commit and the DVC remote, `dvc repro --force` re-runs, and the metrics match the registered
ones (CPU, same seed and threads). Also `dvc metrics show` / `plots show` / `exp show` work in
the workspace, and the workspace lock serialises two runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.integration.test_promotion_registry import register_tiny

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registered(tiny_trained):
    return tiny_trained["state"], tiny_trained["params"], register_tiny(tiny_trained)


def test_reproduced_metrics_match_the_registered_ones(registered):
    from promotion.reproduce import reproduce_version

    state, params, v = registered
    # the data comes back from the remote, not from the live workspace's cache
    result = reproduce_version(state, params, v.version)
    assert result["workspace_commit"] and set(result["diffs"]) >= {"accuracy", "business_weighted_score"}
    assert result["match"], result
    # the re-run trained in the registered run's precision (amp auto could have timed otherwise)
    logs = [json.loads((root / "models" / "train_log.json").read_text())
            for root in (state.workspace, Path(result["workdir"]))]
    assert logs[1]["precision"] == logs[0]["precision"] and logs[1]["precision_probe"] is None


def test_dvc_metrics_plots_and_exp_show_work_in_the_workspace(registered):
    from ingestion.workspace import run_dvc

    state, _, _ = registered
    ws = state.workspace
    metrics = json.loads(run_dvc(ws, "metrics", "show", "--json"))
    assert "business_weighted_score" in json.dumps(metrics)
    run_dvc(ws, "plots", "show", "-o", str(state.root / "plots"))
    assert (state.root / "plots" / "index.html").exists()
    exp = run_dvc(ws, "exp", "show", "--json")
    assert "business_weighted_score" in exp


def test_workspace_lock_is_exclusive(registered):
    import subprocess

    from ingestion.workspace import VersioningError, workspace_lock

    state, _, _ = registered
    with workspace_lock(state, timeout_s=1):
        code = ("import sys; from common.state import State; from ingestion.workspace import workspace_lock\n"
                f"with workspace_lock(State.from_env({str(state.root)!r}), timeout_s=1): pass")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "another run holds the DVC workspace lock" in proc.stderr
    with workspace_lock(state, timeout_s=1):  # released: free again
        pass
    assert issubclass(VersioningError, RuntimeError)
