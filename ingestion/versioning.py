"""Versioning with DVC: the accepted listings store and the golden test set, one data revision a run.

The store and the golden set are DVC outputs of the workspace (:mod:`ingestion.workspace`: the
git + DVC repository the pipeline runs in, its remote, its lock and the git / DVC runner).
:func:`version_data` adds what changed, commits (the commit's sha is the *data revision* passed
on through XCom and tagged on every model version) and pushes to the DVC remote.

Versioning a batch costs what the batch costs, not what the store costs. Each partition folder
of the store (``data/listings/batches/<batch_id>``, see :mod:`common.store`) is a DVC output of
its own, with its pointer beside it (``<batch_id>.dvc``): a week's ``dvc add`` hashes and caches
only the new folder and writes only its pointer, and ``dvc push`` uploads only its files, whatever
the size of the store; no manifest of the whole store is read or rewritten (one DVC output for the
whole store did that, docs/measurements.md, session 22). Which partitions changed is read from
``data/store_version.json`` (:data:`ingestion.workspace.STORE_VERSION`, committed with the
pointers): each partition's directory hash and the MD5 of its ``listings.parquet`` when it was
added, compared with the pointers and with the table hashes the store's index keeps
(:func:`common.store.partition_md5s`); a partition is written whole and its table lists its
images, so the table identifies the folder. A partition no longer in the store loses its pointer
(``dvc remove``: the data stays in the cache and on the remote, for older revisions). A workspace
versioned before 2026-12 (``data/listings.dvc``, the store as one output) is converted by the
next version: the whole pointer is removed and each partition added (files already in DVC's cache
are not hashed again). A push that failed is remembered in
``<state>/dvc-push-pending.json`` and retried with the next version, so a retried task never
leaves data only in the local cache.

A killed or failed version leaves the workspace consistent for the retry: it runs under the
workspace lock after :func:`ingestion.workspace.clear_stale_locks`, the pending-push record is
written before ``dvc add``, a ``.dvc`` pointer left half written is put back from the last commit
(:func:`restore_pointers`), ``dvc add`` and ``git commit`` are redone on the next call for
whatever they had not finished, and DVC writes its cache and remote objects to a temporary name
renamed into place. A full disk is reported as :class:`common.store.DiskFullError` naming the
state folder.

CLI::

    python -m ingestion.versioning version      # dvc add + git commit + dvc push

(``dvc repro`` of prepare -> train -> evaluate in the same workspace is ``training.pipeline``.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from common.files import atomic_write, write_json
from common.params import Params, load_params
from common.results import DataVersionResult
from common.state import State
from common.store import (
    BATCHES,
    LISTINGS_FILE,
    batch_ids,
    disk_full_errors,
    partition_md5s,
    read_batches,
    read_index,
    read_store,
)
from ingestion.dvcfiles import DvcFileError, is_complete, out_md5, parse_dvc_file
from ingestion.manifest import read_manifest, update_entries
from ingestion.workspace import (
    GOLDEN,
    LEGACY_LISTINGS_POINTER,
    LISTINGS,
    PARTITIONS,
    STORE_VERSION,
    VersioningError,
    clear_stale_locks,
    commit,
    configure_remote,
    init_workspace,
    partition_pointers,
    pointer_names,
    read_store_version,
    remote_url,
    run_dvc,
    run_git,
    sync_snapshot,
    workspace_lock,
    write_store_version,
)

LABEL_ISSUES = "data/label_issues"
"""The monitor task's label-issue flags, one ``<batch_id>.csv`` each (``monitoring.fresh_batch``),
relative to the workspace: one DVC output (``data/label_issues.dvc``), added when its files differ
from what the pointer tracks (:func:`label_issues_changed`; empty before the first champion, a
valid DVC output). ``training.prepare.LABEL_ISSUES_DIR`` reads it."""
PENDING_PUSH = "dvc-push-pending.json"
"""In the state root: DVC targets added and committed but not yet pushed (a push that failed)."""

log = logging.getLogger(__name__)


def data_pointer_names(ws: Path) -> list[str]:
    """Workspace-relative names (without ``.dvc``) of the outputs whose pointers versioning writes:
    the store (one per partition, one per entry beside the partitions, or the whole store's from
    before 2026-12), the golden set and the label-issue flags; those of the fixed names whether
    or not their pointer exists. Restored by :func:`restore_pointers`, pulled by ``make reproduce``
    (:mod:`promotion.reproduce`)."""
    # listed, not read: a pointer cut short must be found here to be restored
    return [LEGACY_LISTINGS_POINTER[:-4], GOLDEN, LABEL_ISSUES,
            *(f"{LISTINGS}/{n}" for n in pointer_names(ws / LISTINGS)),
            *(f"{PARTITIONS}/{n}" for n in pointer_names(ws / PARTITIONS))]


def restore_pointers(ws: Path, uncommitted: bool = False) -> list[str]:
    """Puts the ``.dvc`` pointers of the store's partitions, the golden set and the label-issue
    flags back as the last commit has them.

    DVC rewrites a pointer in place (no temporary file), so a kill or a full disk during the
    write can leave it truncated; and a ``dvc add`` that failed may have rewritten it anyway
    (see :func:`ingestion.workspace.run_command`), to objects that are not in the cache. Such a
    pointer is restored as the workspace's last commit has it, or removed when it was never
    committed. The next version then sees the partitions it lacks as changed and adds them again.

    Args:
        ws: the workspace.
        uncommitted: also restore a well-formed pointer that differs from the last commit
            (after a failed ``dvc add``); by default only a half-written one.

    Returns:
        One line per pointer restored or removed (also logged as a warning).
    """
    done = []
    for name in data_pointer_names(ws):
        path = ws / f"{name}.dvc"
        if not path.exists() or (is_complete(path) and not uncommitted):
            continue
        why = "written by a dvc add that failed" if is_complete(path) else "half written"
        try:
            committed = run_git(ws, "show", f"HEAD:{name}.dvc")
        except VersioningError:
            path.unlink()
            done.append(f"removed {path}: {why} and never committed")
            continue
        if path.read_text(encoding="utf-8", errors="replace") == committed:
            continue
        # in place, not via a temporary file: this must work on a full disk (the pointer keeps
        # its blocks); if it is cut short, the next call finds it half written and restores it
        with open(path, "r+", encoding="utf-8") as fh:
            fh.write(committed)
            fh.truncate()
        done.append(f"restored {path} from the last commit: it was {why}")
    for line in done:
        log.warning("DVC pointer: %s", line)
    return done


def _golden_rank(listing_id: str, seed: int) -> int:
    """A stable pseudo-random rank of a listing: the first 8 bytes of sha1(seed:id) as an int."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{listing_id}".encode()).digest()[:8], "big")


