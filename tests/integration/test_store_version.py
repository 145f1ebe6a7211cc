"""The pipeline's stages depend on the store's version file (``data/store_version.json``), not on
the store's files: real DVC on a copy of the session's tiny trained state. The file holds the
store's hash and each partition's pointer hash and table hash, and is committed with the data; a trained workspace is up to date; a new
partition, once versioned, changes the file and so the stages that read the store; ``dvc repro``
is never asked to walk ``data/listings``; the run pushes its stages' outputs to the remote."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tests.integration.test_promotion_champion import copy_state

pytestmark = pytest.mark.integration


def test_stages_follow_the_store_version_file(tiny_trained, fashion_dir, tmp_path):
    from common.store import partition_md5s
    from ingestion.versioning import version_data
    from ingestion.workspace import (
        STORE_VERSION,
        other_store_pointers,
        partition_pointers,
        run_dvc,
        run_git,
        store_hash,
    )
    from tests.integration.test_warm_start import add_new_leaf_batch

    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    readers = {name for name, stage in stages.items() if STORE_VERSION in stage.get("deps", [])}
    assert readers == {"embed", "prepare"}
    assert not any(d == "data/listings" for stage in stages.values() for d in stage.get("deps", []))

    state = copy_state(tiny_trained["state"], tmp_path / "state")
    ws = state.workspace
    version = json.loads((ws / STORE_VERSION).read_text())

    def expected() -> dict:
        pointers, tables = partition_pointers(ws), partition_md5s(state.listings_store)
        # this store keeps its images beside the partitions (data/listings/images): an output of its own
        others = other_store_pointers(ws)
        assert set(others) == {"images"}
        return {"listings_md5": store_hash({**pointers, "/images": others["images"]}),
                "partitions": {b: {"md5": md5, "table_md5": tables[b]} for b, md5 in pointers.items()},
                "other_outputs": others}

    assert version == expected() and version["partitions"]
    assert json.loads(run_git(ws, "show", f"HEAD:{STORE_VERSION}")) == version  # committed with the data
    assert "up to date" in run_dvc(ws, "status", *readers)

    add_new_leaf_batch(fashion_dir, state.listings_store)
    version_data(state, tiny_trained["params"], note="a new partition")
    after = json.loads((ws / STORE_VERSION).read_text())
    assert after["listings_md5"] != version["listings_md5"]
    assert after == expected() and len(after["partitions"]) == len(version["partitions"]) + 1
    status = run_dvc(ws, "status", *readers)
    assert status.count("changed deps") == 2 and STORE_VERSION in status, status


def test_the_pipeline_pushes_its_stages_outputs(tiny_trained):
    from ingestion.workspace import run_dvc

    # the session's trained workspace: everything its run cached is on its remote
    status = run_dvc(tiny_trained["state"].workspace, "status", "--cloud")
    assert "are in sync" in status, status
