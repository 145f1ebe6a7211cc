"""Versioning with DVC: the listings store, the golden test set and the pipeline runs.

The pipeline runs in a DVC workspace, ``<state>/workspace``: its own git repository holding
``dvc.yaml``, the effective ``params.yaml``, a snapshot of the packages the stages run
(``common/``, ``training/``), the ``.dvc`` pointers of ``data/listings`` and ``data/golden``
and ``dvc.lock``. One commit of the workspace therefore pins data, code and params: its sha is
the *data revision* passed on through XCom and tagged on every model version. Nothing is ever
committed into the developer's checkout.

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

The DVC remote is ``<state>/dvc-remote`` unless ``LCP_DVC_REMOTE_URL`` names another one: a
folder, or ``s3://bucket/prefix`` (dvc-s3) with the same configuration shape. S3 credentials
come only from the environment, as boto3 reads them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``...); an endpoint (MinIO, a moto server) from
``LCP_DVC_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``. Nothing secret is written to the
workspace's ``.dvc/config``.

Two runs never use the workspace at once: :func:`workspace_lock` (an OS file lock on
``<state>/workspace.lock``, released by the kernel when its holder dies, so it never goes stale)
guards versioning and ``dvc repro``. A git or DVC command killed midway can leave lock state that
does outlive it: git's ``.git/index.lock`` (git refuses to run while it exists) and DVC's
``.dvc/tmp/rwlock``, a JSON file naming the paths each command holds and its pid (empty or half
written when the kill came while DVC rewrote it; naming a pid that a later process, e.g. one in
the next container, may be using). While the workspace lock is held no other run of ours is in
the workspace, so :func:`clear_stale_locks` removes them, logging what they held. DVC's other lock
files (``.dvc/tmp/lock``, ``rwlock.lock``) are OS locks (``zc.lockfile``) released by the kernel.

A killed or failed version leaves the workspace consistent for the retry: the pending-push
record is written before ``dvc add``, a ``.dvc`` pointer left half written is put back from the
last commit (:func:`restore_pointers`), ``dvc add`` and ``git commit`` are redone on the next
call for whatever they had not finished, and DVC writes its cache and remote objects to a
temporary name renamed into place. A full disk is reported as
:class:`common.store.DiskFullError` naming the state folder.

CLI::

    python -m ingestion.versioning version      # dvc add + git commit + dvc push
    python -m ingestion.versioning repro        # dvc repro (prepare -> train -> evaluate)
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import yaml

from common.files import atomic_write
from common.params import PROJECT_ROOT, Params, load_params, write_params
from common.state import State
from common.store import (
    BATCHES,
    LISTINGS_FILE,
    disk_full_errors,
    is_disk_full,
    read_store,
)
from ingestion.manifest import read_manifest, update_entries

SNAPSHOT_PACKAGES = ("common", "training")
"""Packages the DVC stages run; copied into the workspace so its commit pins them."""

REMOTE_ENV = "LCP_DVC_REMOTE_URL"
ENDPOINT_ENV = "LCP_DVC_S3_ENDPOINT_URL"
LOCK_TIMEOUT_ENV = "LCP_WORKSPACE_LOCK_TIMEOUT"

LISTINGS = "data/listings"
"""The listings store, relative to the workspace: one DVC output (``data/listings.dvc``)."""
GOLDEN = "data/golden"
"""The frozen golden test set, relative to the workspace: one DVC output (``data/golden.dvc``)."""
DVCIGNORE = f"/{LISTINGS}/{BATCHES}/.*"
"""``.dvcignore`` pattern: partitions being written (hidden temporary folders) are never data."""
PENDING_PUSH = "dvc-push-pending.json"
"""In the state root: DVC targets added and committed but not yet pushed (a push that failed)."""
DVC_RWLOCK = ".dvc/tmp/rwlock"
"""DVC's read/write lock of workspace paths (JSON, relative to the workspace)."""

log = logging.getLogger(__name__)


class VersioningError(RuntimeError):
    """A git or DVC command failed in the workspace."""


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    """Runs a git or DVC command; its output when it succeeded.

    A DVC command that logged a failed object transfer failed even when it exits 0: DVC 3.67's
    granular ``dvc add`` logs each cache transfer that fails (e.g. the disk is full), exits 0,
    and has rewritten the pointer to data that is not in the cache.

    Raises:
        OSError: ``ENOSPC`` when the output says the disk is full (turned into
            :class:`common.store.DiskFullError` by the steps).
        VersioningError: when the command failed otherwise.
    """
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    transfer_failed = re.search(r"^ERROR: failed to transfer", output, re.MULTILINE) is not None
    if proc.returncode == 0 and not transfer_failed:
        return proc.stdout
    failed = f"`{' '.join(cmd)}` failed in {cwd} (exit {proc.returncode}"
    failed += ", but it logged a failed transfer)" if proc.returncode == 0 else ")"
    full = [line.strip() for line in output.splitlines() if is_disk_full(VersioningError(line))]
    if full:
        raise OSError(errno.ENOSPC, f"{failed}: {full[-1][:500]}")
    hint = ""
    if "unable to acquire lock" in output.lower() or "is being blocked by" in output:
        hint = (" -- a DVC lock is held by a live process that is not one of our runs (ours hold "
                "the workspace lock, and stale locks are cleared under it): a dvc command started "
                "by hand in the workspace?")
    raise VersioningError(f"{failed}{hint}:\n{output}")


