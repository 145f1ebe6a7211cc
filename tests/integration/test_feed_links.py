"""Nothing is read from outside the feed, nothing a feed holds blocks a read, and no clock of the
partner's decides which version of a listing wins.

Real feeds published from real fashion rows (:func:`ingestion.feed.publish`), real ingest, the
real validation CLI (GX, images, store). Each hostile feed is built with the real filesystem
object (a symbolic link to ``/etc/passwd``, a FIFO, a hard link, a file dated 2099).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import load_catalog
from common.files import NotRegularFileError
from common.params import load_params
from common.state import State
from ingestion.feed import publish
from ingestion.ingest import ingest_new_batches
from ingestion.manifest import read_manifest
from ingestion.sources import FeedError, LocalFeed

pytestmark = pytest.mark.integration

CATALOG = load_catalog("catalogs/fashion.yaml")
WEEKS = ["fashion-2026-11-02", "fashion-2026-11-09", "fashion-2026-11-16"]


@pytest.fixture()
def feed(tmp_path: Path, fashion_dir: Path) -> Path:
    root = tmp_path / "feed"
    publish(fashion_dir, root, weeks=3, catalog=CATALOG, limit=60)
    return root


def _returns_within(seconds: float, call, fifo: Path):
    """``call()``'s outcome (its value or the exception it raised), failing the test when it is
    still running after ``seconds``; a reader stuck on ``fifo`` is then freed (a writer opens
    and closes it), so the test ends either way."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the reader blocked on it
        worker.join(10)
        pytest.fail(f"still blocked after {seconds} s on the FIFO {fifo.name}")
    return outcome


def test_a_taxonomy_that_links_outside_the_feed_is_refused_not_copied(tmp_path, feed):
    (feed / "taxonomy.json").unlink()
    (feed / "taxonomy.json").symlink_to("/etc/passwd")
    state = State(tmp_path / "state")
    with pytest.raises(FeedError, match="taxonomy.json is a symbolic link"):
        ingest_new_batches(state, load_params(), None, str(feed))
    copy = state.staging / "_taxonomy.json"
    assert not copy.exists() or copy.read_bytes() != Path("/etc/passwd").read_bytes()
    assert read_manifest(state.manifest) == {}


def test_a_taxonomy_that_is_a_fifo_fails_at_once(tmp_path, feed):
    fifo = feed / "taxonomy.json"
    fifo.unlink()
    os.mkfifo(fifo)
    state = State(tmp_path / "state")
    outcome = _returns_within(20, lambda: ingest_new_batches(state, load_params(), None, str(feed)), fifo)
    assert isinstance(outcome.get("error"), FeedError), outcome
    assert "taxonomy.json is a FIFO" in str(outcome["error"])


@pytest.mark.parametrize("kind", ["symbolic link", "FIFO"])
def test_load_taxonomy_and_the_validation_cli_refuse_a_taxonomy_that_is_no_file(tmp_path, feed, kind, capsys):
    from validation.cli import main
    from validation.taxonomy import load_taxonomy

    taxonomy = feed / "taxonomy.json"
    real = tmp_path / "real-taxonomy.json"
    shutil.move(taxonomy, real)
    if kind == "FIFO":
        os.mkfifo(taxonomy)
    else:
        taxonomy.symlink_to(real)  # even a link to a valid taxonomy: links are never followed
    outcome = _returns_within(20, lambda: load_taxonomy(taxonomy), taxonomy)
    assert isinstance(outcome.get("error"), NotRegularFileError) and outcome["error"].kind == kind
    outcome = _returns_within(
        20, lambda: main(["--feed", str(feed), "--state", str(tmp_path / "state")]), taxonomy)
    assert isinstance(outcome.get("error"), SystemExit) and outcome["error"].code == 2
    assert f"cannot load taxonomy: {taxonomy} is a {kind}" in capsys.readouterr().err


