"""The DVC workspace: where the pipeline runs, and the one way our code runs git and DVC in it.

The pipeline runs in a DVC workspace, ``<state>/workspace``: its own git repository holding
``dvc.yaml``, the effective ``params.yaml``, a snapshot of the packages the stages run
(``common/``, ``training/``, :data:`SNAPSHOT_PACKAGES`), the ``.dvc`` pointers of the
store's partitions and of ``data/golden``, and ``dvc.lock``. One commit of the workspace therefore
pins data, code and params: :mod:`ingestion.versioning` commits the data (its sha is the *data
revision* passed on through XCom and tagged on every model version) and
:func:`training.pipeline.run_pipeline` runs ``dvc repro`` and commits ``dvc.lock``. Nothing is ever committed into the developer's checkout.

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

Every git and DVC command goes through :func:`run_command` (:func:`run_git`, :func:`run_dvc`),
which turns a failure into :class:`VersioningError` and a full disk into ``ENOSPC``.

The pipeline's run in the workspace (``dvc repro``, after fetching the model training starts
from) is :mod:`training.pipeline`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.params import PROJECT_ROOT, Params, write_params
from common.state import State
from common.store import BATCHES, is_disk_full

SNAPSHOT_PACKAGES = ("common", "training")
"""Packages the DVC stages run; copied into the workspace so its commit pins them."""

REMOTE_ENV = "LCP_DVC_REMOTE_URL"
"""Environment variable naming the DVC remote (a folder or ``s3://bucket/prefix``)."""
ENDPOINT_ENV = "LCP_DVC_S3_ENDPOINT_URL"
"""Environment variable naming the S3 endpoint of an ``s3://`` remote (else ``AWS_ENDPOINT_URL``)."""
LOCK_TIMEOUT_ENV = "LCP_WORKSPACE_LOCK_TIMEOUT"
"""Environment variable: seconds :func:`workspace_lock` waits (default 3 hours, a training run)."""

LISTINGS = "data/listings"
"""The listings store, relative to the workspace: one DVC output per partition (:data:`PARTITIONS`)."""
PARTITIONS = f"{LISTINGS}/{BATCHES}"
"""The store's partition folders, relative to the workspace. Each partition is a DVC output of
its own, with its pointer beside it (``data/listings/batches/<batch_id>.dvc``), so versioning a
week hashes, caches, commits and pushes only that week's folder and no manifest of the whole store
(docs/measurements.md, session 22). Workspaces versioned before 2026-12 tracked ``data/listings``
as one output (:data:`LEGACY_LISTINGS_POINTER`); :func:`ingestion.versioning.version_data`
converts them once."""
LEGACY_LISTINGS_POINTER = f"{LISTINGS}.dvc"
"""The pointer of the store tracked whole (one directory output), before 2026-12."""
GOLDEN = "data/golden"
"""The frozen golden test set, relative to the workspace: one DVC output (``data/golden.dvc``)."""
STORE_VERSION = "data/store_version.json"
"""The store's version as one small file, relative to the workspace (:func:`write_store_version`)::

    {"listings_md5": <the store's hash>,
     "partitions": {<batch_id>: {"md5": <the partition's DVC directory hash>,
                                 "table_md5": <MD5 of its listings.parquet>}},
     "other_outputs": {<name>: <DVC hash>}}     # only when there are (other_store_pointers)

committed with the pointers. The pipeline's stages that read the store depend on it instead of on
``data/listings``, whose every file DVC would otherwise stat and look up in its state database
each time it checks a stage (docs/measurements.md, session 21); versioning reads it to tell which
partitions changed without reading any DVC manifest."""
PIXELS = "data/pixels"
"""The prepare stage's decoded-pixel cache (:data:`training.pixels.PIXELS`), relative to the
workspace: a ``cache: false`` DVC output (derived, decoded again when missing) and so not
git-ignored by DVC; never committed (:data:`NEVER_IN_GIT`)."""
NEVER_IN_GIT = (f"{PARTITIONS}/*/**", f"{PIXELS}/**")
"""Glob pathspecs :func:`commit` never stages: the store's partition folders (DVC's, each
git-ignored once added; one written while a version runs is not yet) and the pixel cache. Both
grow with the store: in git they would be hashed by every commit and kept by its history forever."""
DVCIGNORE = f"/{LISTINGS}/{BATCHES}/.*"
"""``.dvcignore`` pattern: partitions being written (hidden temporary folders) are never data."""
DVC_RWLOCK = ".dvc/tmp/rwlock"
"""DVC's read/write lock of workspace paths (JSON, relative to the workspace)."""

log = logging.getLogger(__name__)


def pointer_names(folder: Path) -> list[str]:
    """Output names (without ``.dvc``) of the ``.dvc`` pointers directly in ``folder`` (regular
    files, not hidden), sorted; none read, so a cut pointer is listed too."""
    if not folder.is_dir():
        return []
    return sorted(e.name[:-4] for e in os.scandir(folder)
                  if e.name.endswith(".dvc") and not e.name.startswith(".") and e.is_file(follow_symlinks=False))


def _pointers_in(folder: Path) -> dict[str, str]:
    """``{output name: DVC hash}`` of :func:`pointer_names` in ``folder``."""
    from ingestion.dvcfiles import out_md5

    return {name: out_md5(folder / f"{name}.dvc") for name in pointer_names(folder)}


def partition_pointers(ws: Path) -> dict[str, str]:
    """``{batch_id: DVC directory hash}`` of every partition pointer in the workspace.

    Raises:
        ingestion.dvcfiles.DvcFileError: when a pointer is not complete (cut short).
    """
    return _pointers_in(ws / PARTITIONS)


def other_store_pointers(ws: Path) -> dict[str, str]:
    """``{name: DVC hash}`` of the store's other outputs: entries of ``data/listings`` beside
    ``batches`` (a store from before the partition layout kept its images in
    ``data/listings/images``), each tracked as an output of its own
    (``data/listings/<name>.dvc``) so that nothing of the store is left unversioned or lands in git.

    Raises:
        ingestion.dvcfiles.DvcFileError: when a pointer is not complete (cut short).
    """
    return _pointers_in(ws / LISTINGS)


def store_hash(partitions: dict[str, str]) -> str:
    """The store's hash: MD5 of the JSON object ``{batch_id: directory hash}``, keys sorted,
    compact separators (our definition; equal stores give equal hashes)."""
    text = json.dumps(dict(sorted(partitions.items())), separators=(",", ":"))
    return hashlib.md5(text.encode()).hexdigest()


def read_store_version(ws: Path) -> dict:
    """:data:`STORE_VERSION` as written, or ``{}`` when missing or not a JSON object."""
    try:
        data = json.loads((ws / STORE_VERSION).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_store_version(ws: Path, table_md5s: dict[str, str] | None = None) -> str:
    """Writes :data:`STORE_VERSION` from the partition pointers, rewriting it only when it changed
    (an unchanged file keeps DVC's stages unchanged).

    Args:
        ws: the workspace.
        table_md5s: ``{batch_id: MD5 of listings.parquet}`` as the pointers were written
            (:func:`common.store.partition_md5s`); by default each partition keeps the table hash
            the file recorded for the same directory hash (none for a partition it did not know).

    Returns:
        The store's hash (:func:`store_hash`); for a workspace still in the layout before 2026-12
        (:data:`LEGACY_LISTINGS_POINTER`, no partition pointers), that pointer's directory hash.

    Raises:
        VersioningError: when the store was never versioned (no pointer).
        ingestion.dvcfiles.DvcFileError: when a pointer is not complete.
    """
    from common.files import atomic_write
    from ingestion.dvcfiles import out_md5

    pointers = partition_pointers(ws)
    if pointers:
        before = read_store_version(ws).get("partitions") or {}
        parts = {}
        for batch_id, md5 in pointers.items():
            if table_md5s is not None and batch_id in table_md5s:
                table = table_md5s[batch_id]
            else:
                known = before.get(batch_id) if isinstance(before.get(batch_id), dict) else {}
                table = known.get("table_md5") if known.get("md5") == md5 else None
            parts[batch_id] = {"md5": md5, "table_md5": table}
        others = other_store_pointers(ws)
        # "/" cannot start a batch id: the other outputs' keys never meet a partition's
        data = {"listings_md5": store_hash({**pointers, **{f"/{k}": v for k, v in others.items()}}),
                "partitions": parts}
        if others:
            data["other_outputs"] = others
    elif (legacy := out_md5(ws / LEGACY_LISTINGS_POINTER)) is not None:
        data = {"listings_md5": legacy}
    else:
        raise VersioningError(f"{ws / LISTINGS} is not versioned yet (no partition pointers in "
                              f"{ws / PARTITIONS}): run version_data first")
    path = ws / STORE_VERSION
    text = json.dumps(data, indent=1) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return data["listings_md5"]


class VersioningError(RuntimeError):
    """A git or DVC command failed in the workspace, or the workspace is not usable."""


def run_command(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    """Runs a git or DVC command; its output when it succeeded.

    A DVC command that logged a failed object transfer failed even when it exits 0: DVC 3.67's
    granular ``dvc add`` logs each cache transfer that fails (e.g. the disk is full), exits 0,
    and has rewritten the pointer to data that is not in the cache.

    Args:
        cmd: the command and its arguments.
        cwd: where it runs (a workspace, or a clone of one).
        env: its environment; default this process's.

    Returns:
        Its standard output.

    Raises:
        OSError: ``ENOSPC`` when the output says the disk is full (turned into
            :class:`common.store.DiskFullError` by the steps).
        VersioningError: when the command failed otherwise; the message holds the last 4000
            characters of its standard output and error.
    """
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    log.debug("%s (exit %s, %.2f s)", " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:6])),
              proc.returncode, time.perf_counter() - started)
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


def run_dvc(workspace: Path, *args: str, env: dict | None = None) -> str:
    """Runs ``python -m dvc <args>`` in ``workspace`` (or a clone of it) with our interpreter.

    The stages ``dvc repro`` starts find our interpreter first on ``PATH`` and import the
    workspace's snapshot of the packages (``PYTHONPATH`` is the workspace).

    Args:
        workspace: the DVC repository to run in.
        *args: DVC's arguments, e.g. ``"pull", "data/golden.dvc"``.
        env: variables added to that environment.

    Returns:
        DVC's standard output.

    Raises:
        OSError, VersioningError: as :func:`run_command`.
    """
    return run_command([sys.executable, "-m", "dvc", *args], workspace,
                       {**_stage_env(workspace), **(env or {})})


def run_git(workspace: Path, *args: str) -> str:
    """Runs ``git <args>`` in ``workspace``; its standard output.

    Raises:
        OSError, VersioningError: as :func:`run_command`.
    """
    return run_command(["git", *args], workspace)


def commit(ws: Path, message: str) -> str:
    """Commits everything that changed in the workspace (nothing when nothing did), except
    :data:`NEVER_IN_GIT`, and stops tracking what git should not hold.

    :data:`NEVER_IN_GIT` is excluded by pathspec, not by a ``.gitignore`` (DVC does not resolve
    a git-ignored path given as a target); where its top folder is git-ignored already (the whole
    store, before 2026-12) git refuses the pathspec and none is needed. Files a commit of an
    earlier version holds that are now git-ignored (an output DVC caches since) or fall under
    :data:`NEVER_IN_GIT` (the pixel cache, committed before 2026-12) leave the index (``git rm
    --cached``: the files stay on disk).

    Returns:
        The sha of ``HEAD`` afterwards (40 hex digits).

    Raises:
        OSError, VersioningError: as :func:`run_command`.
    """
    stale = {f for f in run_git(ws, "ls-files", "-z", "-ci", "--exclude-standard").split("\0") if f}
    stale |= {f for f in run_git(ws, "ls-files", "-z", "--", *(f":(glob){p}" for p in NEVER_IN_GIT)).split("\0")
              if f}
    if stale:
        log.info("no longer in the workspace's git (kept on disk): %d file(s), e.g. %s", len(stale),
                 ", ".join(sorted(stale)[:5]))
        run_git(ws, "rm", "-r", "-q", "--cached", "--", *sorted(stale))
    excludes = [f":(exclude,glob){p}" for p in NEVER_IN_GIT
                if subprocess.run(["git", "check-ignore", "-q", p.split("/*")[0]], cwd=ws).returncode != 0]
    run_git(ws, "add", "-A", "--", ".", *excludes)
    if run_git(ws, "diff", "--cached", "--name-only").strip():
        run_git(ws, "commit", "-q", "-m", message)
    return run_git(ws, "rev-parse", "HEAD").strip()


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


def remote_url(state: State) -> str:
    """The DVC remote: ``$LCP_DVC_REMOTE_URL`` (a folder or ``s3://...``), else ``<state>/dvc-remote``."""
    return os.environ.get(REMOTE_ENV) or str(state.dvc_remote)


def configure_remote(state: State) -> str:
    """Points the workspace's default remote ``storage`` at :func:`remote_url` (idempotent).

    Only the URL and, for S3, the endpoint go to ``.dvc/config``; credentials stay in the
    environment, where dvc-s3 (boto3) reads them.

    Returns:
        The remote URL.

    Raises:
        OSError, VersioningError: as :func:`run_command`.
    """
    ws = state.workspace
    url = remote_url(state)
    run_dvc(ws, "remote", "add", "-d", "-f", "storage", url)
    endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        run_dvc(ws, "remote", "modify", "storage", "endpointurl", endpoint)
    return url


def init_workspace(state: State) -> Path:
    """Creates the workspace's git + DVC repository and its default remote, once.

    An existing workspace, and the remote it has, are kept (``docker/airflow-init.sh`` may have
    created it with an S3 remote); only the ``.dvcignore`` pattern is added when missing.

    Returns:
        The workspace folder.

    Raises:
        OSError, VersioningError: as :func:`run_command`.
    """
    ws = state.workspace
    ws.mkdir(parents=True, exist_ok=True)
    if not (ws / ".git").exists():
        run_git(ws, "init", "-q", "-b", "main")
        run_git(ws, "config", "user.name", "listing-classifier-platform")
        run_git(ws, "config", "user.email", "platform@localhost")
    if not (ws / ".dvc").exists():
        run_dvc(ws, "init", "-q")
        run_dvc(ws, "config", "core.analytics", "false")
        run_dvc(ws, "remote", "add", "-d", "-f", "storage", str(state.dvc_remote))
        _ensure_dvcignore(ws)
        # only DVC's own files: the listings store may already be there and belongs to DVC
        run_git(ws, "add", ".dvc", ".dvcignore")
        run_git(ws, "commit", "-q", "-m", "init DVC workspace")
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


