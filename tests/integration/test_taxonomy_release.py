"""New categories get in: held back, added to the taxonomy, released; retired; grouped for a decision.

Real components on real fashion rows: the session's tiny trained state is copied (its own
registry), a two-week feed is published whose declared taxonomy lacks two real categories of
the first week, and the real ingest and validate steps (GX, images, store) hold their listings
back. The tiny model becomes the champion and groups the held-back listings by its embeddings
(HDBSCAN). One category is added with the CLI, the other by the feed's own taxonomy file; the
next validate step releases both into a store partition of their own, recorded in the manifest
and the result, versioned with DVC into a growing golden set, and a second call releases nothing.
A store category is retired: the next week's listings of it are accepted with a warning, and
prepare leaves it out of train/val while the released category is trained on.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import load_catalog
from common.csv_safe import read_safe_csv
from ingestion.feed import publish
from tests.integration.test_promotion_champion import copy_state
from tests.integration.test_promotion_registry import client_for

pytestmark = pytest.mark.integration

FASHION = load_catalog("catalogs/fashion.yaml")
WEEK1, WEEK2 = "fashion-2026-11-02", "fashion-2026-11-09"
RELEASE = f"{WEEK1}.release-1"


def _iso_ingested_at(state) -> None:
    """The tiny fixture's store and golden set carry ``ingested_at`` as timestamps, validated
    batches as ISO 8601 strings (what validation writes); one type, so that the growing golden
    set can be written. Files are replaced, not written in place (they may share the DVC
    cache's inode)."""
    from common.store import batch_file, batch_ids

    files = [batch_file(state.listings_store, b) for b in batch_ids(state.listings_store)]
    for path in [*files, state.golden_dir / "golden.parquet"]:
        frame = pd.read_parquet(path)
        if frame["ingested_at"].dtype != object:
            frame["ingested_at"] = [t.isoformat() for t in frame["ingested_at"]]
            path.unlink()
            frame.to_parquet(path, index=False)


def _paths(batch_dir: Path) -> pd.Series:
    rows = pd.read_csv(batch_dir / "styles.csv", dtype=str)
    return rows["id"], rows["masterCategory"] + " > " + rows["subCategory"] + " > " + rows["articleType"]


@pytest.fixture(scope="module")
def grown(tiny_trained, fashion_dir, tmp_path_factory):
    from common.store import read_store
    from ingestion.ingest import ingest_new_batches
    from ingestion.manifest import read_manifest
    from ingestion.versioning import version_data
    from monitoring.candidates import candidate_groups
    from promotion.promote import gate_challenger, promote
    from promotion.register import register_challenger
    from validation.staged import validate_staged_batches
    from validation.taxonomy import main as taxonomy_cli
    from validation.taxonomy import retire_category

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LCP_FEED_URL", None)
    state = copy_state(tiny_trained["state"], tmp_path_factory.mktemp("taxonomy") / "state")
    _iso_ingested_at(state)
    params = tiny_trained["params"].with_overrides({"gate": {"floor_score": 0.0, "floor_accuracy": 0.0}})
    feed = Path(state.feed_url)
    publish(fashion_dir, feed, weeks=2, catalog=FASHION, start=date(2026, 11, 2), limit=240)
    stored = set(read_store(state.listings_store)["category_path"])
    ids, paths = _paths(feed / WEEK1)
    new = paths[~paths.isin(stored)].value_counts()
    by_cli, by_feed = new.index[:2]  # the two commonest categories the store has never seen
    declared = json.loads((feed / "taxonomy.json").read_text())
    (feed / "taxonomy.json").write_text(json.dumps([p for p in declared if p not in (by_cli, by_feed)]))
    out = {"state": state, "params": params, "by_cli": by_cli, "by_feed": by_feed,
           "held_ids": set(ids[paths.isin([by_cli, by_feed])]),
           "store_before": read_store(state.listings_store)}

    # week 1: the two categories are held back
    ingested = ingest_new_batches(state, params, datetime(2026, 11, 3, tzinfo=UTC))
    out["first"] = validate_staged_batches(state, params, ingested.staged)
    out["rejected_before"] = read_safe_csv(state.quarantine / WEEK1 / "rejected.csv")
    rejected_bytes = (state.quarantine / WEEK1 / "rejected.csv").read_bytes()
    out["groups_without_champion"] = candidate_groups(state, params, [WEEK1])
    version = register_challenger(state, params, tiny_trained["data"],
                                  tiny_trained["trained"].workspace_commit, "test_dag", "run-1")
    promote(state, params, gate_challenger(state, params, version.version, tiny_trained["data"].golden_rev))
    out["champion"] = version.version
    out["groups"] = candidate_groups(state, params, [WEEK1])

    # a person adds one category, the feed's taxonomy file declares the other
    os.environ["LCP_STATE_DIR"] = str(state.root)
    try:
        out["cli_rc"] = taxonomy_cli(["add", by_cli, "--by", "test", "--reason", "new in the catalog"])
    finally:
        os.environ.pop("LCP_STATE_DIR")
    (feed / "taxonomy.json").write_text(json.dumps(declared))
    ingested = ingest_new_batches(state, params, datetime(2026, 11, 3, tzinfo=UTC))  # nothing new
    out["released"] = validate_staged_batches(state, params, ingested.staged)
    out["manifest"] = read_manifest(state.manifest)
    out["retry"] = validate_staged_batches(state, params, ingested.staged)  # a retried task
    out["data"] = version_data(state, params, note="release")
    out["again"] = validate_staged_batches(state, params, ingested.staged)  # the next run
    out["manifest_after"] = read_manifest(state.manifest)

    # killed attempts: after the manifest entry, before the held-back list was updated; and
    # after a release partition was written, before its manifest entry
    import shutil

    from common.store import partition_dir

    (state.quarantine / WEEK1 / "rejected.csv").write_bytes(rejected_bytes)
    shutil.copytree(partition_dir(state.listings_store, RELEASE), partition_dir(state.listings_store, f"{WEEK1}.release-2"))
    out["after_kill"] = validate_staged_batches(state, params, ingested.staged)
    left = state.quarantine / WEEK1 / "rejected.csv"
    out["rejected_after_kill"] = (pd.read_csv(left, dtype=str) if left.exists()
                                  else pd.DataFrame(columns=["listing_id", "reasons"]))

    # a store category retired; week 2 brings listings of it
    week2_ids, week2_paths = _paths(feed / WEEK2)
    counts = week2_paths[week2_paths.isin(stored)].value_counts()
    out["retired"] = retired = counts.index[0]
    out["retire"] = retire_category(state, FASHION, retired, by="test")
    ingested = ingest_new_batches(state, params, datetime(2026, 11, 10, tzinfo=UTC))
    out["week2"] = validate_staged_batches(state, params, ingested.staged)
    out["week2_retired_ids"] = set(week2_ids[week2_paths == retired])
    version_data(state, params, note="week 2")
    from training.prepare import prepare

    out["prepared"] = prepare(state.workspace, params, workers=1)
    return out


def test_unknown_categories_are_held_back_not_stored(grown):
    first, rejected = grown["first"], grown["rejected_before"]
    assert first.partial == (WEEK1,)
    held = rejected[rejected["reasons"] == "unknown_category"]
    assert set(held["listing_id"]) == grown["held_ids"]
    assert set(held["category_path"]) == {grown["by_cli"], grown["by_feed"]}
    from common.store import batch_file

    week1 = pd.read_parquet(batch_file(grown["state"].listings_store, WEEK1))
    assert not set(week1["listing_id"]) & grown["held_ids"]


def test_candidate_groups_need_a_champion(grown):
    skipped = grown["groups_without_champion"]
    assert skipped.skipped == "no champion yet" and skipped.held_back == len(grown["held_ids"])
    assert skipped.file is None


def test_candidate_groups_of_the_held_back_listings(grown):
    import mlflow

    result, state = grown["groups"], grown["state"]
    assert result.skipped is None and result.champion_version == grown["champion"]
    assert result.held_back == len(grown["held_ids"])
    record = json.loads(Path(result.file).read_text())
    assert Path(result.file) == state.quarantine / "candidate_groups.json"
    client_for(state)
    artifact = json.loads(mlflow.artifacts.load_text(f"runs:/{result.monitoring_run_id}/{result.artifact}"))
    assert artifact == record and result.artifact == f"candidate_groups/{WEEK1}.json"
    members = [i for g in record["groups"] for i in g["listing_ids"]]
    assert len(members) == len(set(members)) == record["grouped"] == result.grouped
    assert set(members) <= grown["held_ids"]
    assert record["grouped"] + record["ungrouped"] == len(grown["held_ids"])
    truth = grown["rejected_before"].set_index("listing_id")["category_path"]
    for group in record["groups"]:
        given = truth[group["listing_ids"]].value_counts()
        assert group["size"] >= grown["params"].validate_.candidate_min_group_size
        assert group["given_category"] == given.index[0]
        assert group["given_share"] == pytest.approx(given.iloc[0] / group["size"], abs=1e-4)
        assert set(group["examples"]) <= set(grown["rejected_before"]["title"])


def test_the_cli_addition_and_the_feed_addition_are_released(grown):
    from common.store import batch_file, read_store

    released, state = grown["released"], grown["state"]
    assert grown["cli_rc"] == 0
    assert released.released == (RELEASE,)
    assert released.released_listings == len(grown["held_ids"])
    report = released.reports[RELEASE]
    assert report.status == "accepted" and report.released_from == WEEK1
    assert released.validation_ids[RELEASE] == report.validation_id is not None
    partition = pd.read_parquet(batch_file(state.listings_store, RELEASE))
    assert set(partition["listing_id"]) == grown["held_ids"]
    assert set(partition["batch_id"]) == {RELEASE}
    assert set(partition["category_path"]) == {grown["by_cli"], grown["by_feed"]}
    store = read_store(state.listings_store).set_index("listing_id")
    assert (store.loc[sorted(grown["held_ids"]), "batch_id"] == RELEASE).all()
    assert released.store_listings == grown["first"].store_listings + len(grown["held_ids"])


def test_the_release_is_recorded_and_leaves_the_held_back_list(grown):
    state, entry = grown["state"], grown["manifest"][RELEASE]
    assert entry["status"] == "released" and entry["released_from"] == WEEK1
    assert set(entry["listing_ids"]) == grown["held_ids"] and entry["data_rev"] is None
    assert entry["report"]["accepted_rows"] == len(grown["held_ids"])
    assert grown["manifest"][WEEK1]["released_to"] == [RELEASE]
    report = json.loads((state.quarantine / WEEK1 / "report.json").read_text())
    assert report["released_to"] == [RELEASE]
    rejected = state.quarantine / WEEK1 / "rejected.csv"
    left = pd.read_csv(rejected, dtype=str) if rejected.exists() else pd.DataFrame(columns=["listing_id", "reasons"])
    assert not set(left["listing_id"]) & grown["held_ids"]
    before = grown["rejected_before"]  # the other rejected rows are kept as they were
    assert set(left["listing_id"]) == set(before["listing_id"]) - grown["held_ids"]


def test_nothing_is_released_twice(grown):
    from common.store import batch_ids

    retry, again, state = grown["retry"], grown["again"], grown["state"]
    # a retry before versioning reports the release again (version_data needs it), redoes nothing
    assert retry.released == (RELEASE,)
    assert again.released == () and again.released_listings == 0
    assert [b for b in batch_ids(state.listings_store) if ".release-" in b] == [RELEASE]
    assert not [b for b in grown["manifest_after"] if b.startswith(f"{WEEK1}.release-") and b != RELEASE]
    assert grown["manifest_after"][RELEASE]["data_rev"] == grown["data"].data_rev


def test_a_killed_release_is_finished_not_redone(grown):
    from common.store import batch_ids

    after, state = grown["after_kill"], grown["state"]
    assert after.released == () and after.released_listings == 0
    assert [b for b in batch_ids(state.listings_store) if ".release-" in b] == [RELEASE]  # orphan gone
    left = grown["rejected_after_kill"]
    assert not set(left["listing_id"]) & grown["held_ids"]
    assert set(left["listing_id"]) == set(grown["rejected_before"]["listing_id"]) - grown["held_ids"]


def test_released_rows_join_the_growing_golden_set_like_a_new_batch(grown):
    state, params = grown["state"], grown["params"]
    assert params.prepare.golden_policy == "growing"
    golden = pd.read_parquet(state.golden_dir / "golden.parquet")
    record = json.loads((state.golden_dir / "batches.json").read_text())
    assert RELEASE in record["batches"]
    released_golden = golden[golden["listing_id"].isin(grown["held_ids"])]
    assert set(released_golden["batch_id"]) == {RELEASE}
    # the same seeded, stratified share as a batch's: round(fraction * n), at least one, per
    # category of at least golden_min_listings listings
    from common.store import batch_file

    counts = pd.read_parquet(batch_file(state.listings_store, RELEASE))["category_path"].value_counts()
    p = params.prepare
    for category in (grown["by_cli"], grown["by_feed"]):
        n = int(counts[category])
        expected = max(1, round(p.golden_fraction * n)) if n >= p.golden_min_listings else 0
        assert (released_golden["category_path"] == category).sum() == expected
    assert len(released_golden) > 0


def test_a_retired_category_is_accepted_flagged_and_not_trained_on(grown):
    from common.store import read_store

    state, retired, week2 = grown["state"], grown["retired"], grown["week2"]
    assert grown["retire"].changed
    assert week2.stored_batches == (WEEK2,)
    report = week2.reports[WEEK2]
    assert report.retired_rows == len(grown["week2_retired_ids"]) > 0
    assert any(w.startswith("retired_category:") and retired in w for w in report.warnings)
    store = read_store(state.listings_store)
    assert grown["week2_retired_ids"] <= set(store["listing_id"])  # kept in the store
    prepared = state.workspace / "data" / "prepared"
    train, val = (pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "val"))
    assert retired not in set(train["category_path"]) | set(val["category_path"])
    golden = pd.read_parquet(state.golden_dir / "golden.parquet")
    in_pool = store[(store["category_path"] == retired) & ~store["listing_id"].isin(golden["listing_id"])]
    assert grown["prepared"]["dropped_retired"] == len(in_pool) > 0
    # golden listings of a retired category stay golden: both gate sides are scored on them
    assert (pd.read_parquet(prepared / "golden.parquet")["category_path"] == retired).sum() == \
        (golden["category_path"] == retired).sum() > 0
    # the released category is trained on by the next challenger
    assert grown["by_cli"] in set(train["category_path"])
    retired_file = json.loads((state.workspace / "data" / "retired_categories.json").read_text())
    assert retired_file == {"retired": [retired]}
