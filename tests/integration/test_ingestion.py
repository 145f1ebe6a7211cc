"""Feed publishing and ingestion on real listings, from a local folder and from S3 (moto server);
versioning of the listings store with real DVC (only the changed batches are added and pushed)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import load_catalog
from common.params import load_params
from common.state import State
from ingestion.feed import publish
from ingestion.ingest import ingest_new_batches
from ingestion.manifest import read_manifest
from ingestion.sources import BatchRefused, FeedError, LocalFeed, S3Feed, check_batch_id

CATALOG = load_catalog("catalogs/fashion.yaml")


@pytest.fixture()
def feed(tmp_path: Path, fashion_dir: Path) -> Path:
    root = tmp_path / "feed"
    publish(fashion_dir, root, weeks=3, catalog=CATALOG, limit=90)
    return root


def test_publish_is_deterministic_and_complete(tmp_path, fashion_dir, feed):
    again = tmp_path / "again"
    ids = publish(fashion_dir, again, weeks=3, catalog=CATALOG, limit=90)
    assert ids == ["fashion-2026-11-02", "fashion-2026-11-09", "fashion-2026-11-16"]
    total = 0
    for batch in ids:
        a = pd.read_csv(feed / batch / "styles.csv", dtype=str)
        b = pd.read_csv(again / batch / "styles.csv", dtype=str)
        pd.testing.assert_frame_equal(a, b)
        assert all((feed / batch / "images" / f"{i}.jpg").is_file() for i in a["id"])
        total += len(a)
    assert total == 90
    taxonomy = json.loads((feed / "taxonomy.json").read_text())
    assert "Apparel > Topwear > Tshirts" in taxonomy and len(taxonomy) >= 100


def test_ingest_respects_cutoff_and_never_ingests_twice(tmp_path, feed):
    state = State(tmp_path / "state")
    params = load_params()
    first = ingest_new_batches(state, params, datetime(2026, 11, 9, tzinfo=UTC), str(feed))
    assert first.ingested == ("fashion-2026-11-02", "fashion-2026-11-09")
    again = ingest_new_batches(state, params, datetime(2026, 11, 9, tzinfo=UTC), str(feed))
    assert again.ingested == ()
    later = ingest_new_batches(state, params, datetime(2026, 11, 16, tzinfo=UTC), str(feed))
    assert later.ingested == ("fashion-2026-11-16",)
    manifest = read_manifest(state.manifest)
    assert set(manifest) == {"fashion-2026-11-02", "fashion-2026-11-09", "fashion-2026-11-16"}
    # the staged copy is byte-identical to the raw batch
    raw = feed / "fashion-2026-11-02" / "styles.csv"
    assert (state.staging / "fashion-2026-11-02" / "styles.csv").read_bytes() == raw.read_bytes()
    assert not [p for p in state.staging.iterdir() if p.name.startswith(".")], "no half batch left"


def test_max_batches_limits_one_run(tmp_path, feed):
    params = load_params().with_overrides({"ingest": {"max_batches": 1}})
    result = ingest_new_batches(State(tmp_path / "s"), params, None, str(feed))
    assert result.ingested == ("fashion-2026-11-02",)


@pytest.mark.parametrize("bad", ["../etc", "a/b", ".hidden", "", "x" * 200])
def test_unsafe_batch_ids_are_refused(bad):
    with pytest.raises(FeedError):
        check_batch_id(bad)


def test_symlink_in_a_batch_is_refused(tmp_path):
    batch = tmp_path / "feed" / "b-2026-11-02"
    batch.mkdir(parents=True)
    (batch / "styles.csv").write_text("id\n1\n")
    (batch / "leak").symlink_to("/etc/passwd")
    with pytest.raises(BatchRefused, match="symbolic link") as info:
        LocalFeed(tmp_path / "feed").download_batch("b-2026-11-02", tmp_path / "dest")
    assert info.value.reason == "batch_holds_link"


def _poison(feed: Path, batch: str) -> None:
    """A real batch whose images/ holds a symbolic link to a file outside the feed."""
    (feed / batch / "images" / "leak.jpg").symlink_to("/etc/passwd")


def test_a_refused_batch_is_quarantined_and_later_batches_are_staged(tmp_path, feed):
    """The poison batch (a link) is quarantined with its reason; the batches dated after it are
    staged in the same run; a retry stages nothing again; a corrected re-publication (new
    content) is staged, and the first delivery's record stays in its report."""
    state = State(tmp_path / "state")
    params = load_params()
    poison = "fashion-2026-11-02"
    _poison(feed, poison)
    os.mkfifo(feed / "fashion-2026-11-09" / "images" / "pipe")  # not a regular file
    first = ingest_new_batches(state, params, None, str(feed))
    assert first.ingested == ("fashion-2026-11-16",)
    assert [(r.batch_id, r.reason) for r in first.refused] == [
        (poison, "batch_holds_link"), ("fashion-2026-11-09", "batch_file_unreadable")]
    manifest = read_manifest(state.manifest)
    assert manifest[poison]["status"] == "quarantined" and manifest[poison]["stage"] == "ingest"
    assert "images/leak.jpg" in manifest[poison]["report"]["batch_reasons"][0]
    report = json.loads((state.quarantine / poison / "report.json").read_text())
    assert report["status"] == "quarantined" and report["reasons"] == {"batch_holds_link": 1}
    assert not (state.staging / poison).exists()
    assert not [p for p in state.staging.iterdir() if p.name.startswith(".")]

    again = ingest_new_batches(state, params, None, str(feed))
    assert again.ingested == () and again.refused == ()
    assert read_manifest(state.manifest) == manifest

    (feed / poison / "images" / "leak.jpg").unlink()  # the marketplace fixes and re-publishes
    fixed = ingest_new_batches(state, params, None, str(feed))
    assert fixed.ingested == (poison,) and fixed.staged == (poison, "fashion-2026-11-16")
    entry = read_manifest(state.manifest)[poison]
    assert entry["status"] == "staged" and entry["redelivered_from"] == manifest[poison]["fingerprint"]
    assert (state.staging / poison / "styles.csv").read_bytes() == (feed / poison / "styles.csv").read_bytes()


