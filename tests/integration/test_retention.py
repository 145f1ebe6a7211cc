"""Retention (``promotion.collect``): ``dvc gc`` keeps the champion's, the previous champion's and
the recent commits' data, and removes the rest from the workspace's DVC cache.

The session's tiny state is copied with a registry of its own; its trained commit is registered
as v1 and made champion. Two more trainings (other epochs, so other checkpoints) follow as new
workspace commits. With ``retention.keep_commits: 1`` the middle commit's checkpoint is neither
recent nor a champion's: it leaves the cache; the champion's and HEAD's stay, and the champion's
commit carries the ``lcp-champion`` tag. ``keep_commits: 0`` collects nothing. About 2 minutes.
"""

from __future__ import annotations

import os

import pytest
import yaml

from tests.integration.test_promotion_champion import copy_state, retrain
from tests.integration.test_promotion_registry import NAME, client_for

pytestmark = pytest.mark.integration


def _checkpoint_md5(ws, commit: str) -> str:
    from ingestion.workspace import run_git

    lock = yaml.safe_load(run_git(ws, "show", f"{commit}:dvc.lock"))
    return next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt")


def _cached(ws, md5: str) -> bool:
    return (ws / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def test_gc_keeps_the_champion_and_recent_commits_and_collects_the_rest(tiny_trained, tmp_path):
    from promotion.collect import collect_garbage
    from promotion.register import register_challenger

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    state = copy_state(tiny_trained["state"], tmp_path / "state")
    params = tiny_trained["params"].with_overrides({"retention": {"keep_commits": 1}})
    champion_commit = tiny_trained["trained"].workspace_commit
    v1 = register_challenger(state, params, tiny_trained["data"], champion_commit, "test_dag", "v1")
    client_for(state).set_registered_model_alias(NAME, "champion", v1.version)
    middle = retrain(state, epochs=1)
    head = retrain(state, epochs=3)
    ws = state.workspace
    md5 = {name: _checkpoint_md5(ws, c) for name, c in (("champion", champion_commit), ("middle", middle),
                                                         ("head", head))}
    assert len(set(md5.values())) == 3 and all(_cached(ws, m) for m in md5.values())

    off = collect_garbage(state, params.with_overrides({"retention": {"keep_commits": 0}}))
    assert off.skipped and all(_cached(ws, m) for m in md5.values())

    result = collect_garbage(state, params)
    assert result.kept == {"lcp-champion": champion_commit} and result.keep_commits == 1
    assert _cached(ws, md5["champion"]) and _cached(ws, md5["head"])
    assert not _cached(ws, md5["middle"])  # neither recent nor a champion's
    from ingestion.workspace import run_git

    assert run_git(ws, "rev-list", "-n", "1", "lcp-champion").strip() == champion_commit
