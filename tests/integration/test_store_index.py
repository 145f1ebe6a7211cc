"""The listings store's index and the weekly bookkeeping cost what the new batch costs.

A store of six partitions of real fashion listings (some listings updated by later batches);
each test adds one batch and counts the Parquet reads of the code under test by wrapping
``pyarrow.parquet.read_table`` / ``ParquetFile`` (a counter that calls the real function):
before the index, validation's store lookup, the listing count and the golden set's growth read
every partition, every week.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from common.catalog import CANONICAL_COLUMNS, PATH_SEP
from common.state import State
from common.store import INDEX_COLUMNS, batch_file, read_store, remove_partition, write_partition

pytestmark = pytest.mark.integration

BATCHES = [f"fashion-2026-{m:02d}-{d:02d}" for m, d in ((9, 7), (9, 14), (9, 21), (9, 28), (10, 5), (10, 12))]
NEW = "fashion-2026-10-19"


@pytest.fixture(scope="module")
def styles(fashion_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False)
    return frame[[(fashion_dir / "images" / f"{i}.jpg").is_file() for i in frame["id"]]].head(150)


def _partition(store: Path, batch_id: str, rows: pd.DataFrame, fashion_dir: Path, relabel: bool = False) -> None:
    records, images = [], []
    for r in rows.itertuples():
        source = fashion_dir / "images" / f"{r.id}.jpg"
        images.append((source, hashlib.sha256(source.read_bytes()).hexdigest(), ".jpg"))
        leaf = "Relabelled" if relabel else r.articleType
        records.append({
            "listing_id": r.id, "title": r.productDisplayName, "description": None, "brand": None,
            "price": float(len(r.productDisplayName)), "currency": "INR", "attributes": None,
            "category_path": PATH_SEP.join([r.masterCategory, r.subCategory, leaf]),
            "image_key": f"images/{r.id}.jpg", "image_sha256": None, "catalog": "fashion",
            "batch_id": batch_id, "ingested_at": f"{batch_id[-10:]}T00:00:00+00:00"})
    write_partition(store, batch_id, pd.DataFrame(records)[list(CANONICAL_COLUMNS)], images)


def _store(root: Path, styles: pd.DataFrame, fashion_dir: Path) -> Path:
    store = root / "data" / "listings"
    for k, batch in enumerate(BATCHES):
        rows = styles.iloc[20 * k:20 * k + 20]
        if k >= 2:  # later batches update five listings of the batch before: the latest wins
            rows = pd.concat([rows, styles.iloc[20 * (k - 1):20 * (k - 1) + 5]])
        _partition(store, batch, rows, fashion_dir, relabel=k >= 2)
    return store


class _Reads:
    """Counts Parquet reads of the store's partitions (every read calls through to pyarrow): a
    read of the index file is not one; a read from memory is the index reading a partition."""

    def __init__(self, monkeypatch, store: Path):
        self.count = 0
        self.sources: set[str] = set()
        real_read, real_file = pq.read_table, pq.ParquetFile
        index = str(store.parent / f".{store.name}-index" / "versions.parquet")

        def count(source) -> None:
            self.count += str(source) != index
            self.sources.add(str(source))

        def read_table(source, *args, **kwargs):
            count(source)
            return real_read(source, *args, **kwargs)

        class ParquetFile(real_file):
            def __init__(inner, source, *args, **kwargs):
                count(source)
                super().__init__(source, *args, **kwargs)

        monkeypatch.setattr(pq, "read_table", read_table)
        monkeypatch.setattr(pq, "ParquetFile", ParquetFile)


def _from_partitions(store: Path, columns, exclude=()) -> pd.DataFrame:
    """What read_store returned before the index: every partition read, latest version kept."""
    return read_store(store, [*columns, "title"], exclude)[list(columns)]


def test_a_new_batch_reads_only_its_partition_for_validation_and_the_count(
        tmp_path, styles, fashion_dir, monkeypatch):
    store = _store(tmp_path, styles, fashion_dir)
    read_store(store, INDEX_COLUMNS)
    reads = _Reads(monkeypatch, store)
    _partition(store, NEW, styles.iloc[120:150], fashion_dir)
    # validation's lookup of the store (validate._check) and a count of listings, after a new batch
    index = read_store(store, INDEX_COLUMNS, exclude_batches=["fashion-2026-10-26"])
    count = len(read_store(store, ["listing_id"]))
    # the partition written, read once for the index: not the six others
    assert reads.count == 1, f"{reads.count} partition reads for one new batch of a 7-partition store"
    monkeypatch.undo()
    assert count == 150 and len(index) == 150
    pd.testing.assert_frame_equal(index, _from_partitions(store, INDEX_COLUMNS))


def test_the_index_gives_read_stores_rows(tmp_path, styles, fashion_dir):
    from common.store import count_listings, read_index

    store = _store(tmp_path, styles, fashion_dir)
    expected = _from_partitions(store, INDEX_COLUMNS, exclude=[BATCHES[3]])
    pd.testing.assert_frame_equal(read_index(store, exclude_batches=[BATCHES[3]]), expected)
    pd.testing.assert_frame_equal(read_store(store, INDEX_COLUMNS), _from_partitions(store, INDEX_COLUMNS))
    assert count_listings(store) == len(_from_partitions(store, ["listing_id"])) == 120
    with pytest.raises(ValueError, match="not \\['title'\\]: use read_store"):
        read_index(store, ["listing_id", "title"])


def test_the_index_follows_removed_rewritten_and_hand_made_partitions(tmp_path, styles, fashion_dir):
    """A partition removed, rewritten, or changed behind the store's back (a killed writer's
    leftovers, a restore): the index notices by the stamp of each table and reads it again."""
    from common.store import count_listings, index_path, partition_md5s, read_index

    store = _store(tmp_path, styles, fashion_dir)
    read_index(store)
    remove_partition(store, BATCHES[4])  # the previous versions of its updates come back
    pd.testing.assert_frame_equal(read_index(store), _from_partitions(store, INDEX_COLUMNS))
    _partition(store, BATCHES[2], styles.iloc[40:45], fashion_dir)  # rewritten, smaller
    pd.testing.assert_frame_equal(read_index(store), _from_partitions(store, INDEX_COLUMNS))
    # a table replaced without the writer (as a kill after its rename, before the index update)
    table = pq.read_table(batch_file(store, BATCHES[0]))
    table = table.set_column(table.schema.get_field_index("category_path"), "category_path",
                             table.column("category_path").fill_null("x").cast("string"))
    rewritten = batch_file(store, BATCHES[0]).with_name("new.parquet")
    pq.write_table(table.slice(0, 7), rewritten)
    os.replace(rewritten, batch_file(store, BATCHES[0]))
    pd.testing.assert_frame_equal(read_index(store), _from_partitions(store, INDEX_COLUMNS))
    assert partition_md5s(store)[BATCHES[0]] == hashlib.md5(batch_file(store, BATCHES[0]).read_bytes()).hexdigest()
    # an index that is lost or corrupt is rebuilt from the partitions
    index_path(store).write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(read_index(store), _from_partitions(store, INDEX_COLUMNS))
    index_path(store).unlink()
    assert count_listings(store) == len(_from_partitions(store, ["listing_id"]))
    # the index lives beside the store, never in what DVC tracks, and git ignores it
    assert store not in index_path(store).parents
    assert (index_path(store).parent / ".gitignore").read_text().splitlines()[-1] == "*"


def test_growing_the_golden_set_reads_the_new_partitions_only(tmp_path, styles, fashion_dir, monkeypatch):
    from common.params import Params
    from ingestion.versioning import update_golden

    state = State(tmp_path / "state").ensure()
    params = Params().with_overrides({"prepare": {"golden_min_listings": 2, "golden_fraction": 0.3}})
    _store(state.workspace, styles, fashion_dir)
    path, changed = update_golden(state, params)
    before = pd.read_parquet(path)
    assert changed and len(before) > 0
    _partition(state.listings_store, NEW, pd.concat([styles.iloc[120:150], before.head(3).rename(
        columns={"listing_id": "id"}).merge(styles, on="id")[styles.columns]]), fashion_dir, relabel=True)

    reads = _Reads(monkeypatch, state.listings_store)
    path, changed = update_golden(state, params)
    # the new partition, once for the index (pre-read by its writer here) and once whole
    assert reads.count <= 2, f"{reads.count} partition reads to grow the golden set by one batch of 7"
    monkeypatch.undo()
    golden = pd.read_parquet(path)
    store = read_store(state.listings_store)
    assert changed and set(before["listing_id"]) < set(golden["listing_id"])
    # updates of golden listings stay golden with their latest row; new picks come from NEW only
    latest = store.set_index("listing_id").loc[golden["listing_id"]]
    assert (golden.set_index("listing_id")["category_path"] == latest["category_path"]).all()
    added = set(golden["listing_id"]) - set(before["listing_id"])
    assert added and set(store.set_index("listing_id").loc[sorted(added), "batch_id"]) == {NEW}


def test_the_monitors_fresh_listings_read_only_the_weeks_partitions(tmp_path, styles, fashion_dir, monkeypatch):
    """The monitor scores the champion on the week's fresh listings (in no other batch, not
    golden): it reads the new partition, the index and the golden ids, not every partition, and
    finds what the whole store's latest versions give."""
    from monitoring.fresh_batch import fresh_listings

    state = State(tmp_path / "state")
    store = _store(state.workspace, styles, fashion_dir)  # <state>/workspace/data/listings
    assert store == state.listings_store
    state.golden_dir.mkdir(parents=True)
    golden = styles["id"].iloc[[121, 125]].tolist()
    pd.DataFrame({"listing_id": golden}).to_parquet(state.golden_dir / "golden.parquet")
    # the new batch: 30 new listings and 3 that earlier batches hold (updates: not fresh)
    _partition(store, NEW, pd.concat([styles.iloc[120:150], styles.iloc[0:3]]), fashion_dir)
    read_store(store, INDEX_COLUMNS)  # the index is current (the week's validation did this)
    reads = _Reads(monkeypatch, store)
    fresh = fresh_listings(state, [NEW])
    read = {Path(s).relative_to(store).parts[1] for s in reads.sources if Path(s).is_relative_to(store)}
    monkeypatch.undo()
    whole = read_store(store)
    seen = set(read_store(store, ["listing_id", "title"], exclude_batches=[NEW])["listing_id"])
    expected = whole[(whole["batch_id"] == NEW) & ~whole["listing_id"].isin(seen | set(golden))].reset_index(drop=True)
    pd.testing.assert_frame_equal(fresh, expected)
    assert len(fresh) == 28 and read == {NEW}  # of the store, only the week's partition
