"""Feed publishing and ingestion on real listings, from a local folder and from S3 (moto server)."""

from __future__ import annotations

import json
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
from ingestion.sources import FeedError, LocalFeed, S3Feed, check_batch_id

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
    assert first["ingested"] == ["fashion-2026-11-02", "fashion-2026-11-09"]
    again = ingest_new_batches(state, params, datetime(2026, 11, 9, tzinfo=UTC), str(feed))
    assert again["ingested"] == []
    later = ingest_new_batches(state, params, datetime(2026, 11, 16, tzinfo=UTC), str(feed))
    assert later["ingested"] == ["fashion-2026-11-16"]
    manifest = read_manifest(state.manifest)
    assert set(manifest) == {"fashion-2026-11-02", "fashion-2026-11-09", "fashion-2026-11-16"}
    # the staged copy is byte-identical to the raw batch
    raw = feed / "fashion-2026-11-02" / "styles.csv"
    assert (state.staging / "fashion-2026-11-02" / "styles.csv").read_bytes() == raw.read_bytes()
    assert not [p for p in state.staging.iterdir() if p.name.startswith(".")], "no half batch left"


def test_max_batches_limits_one_run(tmp_path, feed):
    params = load_params().with_overrides({"ingest": {"max_batches": 1}})
    result = ingest_new_batches(State(tmp_path / "s"), params, None, str(feed))
    assert result["ingested"] == ["fashion-2026-11-02"]


@pytest.mark.parametrize("bad", ["../etc", "a/b", ".hidden", "", "x" * 200])
def test_unsafe_batch_ids_are_refused(bad):
    with pytest.raises(FeedError):
        check_batch_id(bad)


def test_symlink_in_a_batch_is_refused(tmp_path):
    batch = tmp_path / "feed" / "b-2026-11-02"
    batch.mkdir(parents=True)
    (batch / "styles.csv").write_text("id\n1\n")
    (batch / "leak").symlink_to("/etc/passwd")
    with pytest.raises(FeedError, match="symbolic link"):
        LocalFeed(tmp_path / "feed").download_batch("b-2026-11-02", tmp_path / "dest")


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
        assert result["ingested"] == ["fashion-2026-11-02"]
        staged = state.staging / "fashion-2026-11-02"
        assert (staged / "styles.csv").read_bytes() == (feed / "fashion-2026-11-02" / "styles.csv").read_bytes()
        assert len(list((staged / "images").iterdir())) == len(list((feed / "fashion-2026-11-02" / "images").iterdir()))
    finally:
        server.stop()