GOLDEN_BATCHES_FILE = "batches.json"
"""Beside ``golden.parquet``: the batches already sampled for the golden set (growing policy)."""


def _stratified_pick(frame: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Per leaf category with at least ``prepare.golden_min_listings`` listings, the
    ``round(golden_fraction * n)`` (at least 1) listings of smallest seeded hash of their id."""
    p = params.prepare
    picks = []
    for _, group in frame.groupby("category_path", sort=True):
        if len(group) < p.golden_min_listings:
            continue
        k = max(1, round(p.golden_fraction * len(group)))
        ranked = group.assign(_rank=group["listing_id"].map(lambda i: _golden_rank(i, p.seed)))
        ranked = ranked.sort_values(["_rank", "listing_id"], kind="stable")
        picks.append(ranked.head(k).drop(columns="_rank"))
    return pd.concat(picks) if picks else frame.iloc[0:0]


def update_golden(state: State, params: Params) -> tuple[Path | None, bool]:
    """Creates the golden test set from the first data, then (``prepare.golden_policy: growing``,
    the default) lets it follow the catalog.

    The first time there is data, :func:`_stratified_pick` of the store is the golden set.
    Growing: each later call takes the same seeded, stratified share of the listings of the
    batches not sampled yet that no earlier batch holds (so never a listing any model trained
    on), and adds them; a golden listing that a later batch updates (e.g. relabels) stays golden,
    with its latest row. Frozen: the set never changes after the first time. ``prepare`` keeps
    every golden id out of training at every revision.

    After the first time, a call reads the store's index (:func:`common.store.read_index`) and
    the full rows of the partitions that hold something new for the golden set only: the batches
    not sampled yet, and any other batch now holding the latest version of a golden listing (a
    partition removed, so an older version is the latest again).

    Returns:
        ``(path of golden.parquet or None when the store is still empty, whether it changed)``.
    """
    path = state.golden_dir / "golden.parquet"
    record = state.golden_dir / GOLDEN_BATCHES_FILE
    if path.exists() and params.prepare.golden_policy == "frozen":
        return path, False
    store_dir = state.listings_store
    present = batch_ids(store_dir)
    if not present:
        return (path if path.exists() else None), False
    if not path.exists():
        store = read_store(store_dir)
        golden, sampled, before = _stratified_pick(store, params), set(store["batch_id"]), None
    else:
        before = pd.read_parquet(path)
        sampled = set(json.loads(record.read_text())["batches"]) if record.exists() else set(before["batch_id"])
        new_batches = set(present) - sampled
        index = read_index(store_dir, ["listing_id", "batch_id"])
        golden_ids = set(before["listing_id"])
        moved = index[index["listing_id"].isin(golden_ids)].merge(
            before[["listing_id", "batch_id"]], on="listing_id", suffixes=("", "_golden"))
        moved = set(moved.loc[moved["batch_id"] != moved["batch_id_golden"], "batch_id"])
        rows = read_batches(store_dir, new_batches | moved)
        # the latest version of each listing, where it is in one of the partitions read
        rows = rows.merge(index, on=["listing_id", "batch_id"]).drop_duplicates("listing_id", keep="last")
        earlier = set(read_index(store_dir, ["listing_id"], exclude_batches=new_batches)["listing_id"])
        candidates = rows[rows["batch_id"].isin(new_batches) & ~rows["listing_id"].isin(earlier)
                          & ~rows["listing_id"].isin(golden_ids)]
        latest = rows[rows["listing_id"].isin(golden_ids)]  # updates stay golden
        kept = before[~before["listing_id"].isin(set(latest["listing_id"]))]
        # empty frames left out: their object columns would turn the str columns to object
        golden = pd.concat([f for f in (kept, latest, _stratified_pick(candidates, params)) if not f.empty]
                           or [kept])
        sampled |= new_batches
    golden = golden.sort_values("listing_id").reset_index(drop=True)
    changed = before is None or not before.equals(golden)
    if changed:
        atomic_write(path, lambda tmp: golden.to_parquet(tmp, index=False))
    write_json(record, {"policy": params.prepare.golden_policy, "batches": sorted(sampled)})
    return path, changed


def _md5(path: Path) -> str:
    """MD5 of a file's bytes, as DVC 3 hashes files (``hash: md5``)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_changes(ws: Path, tables: dict[str, str] | None = None) -> list[str]:
    """The partition folders of the listings store that differ from what their pointers track.

    Compares, per partition, the folder on disk, its pointer (``<batch_id>.dvc``) and what
    :data:`ingestion.workspace.STORE_VERSION` recorded when it was added: its directory hash and
    the MD5 of its ``listings.parquet``, against the table's MD5 the store's index keeps
    (:func:`common.store.partition_md5s`: only tables written since the index last saw them are
    read). No file of the store is hashed and no DVC manifest is read: the cost follows the
    number of partitions and the new ones' size, not the store's listings.

    Args:
        ws: the workspace.
        tables: the tables' MD5s when the caller has read them already
            (:func:`common.store.partition_md5s`); read here otherwise.

    Returns:
        Workspace-relative paths (``data/listings/batches/<batch_id>``) of the partitions that
        are new, rewritten or removed (a pointer without its folder), or whose pointer is not
        the one recorded (e.g. restored after a failed add), sorted; ``[]`` when nothing changed.
        Then the store's entries beside ``batches`` (each a DVC output of its own, listed every
        time: see :func:`ingestion.workspace.other_store_pointers`), and the pointers of such
        entries that are gone. Entries of ``batches`` that are no partition are logged as a
        warning and not versioned.

    Raises:
        ingestion.dvcfiles.DvcFileError: when a pointer is not complete (:func:`restore_pointers`
            first).
    """
    store = ws / LISTINGS
    pointers = partition_pointers(ws)
    on_disk = set(batch_ids(store))
    # the store's other entries (e.g. data/listings/images of a store from before the partition
    # layout): each its own DVC output, added every time (DVC's state database makes an unchanged
    # file a stat); a pointer whose entry is gone is removed
    others = set(pointer_names(store))
    beside = ({e.name for e in os.scandir(store) if not e.name.startswith(".") and e.name != BATCHES
               and not e.name.endswith(".dvc")} if store.is_dir() else set())
    folder = store / BATCHES
    stray = []
    if folder.is_dir():
        stray = [e.name for e in os.scandir(folder)
                 if not e.name.startswith(".") and e.name not in on_disk
                 and not (e.name.endswith(".dvc") and e.name[:-4] in pointers)]
    if stray:
        log.warning("not versioned: %s in %s hold no partition (a folder with its %s): %s",
                    len(stray), folder, LISTINGS_FILE, ", ".join(sorted(stray)[:10]))
    if beside:
        log.info("%s beside the partitions in %s: versioned as DVC outputs of their own",
                 ", ".join(sorted(beside)[:10]), store)
    recorded = read_store_version(ws).get("partitions") or {}
    present = tables if tables is not None else (partition_md5s(store) if on_disk else {})
    changed = set(pointers) ^ on_disk  # added, or removed from the store
    for name in on_disk & set(pointers):
        known = recorded.get(name) if isinstance(recorded.get(name), dict) else {}
        if known.get("md5") != pointers[name] or known.get("table_md5") is None \
                or known.get("table_md5") != present.get(name):
            changed.add(name)
    return sorted([*(f"{PARTITIONS}/{name}" for name in changed),
                   *(f"{LISTINGS}/{name}" for name in beside | others)])


def label_issues_changed(ws: Path) -> bool:
    """Whether the files of :data:`LABEL_ISSUES` differ from what ``data/label_issues.dvc`` tracks.

    Compares each file's MD5 with the one in the pointer's directory manifest (read through
    :class:`dvc.api.DVCFileSystem` from the local cache).

    Args:
        ws: the workspace.

    Returns:
        True when there is no pointer yet, its manifest is not in the local cache, or a file was
        added, removed or rewritten; False when the folder is what the pointer tracks.
    """
    from dvc.api import DVCFileSystem

    folder = ws / LABEL_ISSUES
    if not (ws / f"{LABEL_ISSUES}.dvc").exists():
        return True
    on_disk = ({p.relative_to(folder).as_posix(): _md5(p) for p in folder.rglob("*")
                if p.is_file() and not p.name.startswith(".")} if folder.is_dir() else {})
    fs = DVCFileSystem(str(ws))
    try:
        tracked = {e["name"].split(f"{LABEL_ISSUES}/", 1)[1]: (e.get("dvc_info") or {}).get("md5")
                   for e in fs.find(LABEL_ISSUES, detail=True).values() if e.get("type") == "file"}
    except FileNotFoundError:
        return True
    finally:
        fs.close()
    return tracked != on_disk


def _read_pending(state: State) -> list[str]:
    path = state.root / PENDING_PUSH
    return json.loads(path.read_text()) if path.exists() else []


def _write_pending(state: State, targets: list[str]) -> None:
    path = state.root / PENDING_PUSH
    if not targets:
        path.unlink(missing_ok=True)
        return
    text = json.dumps(sorted(set(targets)), indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _push_targets(ws: Path, targets: list[str]) -> list[str]:
    """What ``dvc push`` gets: the outputs among ``targets`` that are still tracked (a partition
    removed since has nothing left to upload; a pending target of the layout before 2026-12,
    ``data/listings``, is pushed by its partitions)."""
    out = set()
    for target in targets:
        target = target[:-4] if target.endswith(".dvc") else target
        if (ws / f"{target}.dvc").is_file():
            out.add(target)
    return sorted(out)


def _convert_legacy_store(ws: Path) -> bool:
    """Stops tracking the store as one output (``data/listings.dvc``, before 2026-12): ``dvc
    remove`` drops the pointer and its ``.gitignore`` entry and keeps the files, which are then
    added partition by partition. Returns whether there was such a pointer."""
    if not (ws / LEGACY_LISTINGS_POINTER).exists():
        return False
    log.info("converting %s: the store tracked as one DVC output becomes one output per partition",
             ws / LEGACY_LISTINGS_POINTER)
    run_dvc(ws, "remove", LEGACY_LISTINGS_POINTER)
    return True


def version_data(state: State, params: Params, note: str = "") -> DataVersionResult:
    """Tracks the listings store and the golden set with DVC, commits, and pushes to the remote.

    Adds and pushes only the partition folders that changed (:func:`store_changes`), each its
    own DVC output, and removes the pointers of partitions no longer in the store, so the cost
    grows with the new batch, not with the store. The golden set is added every time when it
    grows, once when it is frozen. The label-issue
    flags (:data:`LABEL_ISSUES`) are added when they changed (a retry adds nothing twice).

    Args:
        state: the state folder.
        params: the effective params of this run (written to the workspace's params.yaml).
        note: appended to the commit message (e.g. the batch ids).

    Returns:
        The data revision (the workspace commit), the store's hash (``listings_md5``,
        :func:`ingestion.workspace.store_hash` of its partitions' directory hashes), the golden
        set's DVC directory hash (``golden_rev``), the remote, and the DVC targets this call added
        (or removed) and pushed (workspace-relative paths).

    The manifest entries that wait for a revision (``data_rev`` null, set by the validate
    step) get this call's ``data_rev`` once it is committed.

    A call killed at any point, or failed, is finished by the next one: see the module
    docstring (stale git / DVC locks cleared, half-written pointers restored, pending push).

    Raises:
        VersioningError: when git or DVC fails (a failed push is retried by the next call).
        common.store.DiskFullError: when the state folder's disk is full (DVC's objects and
            our files are written to temporary names first; no pointer is left half written).
    """
    with workspace_lock(state), disk_full_errors(state.root, "version the listings store"):
        clear_stale_locks(state.workspace)  # before init_workspace: its git may be the one killed
        ws = init_workspace(state)
        restore_pointers(ws)
        remote = configure_remote(state)
        sync_snapshot(state, params)
        golden, _ = update_golden(state, params)
        if golden is None:
            raise VersioningError("the listings store is empty: nothing to version")
        converted = _convert_legacy_store(ws)
        # the tables' hashes as they are before `dvc add`: a partition rewritten while this runs
        # then differs from what is recorded, and the next version adds it again
        tables = partition_md5s(ws / LISTINGS)
        changes = store_changes(ws, tables)
        removed = [c for c in changes if not (ws / c).exists()]
        targets = [c for c in changes if c not in removed]
        # a growing golden set is re-added every time (cheap: two small files), so that a run
        # killed between writing it and `dvc add` leaves nothing unversioned
        if params.prepare.golden_policy == "growing" or not (ws / f"{GOLDEN}.dvc").exists():
            targets.append(GOLDEN)
        # the label-issue flags (the prepare stage's dependency, so it exists even when empty)
        (ws / LABEL_ISSUES).mkdir(parents=True, exist_ok=True)
        if label_issues_changed(ws):
            targets.append(LABEL_ISSUES)
        # recorded before `dvc add`: once added, a partition no longer shows as changed, so a
        # run killed between add and push must still find it here
        pending = sorted({*_read_pending(state), *targets})
        _write_pending(state, pending)
        if removed:  # the data stays in the cache and on the remote, for the revisions that pin it
            run_dvc(ws, "remove", *(f"{r}.dvc" for r in removed))
        if targets:
            try:  # no -q: it hides the ERROR lines of failed cache transfers (see run_command)
                run_dvc(ws, "add", *targets)
            except BaseException:
                restore_pointers(ws, uncommitted=True)
                raise
        # the pipeline's stages depend on it, not on the store's files; the next version reads it
        listings_md5 = write_store_version(ws, tables)
        message = f"data: listings store {note}".strip()
        rev = commit(ws, f"{message} (one DVC output per partition)" if converted else message)
        waiting = {b: {"data_rev": rev} for b, e in read_manifest(state.manifest).items()
                   if "data_rev" in e and e["data_rev"] is None}
        if waiting:
            update_entries(state.manifest, waiting)
        push = _push_targets(ws, pending)
        if push:
            run_dvc(ws, "push", *push)  # no -q: it would hide DVC's ERROR line (e.g. S3 refusing credentials)
        _write_pending(state, [])
    return DataVersionResult(
        data_rev=rev,
        listings_md5=listings_md5,
        golden_rev=out_md5(ws / f"{GOLDEN}.dvc"),
        remote=remote,
        workspace=str(ws),
        added=[*targets, *removed],
        pushed=push,
    )


def data_version_at(state: State, data_rev: str) -> DataVersionResult:
    """The data version a workspace commit pins, read back from the workspace's git history.

    For a step run outside the DAG (``python -m promotion.register --data-rev SHA``): the same
    revisions :func:`version_data` returned when it made that commit; ``added`` and ``pushed``
    are empty (nothing is added or pushed here).

    Args:
        state: the state folder.
        data_rev: a commit of the workspace (a sha, or any git revision such as ``HEAD``).

    Returns:
        ``data_rev`` as a full sha, the store's hash (from ``data/store_version.json``; in a
        commit from before 2026-12 that has none, ``data/listings.dvc``'s directory hash) and the
        golden set's DVC hash at that commit.

    Raises:
        VersioningError: when ``data_rev`` is not a commit of the workspace, or one that pins
            no listings store or golden set (e.g. the workspace's first commit).
    """
    ws = state.workspace

    def show(name: str) -> str:
        return run_git(ws, "show", f"{rev}:{name}")

    try:
        rev = run_git(ws, "rev-parse", "--verify", "--quiet", f"{data_rev}^{{commit}}").strip()
        golden = parse_dvc_file(show(f"{GOLDEN}.dvc"), f"{rev}:{GOLDEN}.dvc").md5
        try:
            listings = json.loads(show(STORE_VERSION))["listings_md5"]
        except (VersioningError, ValueError, KeyError, TypeError):
            listings = parse_dvc_file(show(LEGACY_LISTINGS_POINTER), f"{rev}:{LEGACY_LISTINGS_POINTER}").md5
        if not isinstance(listings, str) or not listings:
            raise DvcFileError(f"{rev}:{STORE_VERSION} names no store hash")
    except (VersioningError, DvcFileError) as exc:
        raise VersioningError(f"{data_rev!r} is no data revision of the DVC workspace {ws}: not a "
                              f"commit, or it pins no listings store ({STORE_VERSION}) and "
                              f"{GOLDEN}.dvc") from exc
    return DataVersionResult(data_rev=rev, listings_md5=listings, golden_rev=golden,
                             remote=remote_url(state), workspace=str(ws))


def main(argv: list[str] | None = None) -> int:
    """``python -m ingestion.versioning version [--params FILE]``: prints the result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m ingestion.versioning", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["version", "repro"])
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    if args.command == "repro":  # where it was until 2026-12: the pipeline's run is training's
        parser.error("`repro` moved: run `python -m training.pipeline` (dvc repro: prepare -> train -> evaluate)")
    state = State.from_env()
    result = version_data(state, load_params(args.params))
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