def _stage_env(workspace: Path) -> dict:
    """Environment for DVC and its stages: our interpreter first on PATH, the snapshot importable."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(workspace)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _dvc(workspace: Path, *args: str, env: dict | None = None) -> str:
    return _run([sys.executable, "-m", "dvc", *args], workspace, {**_stage_env(workspace), **(env or {})})


def _git(workspace: Path, *args: str) -> str:
    return _run(["git", *args], workspace)


@contextmanager
def workspace_lock(state: State, timeout_s: float | None = None) -> Iterator[Path]:
    """Holds the workspace's file lock (``<state>/workspace.lock``) for one git / DVC step.

    Args:
        state: the state folder.
        timeout_s: seconds to wait for another run to finish; default ``$LCP_WORKSPACE_LOCK_TIMEOUT``
            or 3 hours (a training run).

    Yields:
        The lock file.

    Raises:
        VersioningError: when the lock is not free within the timeout.
    """
    from filelock import FileLock, Timeout

    state.root.mkdir(parents=True, exist_ok=True)
    path = state.root / "workspace.lock"
    timeout_s = float(os.environ.get(LOCK_TIMEOUT_ENV, 3 * 3600) if timeout_s is None else timeout_s)
    try:
        with FileLock(str(path), timeout=timeout_s):
            yield path
    except Timeout as exc:
        raise VersioningError(
            f"another run holds the DVC workspace lock {path} (waited {timeout_s:.0f} s). It is an OS "
            "lock: it is released when its holder exits or dies, so wait for that run to finish.") from exc


def clear_stale_locks(ws: Path) -> list[str]:
    """Removes the lock state that killed git and DVC commands left in the workspace.

    Call it only while holding :func:`workspace_lock`: then no git or DVC command of ours runs
    in the workspace, so every lock found is stale. Removed: ``.git/*.lock`` and
    ``.git/refs/**/*.lock`` (git deletes its lock files when it exits, even on error, so one
    that exists belongs to a killed git), and DVC's ``rwlock`` when it names any holder or is
    not valid JSON (a kill while DVC rewrote it). DVC recreates the rwlock on its next command.

    Args:
        ws: the workspace.

    Returns:
        One line per file removed, with what it held (also logged as a warning).
    """
    cleared = []
    rwlock = ws / DVC_RWLOCK
    if rwlock.is_file():
        text = rwlock.read_text(encoding="utf-8", errors="replace")
        try:
            held = json.loads(text)
            stale = not isinstance(held, dict) or any(held.values())
        except ValueError:
            stale = True
        if stale:
            rwlock.unlink()
            cleared.append(f"{rwlock} (held: {text.strip()[:500] or 'empty file'})")
    git = ws / ".git"
    for lock in sorted([*git.glob("*.lock"), *(git / "refs").rglob("*.lock")]):
        lock.unlink(missing_ok=True)
        cleared.append(f"{lock} (left by a killed git command)")
    for line in cleared:
        log.warning("cleared a stale lock: %s", line)
    return cleared


def _pointer_ok(path: Path) -> bool:
    try:
        md5 = yaml.safe_load(path.read_text(encoding="utf-8"))["outs"][0]["md5"]
    except (yaml.YAMLError, UnicodeDecodeError, LookupError, TypeError):
        return False
    return isinstance(md5, str) and bool(md5)


def restore_pointers(ws: Path, uncommitted: bool = False) -> list[str]:
    """Puts the ``.dvc`` pointers of the store and the golden set back as the last commit has them.

    DVC rewrites a pointer in place (no temporary file), so a kill or a full disk during the
    write can leave it truncated; and a ``dvc add`` that failed may have rewritten it anyway
    (see :func:`_run`), to objects that are not in the cache. Such a pointer is restored as the
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
    for name in (LISTINGS, GOLDEN):
        path = ws / f"{name}.dvc"
        if not path.exists() or (_pointer_ok(path) and not uncommitted):
            continue
        why = "written by a dvc add that failed" if _pointer_ok(path) else "half written"
        try:
            committed = _git(ws, "show", f"HEAD:{name}.dvc")
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