@pytest.mark.parametrize(("name", "reason"), [
    ("fashion-week-one", "batch_name_undated"),
    ("fashion-2026-13-40", "batch_name_date_invalid"),
    ("fashion 2026-11-02", "batch_name_invalid"),
])
def test_a_batch_whose_name_places_it_nowhere_is_refused(tmp_path, feed, name, reason):
    """Undated (or unsafe) folders used to be ingested at any cutoff: refused, with the naming."""
    shutil.copytree(feed / "fashion-2026-11-16", feed / name)
    state = State(tmp_path / "state")
    result = ingest_new_batches(state, load_params(), datetime(2026, 11, 2, tzinfo=UTC), str(feed))
    assert result.ingested == ("fashion-2026-11-02",)
    (refused,) = result.refused
    assert refused.batch_id == name and refused.reason == reason
    if reason in ("batch_name_undated", "batch_name_date_invalid"):
        assert "batches are named <catalog>-YYYY-MM-DD" in refused.detail
    assert Path(refused.report).is_file()
    assert read_manifest(state.manifest)[name]["status"] == "quarantined"


def test_s3_feed_through_moto_server(tmp_path, feed, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="marketplace")
        for path in feed.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "marketplace", f"weekly/{path.relative_to(feed).as_posix()}")
        source = S3Feed("s3://marketplace/weekly")
        assert source.list_batches() == ["fashion-2026-11-02", "fashion-2026-11-09", "fashion-2026-11-16"]
        state = State(tmp_path / "s3state")
        result = ingest_new_batches(state, load_params(), datetime(2026, 11, 2, tzinfo=UTC),
                                    "s3://marketplace/weekly")
        assert result.ingested == ("fashion-2026-11-02",)
        staged = state.staging / "fashion-2026-11-02"
        assert (staged / "styles.csv").read_bytes() == (feed / "fashion-2026-11-02" / "styles.csv").read_bytes()
        assert len(list((staged / "images").iterdir())) == len(list((feed / "fashion-2026-11-02" / "images").iterdir()))
    finally:
        server.stop()


