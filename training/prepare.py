"""Prepare stage: splits and an image cache.

Reads the listings store, removes every golden listing (golden listings never enter training),
splits the rest into train/val (stratified by leaf, deterministic), keeps, in a run from the
champion, the new batches' listings and a replay sample of earlier ones (``training.replay``),
and writes their images as a uint8 array ``(N, S, S, 3)`` so that training never decodes a JPEG
again. The pixels come from the per-partition pixel cache (:mod:`training.pixels`,
``data/pixels``): a store partition is decoded once per image size, so a week decodes its new
partition, not the store.

Outputs under ``data/prepared/``: ``{train,val,golden}.parquet`` (the rows, canonical columns) and
``{train,val,golden}_images.npy`` (same row order); ``data/pixels`` (persisted between runs).

Label issues (``validate.label_issues``): the monitor task's flags, ``data/label_issues/<batch>.csv``
(:func:`label_issue_exclusions`), are listed in ``data/prepared/excluded.json``; with
``exclude_from_training`` the flagged listings are also left out of train and val (they stay in
the store).

CLI::

    python -m training.prepare --params params.yaml [--workspace .]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common.images import ImageReadError
from common.params import Params, load_params
from common.store import batch_ids, image_path, read_store
from training.pixels import PIXELS, PixelCache
from training.presets import load_image
from training.replay import plan_replay, select_replay, write_plan

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "golden")
LABEL_ISSUES_DIR = Path("data") / "label_issues"
"""In the workspace: the monitor task's flags, one CSV per batch (``monitoring.fresh_batch``)."""
EXCLUDED_FILE = "excluded.json"
"""In ``data/prepared/``: the label-issue policy, the flags in force and the ids left out."""


RETIRED_FILE = Path("data") / "retired_categories.json"
"""In the workspace: ``{"retired": [category paths]}``, written by the validate step
(``validation.taxonomy.write_retired``); absent: nothing retired."""


def retired_categories(workspace: Path) -> frozenset[str]:
    """The retired category paths of a workspace (:data:`RETIRED_FILE`; none when absent)."""
    path = Path(workspace) / RETIRED_FILE
    return frozenset(json.loads(path.read_text(encoding="utf-8"))["retired"]) if path.is_file() else frozenset()


def split_key(listing_id: str, seed: int) -> str:
    """Seeded, stable sort key of a listing (SHA-256 of ``"<seed>:<listing_id>"``)."""
    return hashlib.sha256(f"{seed}:{listing_id}".encode()).hexdigest()