def remote_url(state: State) -> str:
    """The DVC remote: ``$LCP_DVC_REMOTE_URL`` (a folder or ``s3://...``), else ``<state>/dvc-remote``."""
    return os.environ.get(REMOTE_ENV) or str(state.dvc_remote)


def configure_remote(state: State) -> str:
    """Points the workspace's default remote ``storage`` at :func:`remote_url` (idempotent).

    Only the URL and, for S3, the endpoint go to ``.dvc/config``; credentials stay in the
    environment, where dvc-s3 (boto3) reads them.

    Returns:
        The remote URL.
    """
    ws = state.workspace
    url = remote_url(state)
    _dvc(ws, "remote", "add", "-d", "-f", "storage", url)
    endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        _dvc(ws, "remote", "modify", "storage", "endpointurl", endpoint)
    return url


def init_workspace(state: State) -> Path:
    """Creates the workspace's git + DVC repository and its default remote, once.

    Returns:
        The workspace folder.
    """
    ws = state.workspace
    ws.mkdir(parents=True, exist_ok=True)
    if not (ws / ".git").exists():
        _git(ws, "init", "-q", "-b", "main")
        _git(ws, "config", "user.name", "listing-classifier-platform")
        _git(ws, "config", "user.email", "platform@localhost")
    if not (ws / ".dvc").exists():
        _dvc(ws, "init", "-q")
        _dvc(ws, "config", "core.analytics", "false")
        _dvc(ws, "remote", "add", "-d", "-f", "storage", str(state.dvc_remote))
        _ensure_dvcignore(ws)
        # only DVC's own files: the listings store may already be there and belongs to DVC
        _git(ws, "add", ".dvc", ".dvcignore")
        _git(ws, "commit", "-q", "-m", "init DVC workspace")
    _ensure_dvcignore(ws)  # workspaces created before the pattern existed
    return ws


def _ensure_dvcignore(ws: Path) -> None:
    path = ws / ".dvcignore"
    text = path.read_text() if path.exists() else ""
    if DVCIGNORE not in text.splitlines():
        path.write_text(f"{text.rstrip()}\n# partitions being written, never data\n{DVCIGNORE}\n".lstrip())