def test_a_batch_folder_that_is_a_link_is_quarantined_and_the_others_flow(tmp_path, feed):
    """The link points at a real batch moved out of the feed: refused all the same, recorded
    like any refused batch, and the batches around it are staged."""
    linked = WEEKS[1]
    outside = tmp_path / "elsewhere" / linked
    outside.parent.mkdir()
    shutil.move(feed / linked, outside)
    (feed / linked).symlink_to(outside, target_is_directory=True)
    state = State(tmp_path / "state")

    result = ingest_new_batches(state, load_params(), None, str(feed))

    assert result.ingested == (WEEKS[0], WEEKS[2])
    (refused,) = result.refused
    assert (refused.batch_id, refused.reason) == (linked, "batch_holds_link")
    assert "is a symbolic link" in refused.detail and str(outside) in refused.detail
    report = json.loads(Path(refused.report).read_text())
    assert report["status"] == "quarantined" and report["reasons"] == {"batch_holds_link": 1}
    entry = read_manifest(state.manifest)[linked]
    assert entry["status"] == "quarantined" and entry["stage"] == "ingest" and entry["fingerprint"]
    assert not (state.staging / linked).exists()
    assert ingest_new_batches(state, load_params(), None, str(feed)).refused == ()  # once

    (feed / linked).unlink()  # the partner publishes the real folder: a new delivery
    shutil.move(outside, feed / linked)
    fixed = ingest_new_batches(state, load_params(), None, str(feed))
    assert fixed.ingested == (linked,)
    assert (state.staging / linked / "styles.csv").read_bytes() == (feed / linked / "styles.csv").read_bytes()


def test_a_batch_that_is_a_fifo_or_a_file_is_quarantined_and_the_others_flow(tmp_path, feed):
    fifo, file = "fashion-2026-11-23", "fashion-2026-11-30"
    os.mkfifo(feed / fifo)
    shutil.copyfile(feed / WEEKS[0] / "styles.csv", feed / file)  # a batch sent as a bare file
    state = State(tmp_path / "state")

    outcome = _returns_within(60, lambda: ingest_new_batches(state, load_params(), None, str(feed)),
                              feed / fifo)

    result = outcome["value"]
    assert result.ingested == tuple(WEEKS)
    assert sorted((r.batch_id, r.reason) for r in result.refused) == [
        (fifo, "batch_not_a_folder"), (file, "batch_not_a_folder")]
    details = {r.batch_id: r.detail for r in result.refused}
    assert "is a FIFO, not a batch folder" in details[fifo]
    assert "is a regular file, not a batch folder" in details[file]
    manifest = read_manifest(state.manifest)
    assert manifest[fifo]["status"] == manifest[file]["status"] == "quarantined"
    assert (state.quarantine / fifo / "report.json").is_file()