def stratified_split(frame: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Assigns each listing to ``"train"`` or ``"val"``, per leaf category.

    Within each category the listings are ordered by :func:`split_key` and the first
    ``round(val_fraction * n)`` go to val, keeping at least one in train (a category with one
    listing is train only). The same ids and seed always give the same split, and a listing's
    side only changes when its category grows enough to move the cut.

    Returns:
        A Series of ``"train"`` / ``"val"`` aligned on ``frame.index``.
    """
    side = pd.Series("train", index=frame.index, dtype=object)
    if val_fraction <= 0 or frame.empty:
        return side
    keys = frame["listing_id"].astype(str).map(lambda i: split_key(i, seed))
    for _, idx in frame.groupby("category_path", sort=True).groups.items():
        n = len(idx)
        n_val = min(n - 1, int(round(val_fraction * n)))
        if n_val <= 0:
            continue
        ordered = keys.loc[idx].sort_values(kind="stable").index
        side.loc[ordered[:n_val]] = "val"
    return side


def label_issue_exclusions(listings: pd.DataFrame, issues_dir: Path) -> pd.DataFrame:
    """The monitor's label-issue flags, and whether each still holds for the listing's current row.

    Rule: a flag ``(listing_id, given_label)`` holds while the listing's current row (the store's
    latest version, as :func:`common.store.read_store` returns it) still carries the flagged
    category: a later update that relabels the listing to another category clears it; an
    update that keeps the flagged category keeps it (the label judged wrong is still there).
    Flags of listings not in ``listings`` (golden, or gone) are dropped.

    Args:
        listings: the current rows, with ``listing_id`` and ``category_path``.
        issues_dir: folder of ``<batch_id>.csv`` files with at least ``listing_id`` and
            ``given_label`` (:data:`monitoring.label_issues.ISSUE_COLUMNS`); missing: no flag.

    Returns:
        One row per flag of a listing in ``listings``: ``listing_id``, ``given_label``,
        ``flagged_in`` (the CSV's stem, a batch id), ``current_label`` and ``active`` (bool,
        the rule above), sorted by ``listing_id`` then ``flagged_in``.

    Raises:
        ValueError: when a CSV lacks ``listing_id`` or ``given_label``.
    """
    columns = ["listing_id", "given_label", "flagged_in", "current_label", "active"]
    files = sorted(Path(issues_dir).glob("*.csv")) if Path(issues_dir).is_dir() else []
    frames = []
    for path in files:
        flags = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = {"listing_id", "given_label"} - set(flags.columns)
        if missing:
            raise ValueError(f"label-issue file {path} lacks the column(s) {sorted(missing)}")
        frames.append(flags[["listing_id", "given_label"]].assign(flagged_in=path.stem))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "active" else object) for c in columns})
    current = dict(zip(listings["listing_id"].astype(str), listings["category_path"].astype(str), strict=True))
    flags = pd.concat(frames, ignore_index=True)
    flags = flags[flags["listing_id"].isin(current)].copy()
    flags["current_label"] = flags["listing_id"].map(current)
    flags["active"] = flags["current_label"] == flags["given_label"]
    return flags.sort_values(["listing_id", "flagged_in"], kind="stable").reset_index(drop=True)[columns]


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            out[i] = load_image(path, size)
        except (OSError, ImageReadError) as exc:
            raise OSError(f"cannot decode image {path}: {exc}") from exc
    return out


def decode_images(paths: list[str], size: int, out_file: Path, workers: int = 2,
                  chunk: int = 256) -> None:
    """Decodes images into a ``.npy`` file of shape ``(len(paths), size, size, 3)`` uint8.

    Written through ``np.lib.format.open_memmap`` so memory stays bounded by ``workers * chunk``
    images whatever the store size.

    Raises:
        OSError: when an image cannot be read or decoded (the validate step should have refused
            it); the message names the image and the loader's reason.
    """
    out_file.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.uint8,
                                      shape=(len(paths), size, size, 3))
    jobs = [(paths[i:i + chunk], size) for i in range(0, len(paths), chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_decode_chunk, jobs)
            for i, block in zip(range(0, len(paths), chunk), results, strict=True):
                array[i:i + len(block)] = block
    else:
        for i, job in zip(range(0, len(paths), chunk), jobs, strict=True):
            array[i:i + len(job[0])] = _decode_chunk(job)
    array.flush()
    del array


def prepare(workspace: Path, params: Params, workers: int | None = None) -> dict:
    """Runs the prepare stage in a workspace.

    Args:
        workspace: folder holding ``data/listings`` and ``data/golden/golden.parquet``.
        params: the project params (group ``prepare``).
        workers: decoding processes; defaults to ``min(2, os.cpu_count())``.

    Returns:
        ``{"train": n, "val": n, "golden": n, "classes": n, "dropped_golden": n,
        "excluded_label_issues": n, "image_size": S, "seconds": s, "out_dir": str}``; the
        label-issue record is ``data/prepared/excluded.json`` (``policy``, ``flagged``,
        ``excluded``, ``cleared_by_relabel``, ``excluded_ids``); with ``replay`` (``"full"``
        or ``"replay"``) and ``replay_counts`` (:func:`training.replay.select_replay`), the
        plan in ``data/prepared/replay.json``.

    Raises:
        FileNotFoundError: when the golden set is missing.
        ValueError: when no listing is left for training, or a label-issue CSV is malformed.
    """
    t0 = time.perf_counter()
    workspace = Path(workspace)
    store = workspace / "data" / "listings"
    golden_file = workspace / "data" / "golden" / "golden.parquet"
    out_dir = workspace / "data" / "prepared"
    cfg = params.prepare

    listings = read_store(store)
    golden = pd.read_parquet(golden_file).reset_index(drop=True)
    golden_ids = set(golden["listing_id"].astype(str))
    in_golden = listings["listing_id"].astype(str).isin(golden_ids)
    pool = listings.loc[~in_golden].reset_index(drop=True)
    if pool.empty:
        raise ValueError("no listing left for training once the golden set is removed")
    # retired categories (python -m validation.taxonomy retire) stay in the store, untrained
    in_retired = pool["category_path"].isin(retired_categories(workspace))
    pool = pool.loc[~in_retired].reset_index(drop=True)
    if pool.empty:
        raise ValueError("no listing left for training once the retired categories are removed")

    # label issues (validate.label_issues): flagged listings stay in the store, and with
    # exclude_from_training out of train/val while their flagged label is their current one
    flags = label_issue_exclusions(pool, workspace / LABEL_ISSUES_DIR)
    flagged = sorted(set(flags.loc[flags["active"], "listing_id"]))
    policy = params.validate_.label_issues
    excluded = flagged if policy == "exclude_from_training" else []
    if excluded:
        pool = pool.loc[~pool["listing_id"].astype(str).isin(excluded)].reset_index(drop=True)
        if pool.empty:
            raise ValueError("no listing left for training once the flagged label issues are excluded")
    label_record = {"policy": policy, "flagged": len(flagged), "excluded": len(excluded),
                    "cleared_by_relabel": int(flags.loc[~flags["active"], "listing_id"].nunique()),
                    "excluded_ids": excluded}

    side = stratified_split(pool, cfg.val_fraction, cfg.seed)
    # replay (training.replay): a run from the champion keeps the new batches' listings and a
    # stratified sample of earlier ones; only their images are decoded
    plan = plan_replay(workspace, params, batch_ids(store))
    kept, plan = select_replay({"train": pool.loc[side == "train"].reset_index(drop=True),
                                "val": pool.loc[side == "val"].reset_index(drop=True)}, plan, params)
    frames = {**kept, "golden": golden}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / EXCLUDED_FILE).write_text(json.dumps(label_record, indent=1))
    write_plan(out_dir, plan)
    workers = workers or min(2, os.cpu_count() or 1)
    summary: dict = {}
    pixels = PixelCache(workspace / PIXELS, cfg.image_size, store, workers)
    (workspace / PIXELS).mkdir(parents=True, exist_ok=True)  # the stage output exists even when unused
    pixels.drop_others()
    decoded, reused, partitions = 0, 0, set(batch_ids(store))
    for name in SPLITS:
        frame = frames[name]
        frame.to_parquet(out_dir / f"{name}.parquet", index=False)
        if {"batch_id", "image_key", "image_sha256"} <= set(frame.columns) and frame["batch_id"].isin(partitions).all():
            got = pixels.gather(frame, out_dir / f"{name}_images.npy")  # a partition decoded once
            decoded, reused = decoded + got.decoded, reused + got.reused
        else:  # rows of no store partition (a golden file of another origin): decoded here
            paths = [str(image_path(store, key)) for key in frame["image_key"]]
            decode_images(paths, cfg.image_size, out_dir / f"{name}_images.npy", workers=workers)
            decoded += len(frame)
        summary[name] = len(frame)
    log.info("prepare: %d images decoded now, %d rows from partitions decoded before (%s)", decoded, reused,
             pixels.folder)
    summary.update(
        classes=int(frames["train"]["category_path"].nunique()),
        dropped_golden=int(in_golden.sum()),
        dropped_retired=int(in_retired.sum()),
        excluded_label_issues=len(excluded),
        replay=plan.mode,
        replay_counts=plan.counts,
        image_size=cfg.image_size,
        images_decoded=decoded,
        images_reused=reused,
        seconds=round(time.perf_counter() - t0, 2),
        out_dir=str(out_dir),
    )
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--workspace", default=".", help="workspace folder (default: .)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes")
    args = parser.parse_args(argv)
    summary = prepare(Path(args.workspace), load_params(args.params), workers=args.workers)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
