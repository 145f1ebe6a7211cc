"""Versioning with DVC: the accepted listings store and the golden test set, one data revision a run.

The store and the golden set are DVC outputs of the workspace (:mod:`ingestion.workspace`: the
git + DVC repository the pipeline runs in, its remote, its lock and the git / DVC runner).
:func:`version_data` adds what changed, commits (the commit's sha is the *data revision* passed
on through XCom and tagged on every model version) and pushes to the DVC remote.

Versioning a batch costs what the batch costs, not what the store costs. The store is one DVC
output (``data/listings.dvc``, one directory hash pinning every partition), but after the first
version it is updated granularly, DVC's documented way to modify a large tracked dataset
(https://dvc.org/doc/user-guide/data-management/modifying-large-datasets): only the partition
folders (``data/listings/batches/<batch_id>``, see :mod:`common.store`) that are new, rewritten
or removed since the pointer was last written are passed to ``dvc add``, which hashes and caches
just those files and rewrites the directory manifest; ``dvc push`` gets the same targets (it
uploads their files and the new manifest, nothing else). Which partitions changed is read from
the pointer's tracked tree (:class:`dvc.api.DVCFileSystem`), comparing each partition's
``listings.parquet`` with the MD5 DVC recorded for it: a partition is written whole and its table
lists its images, so the table identifies the folder. A push that failed is remembered in
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
    LISTINGS,
    VersioningError,
    clear_stale_locks,
    commit,
    configure_remote,
    init_workspace,
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


def restore_pointers(ws: Path, uncommitted: bool = False) -> list[str]:
    """Puts the ``.dvc`` pointers of the store and the golden set back as the last commit has them.

    DVC rewrites a pointer in place (no temporary file), so a kill or a full disk during the
    write can leave it truncated; and a ``dvc add`` that failed may have rewritten it anyway
    (see :func:`ingestion.workspace.run_command`), to objects that are not in the cache. Such a pointer is restored as the
    workspace's last commit has it, or removed when it was never committed. The next version
    then sees the partitions it lacks as changed and adds them again.

    Args:
        ws: the workspace.
        uncommitted: also restore a well-formed pointer that differs from the last commit
            (after a failed ``dvc add``); by default only a half-written one.

    Returns:
        One line per pointer restored or removed (also logged as a warning).
    """
    done = []
    for name in (LISTINGS, GOLDEN, LABEL_ISSUES):
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


def store_changes(ws: Path) -> list[str] | None:
    """The partition folders of the listings store that differ from what ``data/listings.dvc``
    tracks.

    Reads the tracked tree through :class:`dvc.api.DVCFileSystem` (the pointer's directory
    manifest, from the local cache) and compares each partition's ``listings.parquet`` MD5 with
    the one the store's index recorded (:func:`common.store.partition_md5s`: only tables written
    since the index last saw them are read), so no file of the store is hashed again.

    Args:
        ws: the workspace.

    Returns:
        Workspace-relative paths (``data/listings/batches/<batch_id>``) of the partitions that
        are new, rewritten or removed, sorted; ``[]`` when nothing changed; ``None`` when only a
        whole ``dvc add data/listings`` can tell: no pointer yet, its manifest is not in the
        local cache, or the store holds tracked or untracked files outside partition folders.
    """
    from dvc.api import DVCFileSystem

    store = ws / LISTINGS
    if not (ws / f"{LISTINGS}.dvc").exists():
        return None
    local = {e.name for e in os.scandir(store) if not e.name.startswith(".")} if store.is_dir() else set()
    if local - {BATCHES}:
        return None
    fs = DVCFileSystem(str(ws))
    try:
        try:
            top = {Path(e["name"]).name for e in fs.ls(LISTINGS, detail=True) if e.get("dvc_info")}
            tracked = ({Path(e["name"]).name: e for e in fs.ls(f"{LISTINGS}/{BATCHES}", detail=True)
                        if e.get("dvc_info")} if BATCHES in top else {})
        except FileNotFoundError:
            return None  # the manifest is not in the local cache
        if top - {BATCHES} or any(e["type"] != "directory" for e in tracked.values()):
            return None
        folder = store / BATCHES
        on_disk = {e.name for e in os.scandir(folder)
                   if not e.name.startswith(".") and e.is_dir()} if folder.is_dir() else set()
        changed = set(tracked) ^ on_disk  # added or removed partitions
        # each table's MD5 as the store's index recorded it when it read the table: no
        # partition is hashed again, only those written since the index last saw them
        present = partition_md5s(store)
        for name in on_disk & set(tracked):
            table = f"{LISTINGS}/{BATCHES}/{name}/{LISTINGS_FILE}"
            try:
                recorded = (fs.info(table).get("dvc_info") or {}).get("md5")
            except FileNotFoundError:
                recorded = None
            if recorded is None or present.get(name) != recorded:
                changed.add(name)
    finally:
        fs.close()
    return sorted(f"{LISTINGS}/{BATCHES}/{name}" for name in changed)


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
    """What ``dvc push`` gets: partitions that still exist (a granular push uploads their files
    and the store's new manifest); the whole pointer when a partition was removed or the store
    was added whole (nothing else names the new manifest); the golden set's pointer."""
    out: set[str] = set()
    for target in targets:
        if target.startswith(f"{LISTINGS}/") and (ws / target).is_dir():
            out.add(target)
        elif target.startswith(f"{LISTINGS}/") or target == LISTINGS:
            out.add(f"{LISTINGS}.dvc")
        else:
            out.add(target)
    return sorted(out)


def version_data(state: State, params: Params, note: str = "") -> DataVersionResult:
    """Tracks the listings store and the golden set with DVC, commits, and pushes to the remote.

    The first version adds ``data/listings`` whole; later versions add and push only the
    partition folders that changed (:func:`store_changes`), so the cost grows with the new
    batch, not with the store. The golden set is added once, when it is frozen. The label-issue
    flags (:data:`LABEL_ISSUES`) are added when they changed (a retry adds nothing twice).

    Args:
        state: the state folder.
        params: the effective params of this run (written to the workspace's params.yaml).
        note: appended to the commit message (e.g. the batch ids).

    Returns:
        The data revision (the workspace commit), the DVC hashes of ``data/listings`` and
        ``data/golden`` (``golden_rev``), the remote, and the DVC targets this call added and
        pushed (workspace-relative paths).

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
        changes = store_changes(ws)
        targets = [LISTINGS] if changes is None else changes
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
        pending = sorted({*_read_pending(state), *_push_targets(ws, targets)})
        _write_pending(state, pending)
        if targets:
            try:  # no -q: it hides the ERROR lines of failed cache transfers (see run_command)
                run_dvc(ws, "add", *targets)
            except BaseException:
                restore_pointers(ws, uncommitted=True)
                raise
        write_store_version(ws)  # the pipeline's stages depend on it, not on the store's files
        rev = commit(ws, f"data: listings store {note}".strip())
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
        listings_md5=out_md5(ws / f"{LISTINGS}.dvc"),
        golden_rev=out_md5(ws / f"{GOLDEN}.dvc"),
        remote=remote,
        workspace=str(ws),
        added=targets,
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
        ``data_rev`` as a full sha, and the DVC hashes of the store and the golden set at that
        commit.

    Raises:
        VersioningError: when ``data_rev`` is not a commit of the workspace, or one that pins
            no listings store or golden set (e.g. the workspace's first commit).
    """
    ws = state.workspace
    try:
        rev = run_git(ws, "rev-parse", "--verify", "--quiet", f"{data_rev}^{{commit}}").strip()
        listings, golden = (parse_dvc_file(run_git(ws, "show", f"{rev}:{name}.dvc"), f"{rev}:{name}.dvc").md5
                            for name in (LISTINGS, GOLDEN))
    except (VersioningError, DvcFileError) as exc:
        raise VersioningError(f"{data_rev!r} is no data revision of the DVC workspace {ws}: not a "
                              f"commit, or it pins no {LISTINGS}.dvc and {GOLDEN}.dvc") from exc
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