def test_a_link_inside_a_batch_folder_is_never_entered(tmp_path, feed):
    """A link to a folder outside the feed, inside a batch: refused, not walked (its files
    are neither copied nor read to fingerprint the batch)."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.jpg").write_bytes(b"not the feed's")
    (feed / WEEKS[0] / "images" / "more").symlink_to(secret, target_is_directory=True)
    state = State(tmp_path / "state")

    result = ingest_new_batches(state, load_params(), None, str(feed))

    assert [(r.batch_id, r.reason) for r in result.refused] == [(WEEKS[0], "batch_holds_link")]
    assert "images/more" in result.refused[0].detail
    before = LocalFeed(feed).fingerprint(WEEKS[0])
    (secret / "key.jpg").write_bytes(b"changed outside the feed")
    assert LocalFeed(feed).fingerprint(WEEKS[0]) == before, "the link's target was read"


def test_a_hard_link_to_a_file_outside_the_feed_is_refused(tmp_path, feed, real_jpeg):
    """Policy: a file whose names are all inside the feed is accepted (a partner re-publishing
    one image in two batches); one with a name outside the feed is someone else's file and is
    refused. Staging holds copies, never links."""
    batch, other = WEEKS[0], WEEKS[1]
    rows = pd.read_csv(feed / batch / "styles.csv", dtype=str)
    image = feed / batch / "images" / f"{rows['id'].iloc[0]}.jpg"
    outside = tmp_path / "outside" / "platform-secret.jpg"
    outside.parent.mkdir()
    shutil.copyfile(real_jpeg, outside)
    image.unlink()
    os.link(outside, image)
    # inside the feed: the next week re-publishes an image of its own as a hard link
    shared_rows = pd.read_csv(feed / other / "styles.csv", dtype=str)
    shared = feed / other / "images" / f"{shared_rows['id'].iloc[0]}.jpg"
    twin = feed / WEEKS[2] / "images" / "same-as-last-week.jpg"
    os.link(shared, twin)
    state = State(tmp_path / "state")

    result = ingest_new_batches(state, load_params(), None, str(feed))

    assert result.ingested == (other, WEEKS[2])
    (refused,) = result.refused
    assert (refused.batch_id, refused.reason) == (batch, "batch_holds_hard_link")
    assert f"images/{image.name}" in refused.detail and "outside the feed folder" in refused.detail
    assert read_manifest(state.manifest)[batch]["status"] == "quarantined"
    staged_twin = state.staging / WEEKS[2] / "images" / twin.name
    assert staged_twin.read_bytes() == shared.read_bytes()
    assert staged_twin.stat().st_nlink == 1 and staged_twin.stat().st_ino != shared.stat().st_ino

    image.unlink()  # the partner publishes a copy of its own: new content, staged
    shutil.copyfile(real_jpeg, image)
    fixed = ingest_new_batches(state, load_params(), None, str(feed))
    assert fixed.ingested == (batch,)


def test_a_batch_name_with_an_impossible_date_says_so(tmp_path, feed):
    name = "fashion-2026-02-30"
    shutil.copytree(feed / WEEKS[2], feed / name)
    state = State(tmp_path / "state")
    result = ingest_new_batches(state, load_params(), datetime(2026, 11, 2, tzinfo=UTC), str(feed))
    (refused,) = result.refused
    assert (refused.batch_id, refused.reason) == (name, "batch_name_date_invalid")
    assert "2026-02-30 is not a valid date: day is out of range for month" in refused.detail
    assert read_manifest(state.manifest)[name]["report"]["reasons"] == {"batch_name_date_invalid": 1}


def test_a_listings_file_dated_2099_does_not_outrank_the_next_weeks_correction(tmp_path, fashion_dir):
    """Week 2 corrects a week-1 listing's title; week 1's file claims to be written in 2099. The
    validation CLI stamps rows with the batch date, and the store's latest version is the
    later week's."""
    from common.store import read_store
    from validation.cli import main

    feed = tmp_path / "feed"
    first, second = publish(fashion_dir, feed, weeks=2, catalog=CATALOG, start=date(2026, 11, 2), limit=40)
    week1 = pd.read_csv(feed / first / "styles.csv", dtype=str, keep_default_na=False)
    corrected = week1.iloc[[0]].copy()
    listing = corrected["id"].iloc[0]
    corrected["productDisplayName"] = corrected["productDisplayName"] + " (corrected title)"
    week2 = pd.read_csv(feed / second / "styles.csv", dtype=str, keep_default_na=False)
    pd.concat([week2, corrected]).to_csv(feed / second / "styles.csv", index=False)
    shutil.copyfile(feed / first / "images" / f"{listing}.jpg", feed / second / "images" / f"{listing}.jpg")
    in_2099 = datetime(2099, 1, 1, tzinfo=UTC).timestamp()
    os.utime(feed / first / "styles.csv", (in_2099, in_2099))

    assert main(["--feed", str(feed), "--state", str(tmp_path / "state"), "--json"]) == 0

    store = read_store(State(tmp_path / "state").listings_store).set_index("listing_id")
    assert store.at[listing, "batch_id"] == second
    assert store.at[listing, "title"].endswith("(corrected title)")
    assert store.at[listing, "ingested_at"] == "2026-11-09T00:00:00+00:00"
