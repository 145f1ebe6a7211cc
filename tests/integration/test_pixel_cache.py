"""The prepare stage's pixel cache (``training.pixels``) on a store of real fashion listings: a
partition is decoded once per image size, later splits are gathered from it, and what it gives
is exactly what decoding the images gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.store import batch_file, image_path, read_store
from tests.integration.test_training_stages import build_workspace

pytestmark = pytest.mark.integration

SIZE = 24


@pytest.fixture()
def store(fashion_dir, tmp_path):
    ws = tmp_path / "ws"
    build_workspace(fashion_dir, ws)
    return ws / "data" / "listings"


def decoded(store, frame: pd.DataFrame, out) -> np.ndarray:
    from training.prepare import decode_images

    decode_images([str(image_path(store, k)) for k in frame["image_key"]], SIZE, out, workers=1)
    return np.load(out)


def test_each_partition_is_decoded_once_and_splits_are_gathered_from_it(store, tmp_path):
    from training.pixels import PixelCache

    frame = read_store(store)
    assert sorted(frame["batch_id"].unique()) == ["2025-01-06", "2025-01-13"]
    root = tmp_path / "pixels"
    first = PixelCache(root, SIZE, store, workers=1).gather(frame.iloc[::3], tmp_path / "a.npy")
    assert (first.partitions_decoded, first.decoded, first.reused) == (2, frame["image_sha256"].nunique(), 0)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), decoded(store, frame.iloc[::3], tmp_path / "d.npy"))

    # another split, another process (a new cache object): nothing decoded
    other = frame.iloc[1::2].sample(frac=1.0, random_state=0)
    second = PixelCache(root, SIZE, store, workers=1).gather(other, tmp_path / "b.npy")
    assert (second.partitions_decoded, second.decoded, second.reused) == (0, 0, len(other))
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), decoded(store, other, tmp_path / "d.npy"))

    # a new week's partition: only it is decoded
    new = frame.iloc[:20].assign(listing_id=[f"n{i}" for i in range(20)], batch_id="2025-01-20")
    batch_file(store, "2025-01-20").parent.mkdir(parents=True)
    new.to_parquet(batch_file(store, "2025-01-20"), index=False)
    week = read_store(store)
    third = PixelCache(root, SIZE, store, workers=1).gather(week, tmp_path / "c.npy")
    assert (third.partitions_decoded, third.decoded, third.reused) == (1, 20, len(frame))
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), decoded(store, week, tmp_path / "d.npy"))

    # another image size has files of its own
    assert PixelCache(root, SIZE + 8, store, workers=1).gather(week, tmp_path / "e.npy").partitions_decoded == 3


def test_a_replaced_partition_or_a_cut_short_file_is_decoded_again(store, tmp_path):
    from training.pixels import PixelCache

    frame = read_store(store)
    root = tmp_path / "pixels"
    cache = PixelCache(root, SIZE, store, workers=1)
    cache.gather(frame, tmp_path / "a.npy")
    # the second partition re-written with another listing's image on its first row
    part = pd.read_parquet(batch_file(store, "2025-01-13"))
    donor = frame[frame["batch_id"] == "2025-01-06"].iloc[0]
    part.loc[0, ["image_key", "image_sha256"]] = [donor["image_key"], donor["image_sha256"]]
    part.to_parquet(batch_file(store, "2025-01-13"), index=False)
    week = read_store(store)
    again = PixelCache(root, SIZE, store, workers=1).gather(week, tmp_path / "b.npy")
    assert again.partitions_decoded == 1 and again.reused == (week["batch_id"] == "2025-01-06").sum()
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), decoded(store, week, tmp_path / "d.npy"))

    # a decode cut short (pixels written, the sha list not yet): never trusted
    (root / f"{SIZE}px-v1" / "2025-01-06.sha256.json").unlink()
    cut = PixelCache(root, SIZE, store, workers=1).gather(week, tmp_path / "c.npy")
    assert cut.partitions_decoded == 1 and cut.reused == (week["batch_id"] == "2025-01-13").sum()


def test_the_prepare_stage_decodes_a_partition_once(fashion_dir, tmp_path):
    """prepare twice on one workspace: the second run decodes nothing, and the prepared arrays
    are the images decoded."""
    from common.params import Params
    from training.prepare import prepare

    ws = tmp_path / "ws"
    golden = build_workspace(fashion_dir, ws)
    store = ws / "data" / "listings"
    # golden rows of the store's partitions (build_workspace leaves their batch_id empty)
    rows = read_store(store).set_index("listing_id")
    golden.assign(batch_id=rows.loc[golden["listing_id"], "batch_id"].to_numpy()).to_parquet(
        ws / "data" / "golden" / "golden.parquet", index=False)
    params = Params().with_overrides({"prepare": {"image_size": SIZE, "val_fraction": 0.1}})
    (ws / "data" / "pixels" / "64px-v1").mkdir(parents=True)  # of an earlier image size
    (ws / "data" / "pixels" / "64px-v1" / "2025-01-06.npy").write_bytes(b"old pixels")
    first = prepare(ws, params, workers=1)
    assert [p.name for p in (ws / "data" / "pixels").iterdir()] == [f"{SIZE}px-v1"]
    second = prepare(ws, params, workers=1)
    n = first["train"] + first["val"] + first["golden"]
    # train decodes both partitions, whole; val and golden are gathered from them
    assert (first["images_decoded"], first["images_reused"]) == (rows["image_sha256"].nunique(),
                                                                  first["val"] + first["golden"])
    assert (second["images_decoded"], second["images_reused"]) == (0, n)
    assert sorted(p.name for p in (ws / "data" / "pixels" / f"{SIZE}px-v1").iterdir()) == [
        "2025-01-06.npy", "2025-01-06.sha256.json", "2025-01-13.npy", "2025-01-13.sha256.json"]
    prepared = ws / "data" / "prepared"
    for split in ("train", "val", "golden"):
        frame = pd.read_parquet(prepared / f"{split}.parquet")
        np.testing.assert_array_equal(np.load(prepared / f"{split}_images.npy"),
                                      decoded(store, frame, tmp_path / "d.npy"))
