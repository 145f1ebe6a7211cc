"""The workspace's git holds bookkeeping, never data: after a real DVC pipeline run (the session's
tiny trained state) every tracked file outside the code snapshot is a small file of a known kind;
the store's partitions, the pixel cache and the golden-sized reports (predictions, class
probabilities) are DVC's or nobody's. A workspace whose earlier commits hold them (before
2026-12) stops tracking them at its next commit, and keeps the files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.test_promotion_champion import copy_state

pytestmark = pytest.mark.integration

BOOKKEEPING = {
    ".dvc/config", ".dvc/.gitignore", ".dvcignore", "dvc.yaml", "dvc.lock", "params.yaml", "metrics.json",
    "data/store_version.json", "data/retired_categories.json", "models/train_log.json",
    "reports/baseline.json", "reports/embed_log.json", "reports/per_class.csv", "reports/confusion_matrix.png",
}
"""Tracked files of a trained workspace besides the code snapshot, ``.dvc`` pointers and
``.gitignore`` files: each O(1) or O(classes), none O(listings)."""


def _tracked(ws: Path) -> set[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ws, check=True, capture_output=True, text=True).stdout
    return {f for f in out.split("\0") if f}


def test_a_trained_workspace_tracks_bookkeeping_only(tiny_trained, tmp_path):
    from ingestion.workspace import PIXELS
    from training.pixels import PIXELS as TRAINING_PIXELS

    assert Path(PIXELS) == TRAINING_PIXELS
    ws = tiny_trained["state"].workspace
    assert (ws / PIXELS).is_dir() and any((ws / PIXELS).rglob("*.npy")), "the run decoded into the pixel cache"
    assert (ws / "reports" / "predictions.csv").is_file() and (ws / "reports" / "golden_probs.npz").is_file()
    tracked = _tracked(ws)
    data = {f for f in tracked if not f.startswith(("common/", "training/"))
            and not f.endswith((".dvc", ".gitignore")) and f not in BOOKKEEPING}
    assert data == set(), f"the workspace's git holds data: {sorted(data)[:10]}"
    assert any(f.startswith("data/listings/batches/") and f.endswith(".dvc") for f in tracked)
    # this store keeps its images beside the partitions (the layout before them): versioned by
    # DVC as an output of their own, not left out and not in git
    assert "data/listings/images.dvc" in tracked


def test_an_earlier_commit_of_data_leaves_the_index_and_stays_on_disk(tiny_trained, tmp_path):
    from ingestion.workspace import PIXELS, commit

    state = copy_state(tiny_trained["state"], tmp_path / "state")
    ws = state.workspace
    held = [*(p.relative_to(ws).as_posix() for p in (ws / PIXELS).rglob("*") if p.is_file()),
            "reports/predictions.csv", "reports/golden_probs.npz"]
    # as the code before 2026-12 committed them (cache: false outputs are not git-ignored)
    subprocess.run(["git", "add", "-f", "--", *held], cwd=ws, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "as before 2026-12"], cwd=ws, check=True)
    assert set(held) <= _tracked(ws)

    before = commit(ws, "next week")
    assert not set(held) & _tracked(ws)
    assert all((ws / f).is_file() for f in held), "the files stay on disk"
    assert commit(ws, "nothing changed") == before