def sync_snapshot(state: State, params: Params) -> None:
    """Copies dvc.yaml, the effective params and the stage packages into the workspace."""
    ws = state.workspace
    shutil.copyfile(PROJECT_ROOT / "dvc.yaml", ws / "dvc.yaml")
    write_params(params, ws / "params.yaml")
    for package in SNAPSHOT_PACKAGES:
        target = ws / package
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(PROJECT_ROOT / package, target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _golden_rank(listing_id: str, seed: int) -> int:
    """A stable pseudo-random rank of a listing: the first 8 bytes of sha1(seed:id) as an int."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{listing_id}".encode()).digest()[:8], "big")


def freeze_golden(state: State, params: Params) -> Path | None:
    """Carves the golden test set out of the store the first time there is data; never again.

    Per leaf category with at least ``prepare.golden_min_listings`` listings, the
    ``round(golden_fraction * n)`` (at least 1) listings of smallest seeded hash of their id
    are frozen, whole rows included, in ``data/golden/golden.parquet``. Later weeks never
    change it, and ``prepare`` keeps its ids out of training.

    Returns:
        The golden file, or None when the store is still empty.
    """
    path = state.golden_dir / "golden.parquet"
    if path.exists():
        return path
    store = read_store(state.listings_store)
    if store.empty:
        return None
    p = params.prepare
    picks = []
    for _, group in store.groupby("category_path", sort=True):
        if len(group) < p.golden_min_listings:
            continue
        k = max(1, round(p.golden_fraction * len(group)))
        ranked = group.assign(_rank=group["listing_id"].map(lambda i: _golden_rank(i, p.seed)))
        ranked = ranked.sort_values(["_rank", "listing_id"], kind="stable")
        picks.append(ranked.head(k).drop(columns="_rank"))
    golden = pd.concat(picks).sort_values("listing_id").reset_index(drop=True)
    atomic_write(path, lambda tmp: golden.to_parquet(tmp, index=False))
    return path


def _out_md5(dvc_file: Path) -> str | None:
    if not dvc_file.exists():
        return None
    return yaml.safe_load(dvc_file.read_text())["outs"][0].get("md5")


def _commit(ws: Path, message: str) -> str:
    _git(ws, "add", "-A")
    if _git(ws, "status", "--porcelain").strip():
        _git(ws, "commit", "-q", "-m", message)
    return _git(ws, "rev-parse", "HEAD").strip()


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
    manifest, from the local cache; no file of the store is hashed except each partition's
    ``listings.parquet``), so the cost grows with the number of batches, not of listings.

    Args:
        ws: the workspace.

    Returns:
        Workspace-relative paths (``data/listings/batches/<batch_id>``) of the partitions that
        are new, rewritten or removed, sorted; ``[]`` when nothing changed; ``None`` when only a
        whole ``dvc add data/listings`` can tell: no pointer yet, its manifest is not in the
        local cache, or the store holds tracked or untracked files outside partition folders
        (e.g. a store of the earlier flat layout).
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
        for name in on_disk & set(tracked):
            table = f"{LISTINGS}/{BATCHES}/{name}/{LISTINGS_FILE}"
            try:
                recorded = (fs.info(table).get("dvc_info") or {}).get("md5")
            except FileNotFoundError:
                recorded = None
            present = store / BATCHES / name / LISTINGS_FILE
            if recorded is None or not present.is_file() or _md5(present) != recorded:
                changed.add(name)
    finally:
        fs.close()
    return sorted(f"{LISTINGS}/{BATCHES}/{name}" for name in changed)


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


def version_data(state: State, params: Params, note: str = "") -> dict:
    """Tracks the listings store and the golden set with DVC, commits, and pushes to the remote.

    The first version adds ``data/listings`` whole; later versions add and push only the
    partition folders that changed (:func:`store_changes`), so the cost grows with the new
    batch, not with the store. The golden set is added once, when it is frozen.

    Args:
        state: the state folder.
        params: the effective params of this run (written to the workspace's params.yaml).
        note: appended to the commit message (e.g. the batch ids).

    Returns:
        ``{"data_rev": workspace commit sha, "listings_md5": DVC hash of data/listings (a
        ``.dir`` hash), "golden_md5": DVC hash of data/golden, "remote": DVC remote URL,
        "workspace": path, "added": DVC targets added by this call, "pushed": DVC targets
        pushed by this call}``.

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
        if freeze_golden(state, params) is None:
            raise VersioningError("the listings store is empty: nothing to version")
        changes = store_changes(ws)
        targets = [LISTINGS] if changes is None else changes
        if not (ws / f"{GOLDEN}.dvc").exists():
            targets.append(GOLDEN)
        # recorded before `dvc add`: once added, a partition no longer shows as changed, so a
        # run killed between add and push must still find it here
        pending = sorted({*_read_pending(state), *_push_targets(ws, targets)})
        _write_pending(state, pending)
        if targets:
            try:  # no -q: it hides the ERROR lines of failed cache transfers (see _run)
                _dvc(ws, "add", *targets)
            except BaseException:
                restore_pointers(ws, uncommitted=True)
                raise
        rev = _commit(ws, f"data: listings store {note}".strip())
        waiting = {b: {"data_rev": rev} for b, e in read_manifest(state.manifest).items()
                   if "data_rev" in e and e["data_rev"] is None}
        if waiting:
            update_entries(state.manifest, waiting)
        push = _push_targets(ws, pending)
        if push:
            _dvc(ws, "push", *push)  # no -q: it would hide DVC's ERROR line (e.g. S3 refusing credentials)
        _write_pending(state, [])
    return {
        "remote": remote,
        "data_rev": rev,
        "listings_md5": _out_md5(ws / f"{LISTINGS}.dvc"),
        "golden_md5": _out_md5(ws / f"{GOLDEN}.dvc"),
        "workspace": str(ws),
        "added": targets,
        "pushed": push,
    }


def reproduce(state: State, note: str = "") -> dict:
    """Runs ``dvc repro`` (prepare -> train -> evaluate), commits ``dvc.lock``, pushes outputs.

    Returns:
        ``{"workspace_commit": sha, "metrics": metrics.json as dict, "workspace": path}``.

    Raises:
        VersioningError: when a stage or DVC fails (the stage's output is in the message).
    """
    ws = state.workspace
    if not (ws / "dvc.yaml").exists():
        raise VersioningError(f"no DVC workspace at {ws}: run the version step first")
    with workspace_lock(state), disk_full_errors(state.root, "dvc repro"):
        clear_stale_locks(ws)
        out = _dvc(ws, "repro")
        print(out[-6000:])
        rev = _commit(ws, f"repro: prepare -> train -> evaluate {note}".strip())
        _dvc(ws, "push")
    metrics = json.loads((ws / "metrics.json").read_text())
    return {"workspace_commit": rev, "metrics": metrics, "workspace": str(ws)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestion.versioning", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["version", "repro"])
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    state = State.from_env()
    if args.command == "version":
        result = version_data(state, load_params(args.params))
    else:
        result = reproduce(state)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
