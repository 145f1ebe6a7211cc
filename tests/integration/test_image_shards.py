"""Image checks in shards (``validation.image_shards``), reduced by ``validate``.

Two real weekly batches (120 fashion listings, published and ingested the way the DAG does it)
are validated twice from the same staged copy: once whole (no shard results: every image is
checked by ``validate``, as before shards existed) and once after the shards of 16 rows were
checked one by one as the DAG's mapped ``check_images`` tasks check them. In the first batch,
a listing's image was replaced by the image of a listing in another shard (a duplicate only the
reduce step can see) and another listing's image in that shard was truncated. One shard's result is made stale
(other image-check params) and one is removed (a shard task that never ran): their rows are
checked by ``validate``. Both validations must give the same reports, store and rejected rows.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import load_catalog
from common.params import load_params
from common.state import State
from common.store import read_store
from ingestion.feed import publish
from ingestion.ingest import ingest_new_batches

pytestmark = pytest.mark.integration

SHARD = 16


@pytest.fixture(scope="module")
def staged(tmp_path_factory, fashion_dir) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("shards")
    catalog = load_catalog("catalogs/fashion.yaml")
    batches = publish(fashion_dir, root / "feed", weeks=2, catalog=catalog, limit=120)
    first = root / "feed" / batches[0]
    ids = pd.read_csv(first / catalog.listings_file, dtype=str)["id"].tolist()
    assert len(ids) > 2 * SHARD + 5
    # a duplicate across shards: row 2 * SHARD + 1 carries row 1's image
    shutil.copyfile(first / "images" / f"{ids[1]}.jpg", first / "images" / f"{ids[2 * SHARD + 1]}.jpg")
    truncated = first / "images" / f"{ids[2 * SHARD + 5]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    state = State(root / "state")
    ingested = ingest_new_batches(state, load_params(), None, str(root / "feed"))
    assert list(ingested.staged) == batches
    return state.root, batches


def _validated(root: Path, batches: list[str], dst: Path, shards: bool, caplog) -> tuple:
    from validation.image_shards import ImageShard, check_image_shard, checks_dir, plan_image_shards
    from validation.staged import validate_staged_batches

    shutil.copytree(root, dst, symlinks=True)
    state = State(dst)
    params = load_params().with_overrides({"validate": {"image_shard_size": SHARD}})
    staged = batches
    planned = None
    if shards:
        planned = plan_image_shards(state, params, staged)
        for shard in planned:
            check_image_shard(state, params, ImageShard.from_xcom(shard.to_xcom()))
        stale = checks_dir(state, staged[0]) / f"{SHARD}-{2 * SHARD}.json"
        record = json.loads(stale.read_text())
        record["params"] = "0" * 64  # made with other image-check params
        stale.write_text(json.dumps(record))
        (checks_dir(state, staged[1]) / f"0-{SHARD}.json").unlink()  # a shard that never ran
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="validation"):
        result = validate_staged_batches(state, params, staged)
    store = read_store(state.listings_store).sort_values("listing_id").reset_index(drop=True)
    rejected = {b: pd.read_csv(state.quarantine / b / "rejected.csv", dtype=str)["listing_id"].tolist()
                for b in staged if (state.quarantine / b / "rejected.csv").exists()}
    return state, result, store, rejected, planned, caplog.text


def test_sharded_image_checks_validate_as_the_whole_batch_does(staged, tmp_path, caplog):
    root, batches = staged
    _, whole, store_whole, rejected_whole, _, _ = _validated(root, batches, tmp_path / "whole", False, caplog)
    state, sharded, store_sharded, rejected_sharded, planned, logged = _validated(
        root, batches, tmp_path / "sharded", True, caplog)

    rows = {b: len(pd.read_csv(state.staging / b / "styles.csv", dtype=str)) for b in batches}
    assert [(s.batch_id, s.start, s.stop) for s in planned] == [
        (b, i, min(i + SHARD, rows[b])) for b in batches for i in range(0, rows[b], SHARD)]
    assert len(planned) == sum(math.ceil(n / SHARD) for n in rows.values())
    # the reduce step used every usable shard and checked the stale and the missing ones itself
    assert f"batch {batches[0]}: {rows[batches[0]] - SHARD} image checks from its shards, {SHARD} checked here" \
        in logged
    assert f"batch {batches[1]}: {rows[batches[1]] - SHARD} image checks from its shards, {SHARD} checked here" \
        in logged
    assert "were made from another listings file, params or keys" in logged
    # the same outcome as validating whole, the cross-shard duplicate and the bad image included
    first = sharded.reports[batches[0]]
    assert first.status == "partial"
    assert first.reasons.get("duplicate_image") == 1 and first.reasons.get("image_undecodable") == 1, first.reasons
    for b in batches:
        a, w = sharded.reports[b], whole.reports[b]
        assert (a.status, a.accepted_rows, a.rejected_rows, a.reasons) == (w.status, w.accepted_rows,
                                                                           w.rejected_rows, w.reasons)
    assert rejected_sharded == rejected_whole
    pd.testing.assert_frame_equal(store_sharded.drop(columns=["ingested_at"]), store_whole.drop(columns=["ingested_at"]))
    # the results are removed once the batch is validated
    assert not any((state.root / "image_checks" / b).exists() for b in batches)


def test_a_shard_of_an_unreadable_batch_checks_nothing_and_says_why(staged, tmp_path):
    from validation.image_shards import ImageShard, check_image_shard, plan_image_shards

    root, batches = staged
    shutil.copytree(root, tmp_path / "state", symlinks=True)
    state = State(tmp_path / "state")
    (state.staging / batches[1] / "styles.csv").write_bytes(b"\xff\xfe not a listings table \x00")
    params = load_params().with_overrides({"validate": {"image_shard_size": SHARD}})
    planned = plan_image_shards(state, params, batches)
    assert {s.batch_id for s in planned} == {batches[0]}  # validate quarantines the other, with its reason
    result = check_image_shard(state, params, ImageShard(batch_id=batches[1], start=0, stop=SHARD))
    assert result.checked == 0 and result.result_file is None and result.skipped