def test_interrupted_copy_leaves_no_half_batch_and_retry_finishes(tmp_path, feed):
    """A real failure in the middle of a copy (a symlink the feed refuses comes after the
    listings file and images), then the retry after the feed is fixed."""
    from ingestion.ingest import partial_dir, stage_batch
    from ingestion.sources import FeedError

    batch = "fashion-2026-11-02"
    staging = tmp_path / "staging"
    (feed / batch / "zz-broken").symlink_to(feed / batch / "styles.csv")
    # FeedError is a refusal, not an interruption: nothing partial is kept
    with pytest.raises(FeedError):
        stage_batch(LocalFeed(feed), batch, staging)
    assert not (staging / batch).exists() and not partial_dir(staging, batch).exists()

    class Interrupted(LocalFeed):  # the real LocalFeed, cut off after half the files (a kill)
        def download_batch(self, batch_id, dest):
            files = sorted(p for p in (self.root / batch_id).rglob("*") if p.is_file())
            cut = files[: len(files) // 2]
            for path in cut:
                target = dest / path.relative_to(self.root / batch_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
            raise OSError("connection reset")

    (feed / batch / "zz-broken").unlink()
    with pytest.raises(OSError):
        stage_batch(Interrupted(feed), batch, staging)
    partial = partial_dir(staging, batch)
    assert not (staging / batch).exists() and partial.is_dir()
    kept = {p: p.stat().st_ino for p in partial.rglob("*") if p.is_file()}
    assert kept

    final, count = stage_batch(LocalFeed(feed), batch, staging)  # the retry finishes it
    assert not partial.exists()
    assert _tree(final) == _tree(feed / batch) and count == len(_tree(feed / batch))
    for path, inode in kept.items():  # files already copied were not fetched again
        assert (final / path.relative_to(partial)).stat().st_ino == inode
    assert all(p.stat().st_mode & 0o222 == 0 for p in final.rglob("*") if p.is_file()), \
        "staged raw files are read-only"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_s3_credentials_from_an_airflow_connection(tmp_path, feed, monkeypatch):
    """No AWS_* credentials in the environment: they come from the Airflow connection
    named by LCP_FEED_CONN_ID (here defined as an AIRFLOW_CONN_* variable)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        admin = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                             aws_access_key_id="admin", aws_secret_access_key="admin")
        admin.create_bucket(Bucket="marketplace")
        for path in (p for p in (feed / "fashion-2026-11-02").rglob("*") if p.is_file()):
            admin.upload_file(str(path), "marketplace", f"w/{path.relative_to(feed).as_posix()}")
        admin.upload_file(str(feed / "taxonomy.json"), "marketplace", "w/taxonomy.json")
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                    "AWS_DEFAULT_REGION", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AIRFLOW_CONN_LCP_FEED_S3", json.dumps({
            "conn_type": "aws", "login": "feed-reader", "password": "feed-secret",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))
        monkeypatch.setenv("LCP_FEED_CONN_ID", "lcp_feed_s3")
        state = State(tmp_path / "state")
        result = ingest_new_batches(state, load_params(), None, "s3://marketplace/w")
        assert result.ingested == ("fashion-2026-11-02",)
        assert _tree(state.staging / "fashion-2026-11-02") == _tree(feed / "fashion-2026-11-02")
    finally:
        server.stop()


# --- Versioning the listings store (real DVC, a local remote) ---------------------------------


def _partition(store: Path, batch_id: str, rows: pd.DataFrame, fashion_dir: Path) -> None:
    """Writes a store partition of real fashion listings with the store's own writer, as
    validation does (:func:`common.store.write_partition`)."""
    import hashlib

    from common.catalog import CANONICAL_COLUMNS, PATH_SEP
    from common.store import write_partition

    records, images = [], []
    for r in rows.itertuples():
        source = fashion_dir / "images" / f"{r.id}.jpg"
        images.append((source, hashlib.sha256(source.read_bytes()).hexdigest(), ".jpg"))
        records.append({
            "listing_id": r.id, "title": r.productDisplayName, "description": None,
            "brand": None, "price": None, "currency": "INR", "attributes": None,
            "category_path": PATH_SEP.join([r.masterCategory, r.subCategory, r.articleType]),
            "image_key": f"images/{r.id}.jpg", "image_sha256": None,
            "catalog": "fashion", "batch_id": batch_id, "ingested_at": "2026-11-02T00:00:00+00:00"})
    write_partition(store, batch_id, pd.DataFrame(records)[list(CANONICAL_COLUMNS)], images)


def _remote_objects(remote: Path) -> set[str]:
    """Names of the objects in a local DVC 3 remote (``files/md5/<2>/<30>[.dir]``), as DVC hashes."""
    return {p.parent.name + p.name for p in (remote / "files" / "md5").glob("*/*")}


def _md5s(folder: Path) -> set[str]:
    import hashlib

    return {hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def styles(fashion_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False)
    return frame[[(fashion_dir / "images" / f"{i}.jpg").is_file() for i in frame["id"]]].head(120)


def _versioning_params():
    from common.params import Params

    return Params().with_overrides({"prepare": {"golden_min_listings": 2, "golden_policy": "frozen"}})


def test_versioning_adds_and_pushes_only_the_changed_batches(tmp_path, fashion_dir, styles):
    import subprocess

    from common.store import partition_dir, remove_partition
    from ingestion.versioning import version_data
    from ingestion.workspace import partition_pointers, store_hash

    state, params = State(tmp_path / "state").ensure(), _versioning_params()
    store, ws = state.listings_store, state.workspace
    _partition(store, "b1", styles.iloc[:40], fashion_dir)
    _partition(store, "b2", styles.iloc[40:80], fashion_dir)
    first = version_data(state, params, "b1 b2")
    # one DVC output per partition, and the (empty) label-issue folder the prepare stage depends on
    assert first.added == ("data/listings/batches/b1", "data/listings/batches/b2", "data/golden",
                           "data/label_issues")
    assert not (ws / "data" / "listings.dvc").exists()
    pointers = partition_pointers(ws)
    assert set(pointers) == {"b1", "b2"} and all(md5.endswith(".dir") for md5 in pointers.values())
    assert first.listings_md5 == store_hash(pointers) and first.golden_rev.endswith(".dir")
    assert _md5s(store / "batches" / "b1") | _md5s(state.golden_dir) <= _remote_objects(state.dvc_remote)
    texts = {b: (ws / "data" / "listings" / "batches" / f"{b}.dvc").read_text() for b in pointers}

    _partition(store, "b3", styles.iloc[80:120], fashion_dir)
    before = _remote_objects(state.dvc_remote)
    second = version_data(state, params, "b3")
    assert second.added == ("data/listings/batches/b3",)
    assert second.pushed == ("data/listings/batches/b3",)
    assert second.listings_md5 != first.listings_md5
    assert second.golden_rev == first.golden_rev  # frozen once, never re-added
    # the other partitions' pointers are untouched: nothing of the store but b3 is rewritten
    assert {b: (ws / "data" / "listings" / "batches" / f"{b}.dvc").read_text() for b in texts} == texts
    # exactly the new batch's files and its directory manifest were uploaded
    b3 = partition_pointers(ws)["b3"]
    assert _remote_objects(state.dvc_remote) - before == _md5s(partition_dir(store, "b3")) | {b3}
    # no file of a partition is in git: DVC's
    assert not [f for f in subprocess.run(["git", "ls-files", "data/listings"], cwd=ws, check=True,
                                          capture_output=True, text=True).stdout.split() if not f.endswith((".dvc", ".gitignore"))]
    snapshot = {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*") if p.is_file()}

    again = version_data(state, params, "nothing new")
    assert (again.added, again.pushed, again.data_rev) == ((), (), second.data_rev)

    # a batch re-validated into quarantine loses its partition: its pointer goes
    remove_partition(store, "b2")
    third = version_data(state, params, "b2 quarantined")
    assert third.added == ("data/listings/batches/b2",) and third.pushed == ()
    assert set(partition_pointers(ws)) == {"b1", "b3"}
    assert third.listings_md5 not in (first.listings_md5, second.listings_md5)

    # an entry beside the partitions (a store from before them kept data/listings/images) is
    # versioned as an output of its own, never left out nor put in git; gone, its pointer goes
    (store / "images" / "ab").mkdir(parents=True)
    (store / "images" / "ab" / "ab12.jpg").write_bytes(b"not really a jpeg")
    fourth = version_data(state, params, "images beside")
    assert "data/listings/images" in fourth.added and (ws / "data" / "listings" / "images.dvc").is_file()
    assert fourth.listings_md5 != third.listings_md5
    assert "data/listings/images/ab/ab12.jpg" not in subprocess.run(
        ["git", "ls-files"], cwd=ws, check=True, capture_output=True, text=True).stdout
    # its pointer cut short (a kill while DVC rewrote it) is put back from the last commit
    pointer = ws / "data" / "listings" / "images.dvc"
    text = pointer.read_text()
    pointer.write_text(text[: len(text) // 2])
    version_data(state, params, "after a cut pointer")
    assert pointer.read_text() == text
    shutil.rmtree(store / "images")
    fifth = version_data(state, params, "images gone")
    assert "data/listings/images" in fifth.added and not (ws / "data" / "listings" / "images.dvc").exists()
    assert fifth.listings_md5 == third.listings_md5

    # a data revision pins the whole store: a clone at the second revision pulls b1 + b2 + b3
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(state.workspace), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", second.data_rev], cwd=clone, check=True)
    from ingestion.workspace import run_dvc

    run_dvc(clone, "pull", "-q", *(f"data/listings/batches/{b}.dvc" for b in ("b1", "b2", "b3")), "data/golden.dvc")
    pulled = clone / "data" / "listings"
    assert {p.relative_to(pulled).as_posix(): p.read_bytes()
            for p in pulled.rglob("*") if p.is_file()} == snapshot


def test_a_store_versioned_whole_is_converted_to_one_output_per_partition(tmp_path, fashion_dir, styles):
    """A workspace from before 2026-12 (``data/listings.dvc``: the store as one output) is
    converted by the next version: the whole pointer goes, each partition gets its own, the files
    are unchanged, the remote holds everything, and the old revision still reads back."""
    import subprocess

    from ingestion.dvcfiles import out_md5
    from ingestion.versioning import data_version_at, store_changes, update_golden, version_data
    from ingestion.workspace import (
        STORE_VERSION,
        commit,
        configure_remote,
        init_workspace,
        partition_pointers,
        run_dvc,
        sync_snapshot,
    )

    state, params = State(tmp_path / "state").ensure(), _versioning_params()
    store = state.listings_store
    _partition(store, "b1", styles.iloc[:40], fashion_dir)
    _partition(store, "b2", styles.iloc[40:80], fashion_dir)
    # the layout as the code before 2026-12 left it (its version file named the pointer's hash)
    ws = init_workspace(state)
    configure_remote(state)
    sync_snapshot(state, params)
    update_golden(state, params)
    run_dvc(ws, "add", "data/listings", "data/golden")
    legacy = out_md5(ws / "data" / "listings.dvc")
    (ws / STORE_VERSION).write_text(json.dumps({"listings_md5": legacy}, indent=1) + "\n")
    old_rev = commit(ws, "data: the store as one output")
    run_dvc(ws, "push", "data/listings", "data/golden")
    files = {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*") if p.is_file()}

    result = version_data(state, params, "upgrade")
    assert not (ws / "data" / "listings.dvc").exists()
    assert set(partition_pointers(ws)) == {"b1", "b2"} and store_changes(ws) == []
    assert {"data/listings/batches/b1", "data/listings/batches/b2"} <= set(result.added)
    assert "(one DVC output per partition)" in subprocess.run(
        ["git", "log", "-1", "--format=%s"], cwd=ws, check=True, capture_output=True, text=True).stdout
    assert {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*")
            if p.is_file() and not p.name.endswith(".dvc") and p.name != ".gitignore"} == files
    assert "in sync" in run_dvc(ws, "status", "--cloud", *(f"data/listings/batches/{b}.dvc" for b in ("b1", "b2")))
    assert data_version_at(state, old_rev).listings_md5 == legacy  # an old revision reads back
    assert data_version_at(state, result.data_rev).listings_md5 == result.listings_md5
    again = version_data(state, params, "nothing new")
    assert (again.added, again.data_rev) == ((), result.data_rev)


def test_a_failed_push_is_pushed_by_the_next_version(tmp_path, fashion_dir, styles, monkeypatch):
    from common.store import partition_dir
    from ingestion.versioning import PENDING_PUSH, VersioningError, version_data

    state, params = State(tmp_path / "state").ensure(), _versioning_params()
    _partition(state.listings_store, "b1", styles.iloc[:40], fashion_dir)
    version_data(state, params, "b1")
    _partition(state.listings_store, "b2", styles.iloc[40:80], fashion_dir)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the remote's parent folder should be")
    monkeypatch.setenv("LCP_DVC_REMOTE_URL", str(blocked / "remote"))
    with pytest.raises(VersioningError, match="dvc push"):
        version_data(state, params, "b2")
    assert json.loads((state.root / PENDING_PUSH).read_text()) == ["data/listings/batches/b2"]

    monkeypatch.delenv("LCP_DVC_REMOTE_URL")
    retry = version_data(state, params, "b2 retried")
    assert retry.added == (), "b2 was added and committed by the failed run"
    assert retry.pushed == ("data/listings/batches/b2",)
    assert _md5s(partition_dir(state.listings_store, "b2")) <= _remote_objects(state.dvc_remote)
    assert not (state.root / PENDING_PUSH).exists()


def test_a_partition_written_before_a_column_existed_reads_back_with_none(tmp_path, fashion_dir, styles):
    """Stores outlive schema changes: a partition without ``attributes`` (written before the
    column was added) reads back with ``None`` there, next to partitions that have it."""
    import json

    import pyarrow.parquet as pq

    from common.store import batch_file, read_store

    store = tmp_path / "listings"
    _partition(store, "b1", styles.iloc[:4], fashion_dir)
    _partition(store, "b2", styles.iloc[4:8], fashion_dir)
    old = pq.read_table(batch_file(store, "b1")).drop(["attributes"])
    pq.write_table(old, batch_file(store, "b1"))
    new = pd.read_parquet(batch_file(store, "b2"))
    new["attributes"] = json.dumps({"gender": "Men"})
    new.to_parquet(batch_file(store, "b2"), index=False)

    frame = read_store(store)
    assert len(frame) == 8 and "attributes" in frame.columns
    by_batch = frame.groupby("batch_id")["attributes"].agg(list).to_dict()
    assert by_batch["b1"] == [None] * 4
    assert by_batch["b2"] == ['{"gender": "Men"}'] * 4
    assert read_store(store, columns=["listing_id", "attributes"]).shape == (8, 2)


def test_the_golden_set_grows_with_each_batch_and_never_takes_a_listing_trained_on(tmp_path, fashion_dir,
                                                                                   styles):
    """Growing policy (the default): each version adds a seeded, stratified share of the new
    batch's new listings (a new golden revision); updates of listings an earlier batch held never
    become golden; a golden listing updated later stays golden with its latest row."""
    from common.params import Params
    from ingestion.versioning import version_data

    state = State(tmp_path / "state").ensure()
    params = Params().with_overrides({"prepare": {"golden_min_listings": 2, "golden_fraction": 0.2}})
    assert params.prepare.golden_policy == "growing"
    store = state.listings_store
    _partition(store, "b1", styles.iloc[:60], fashion_dir)
    first = version_data(state, params, "b1")
    g1 = pd.read_parquet(state.golden_dir / "golden.parquet")
    assert len(g1) and set(g1["batch_id"]) == {"b1"}

    # b2: 60 new listings, 10 updates of b1 listings that are not golden (trained on), and one
    # golden listing relabelled
    trained_on = styles.iloc[:60][~styles.iloc[:60]["id"].isin(g1["listing_id"])].head(10)
    relabelled = styles[styles["id"] == g1["listing_id"].iloc[0]].assign(articleType="Relabelled")
    _partition(store, "b2", pd.concat([styles.iloc[60:120], trained_on, relabelled]), fashion_dir)
    second = version_data(state, params, "b2")
    g2 = pd.read_parquet(state.golden_dir / "golden.parquet")
    assert second.golden_rev != first.golden_rev and "data/golden" in second.added
    assert set(g1["listing_id"]) <= set(g2["listing_id"])  # golden listings stay golden
    added = set(g2["listing_id"]) - set(g1["listing_id"])
    assert added and added <= set(styles.iloc[60:120]["id"])  # only new listings of the new batch
    assert not added & set(trained_on["id"])
    row = g2[g2["listing_id"] == relabelled["id"].iloc[0]].iloc[0]
    assert row["category_path"].endswith("> Relabelled") and row["batch_id"] == "b2"
    # stratified: every leaf of the new listings with >= golden_min_listings of them got one
    new = styles.iloc[60:120]
    counts = new.groupby("articleType").size()
    leaves = {t for t in g2[g2["listing_id"].isin(added)]["category_path"].str.rsplit(" > ", n=1).str[-1]}
    assert set(counts[counts >= 2].index) <= leaves

    # a retry (nothing new) changes nothing
    again = version_data(state, params, "nothing new")
    assert again.golden_rev == second.golden_rev and again.data_rev == second.data_rev
