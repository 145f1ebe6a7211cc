"""Faults in the middle of the validate and version steps, then the step run again.

A worker is killed with SIGKILL at chosen points of ``validate`` (validation.staged) and of
``version`` (ingestion.versioning), or the state folder's disk fills up; the step is then run
again, normally, and the state must be whole: every batch has exactly one partition with its
rows, the manifest agrees with the store, no listing is in two partitions, the DVC pointer
matches the store, the cache and the remote, and the workspace's git tree is clean.

Real processes, real GX, DVC and git, on a state folder of 240 real fashion listings (three
weekly batches). A worker is a fork of the test process, with the steps' modules already
imported, the way Airflow's LocalExecutor and Celery's prefork pool start a task: a run costs
the step, not an 8 s GX import. Each worker leads its own process group, and a kill takes the
whole group, the step and the git / DVC command it waits on, as when a node or container is
lost. The kill points are deterministic: a wrapper around a real call (a file copy, a rename,
DVC's writes to its cache and its rwlock, a git filter and hook) sends SIGKILL at the chosen
moment; no code of ours is replaced.

The disk-full cases put the state folder on a tmpfs of its own, filled up to a chosen free
space: ``mount`` needs root (CAP_SYS_ADMIN), which the CI runners have; without it the tests
fail, naming what is missing, rather than skip.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from common.catalog import load_catalog
from common.params import load_params
from common.state import State
from common.store import BATCHES, batch_file, batch_ids, partition_dir, read_store
from ingestion.feed import publish
from ingestion.ingest import ingest_new_batches
from ingestion.manifest import entries_dir, entry_file, read_manifest

pytestmark = pytest.mark.integration

WEEK1 = datetime(2026, 11, 2, tzinfo=UTC)
KILLED = -signal.SIGKILL
"""``exitcode`` of a worker killed by SIGKILL."""
KILL_ENV = "LCP_TEST_KILL"
RWLOCK = ".dvc/tmp/rwlock"
"""DVC's read/write lock file, relative to the workspace."""

DVC_KILLER = r'''
import json, os, signal, sys

what, *args = os.environ["LCP_TEST_KILL"].split(":")


def die():
    os.killpg(0, signal.SIGKILL)  # DVC and the worker waiting on it


if what == "dvc-rwlock":
    real_dump = json.dump

    def dump(obj, fobj, *a, **k):
        if str(getattr(fobj, "name", "")).endswith("rwlock") and obj.get("write"):
            die()  # DVC opened its rwlock for writing (truncated it) and has not written it yet
        return real_dump(obj, fobj, *a, **k)

    json.dump = dump
else:  # dvc-cache:N -- after the N-th object renamed into the cache
    limit, count = int(args[0]), [0]
    cache = os.sep + os.path.join(".dvc", "cache") + os.sep

    def counted(real):
        def move(src, dst, *a, **k):
            real(src, dst, *a, **k)
            if cache in os.fspath(dst):
                count[0] += 1
                if count[0] >= limit:
                    die()
        return move

    os.rename, os.replace = counted(os.rename), counted(os.replace)

from dvc.cli import main

sys.exit(main(sys.argv[1:]))
'''
"""Runs the DVC CLI (``python -c DVC_KILLER <dvc args>``), killing it at ``$LCP_TEST_KILL``."""


# --- state folders -----------------------------------------------------------------------------


def _params():
    """The project's params with the golden set frozen: these tests are about the kill points of
    the store's partitions, so each step's DVC targets are the partitions alone (the growing
    golden set has its own test in test_ingestion.py)."""
    return load_params().with_overrides({"prepare": {"golden_policy": "frozen"}})


def _copy(src: Path, dst: Path) -> State:
    shutil.copytree(src, dst, symlinks=True)
    return State(dst)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, fashion_dir) -> dict[str, Path]:
    """State folders the tests copy, built the way the DAG builds them.

    ``staged``: week 1 validated and versioned, weeks 2 and 3 ingested (``staged``).
    ``validated``: the same with weeks 2 and 3 validated too, waiting for the version step.
    """
    from ingestion.versioning import version_data
    from validation.staged import validate_staged_batches

    root = tmp_path_factory.mktemp("faults")
    feed = root / "feed"
    publish(fashion_dir, feed, weeks=3, catalog=load_catalog("catalogs/fashion.yaml"), limit=240)
    params = _params()
    staged = State(root / "staged")
    ingest_new_batches(staged, params, WEEK1, str(feed))
    validate_staged_batches(staged, params)
    version_data(staged, params, "week 1")
    ingest_new_batches(staged, params, None, str(feed))
    validated = _copy(staged.root, root / "validated")
    validate_staged_batches(validated, params)
    return {"staged": staged.root, "validated": validated.root}


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of its own at ``tmp_path/disk``, unmounted afterwards.

    Raises:
        pytest.fail: when it cannot be mounted (not root / no CAP_SYS_ADMIN).
    """
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "lcp-test-disk", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mount} to fill a disk for real: "
                    f"{(proc.stderr or proc.stdout).strip()}. These tests need root with "
                    "CAP_SYS_ADMIN, as the CI runners have (a container: --cap-add SYS_ADMIN).")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fills ``disk`` with one file, leaving about ``leave`` bytes free; returns the file."""
    stat = os.statvfs(disk)
    size = stat.f_bavail * stat.f_frsize - leave
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        block = b"\0" * (1 << 20)
        while size > 0:
            size -= fh.write(block[: min(size, len(block))])
    return filler


# --- workers -----------------------------------------------------------------------------------


def _die() -> None:
    os.killpg(0, signal.SIGKILL)  # the worker and the git / DVC command it waits on


def _arm(kill: tuple, state: State) -> None:
    """Makes this worker kill itself at ``kill``, by wrapping the real call that reaches it."""
    from ingestion import workspace

    what, *args = kill
    if what == "copy":  # the n-th image copied into the batch's temporary partition folder
        batch, n = args
        real_copy, copies = shutil.copyfile, [0]

        def copyfile(src, dst, *a, **k):
            if Path(dst).parent.parent.name.startswith(f".{batch}."):
                copies[0] += 1
                if copies[0] == n:
                    _die()
            return real_copy(src, dst, *a, **k)

        shutil.copyfile = copyfile
    elif what in ("manifest", "swap"):
        batch, = args
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if (what == "manifest" and Path(dst) == entry_file(state.manifest, batch)
                    and json.loads(Path(src).read_text())["entry"]["status"] != "staged"):
                _die()  # the batch's new entry written to its temporary file, not renamed yet
            real_replace(src, dst, *a, **k)
            if what == "swap" and Path(src) == partition_dir(state.listings_store, batch):
                _die()  # the old partition moved aside, the new one not renamed in yet

        os.replace = replace
    elif what.startswith("dvc-"):
        real_run = workspace.run_command

        def run(cmd, cwd, env=None):
            if cmd[1:4] == ["-m", "dvc", "add"]:
                cmd = [cmd[0], "-c", DVC_KILLER, *cmd[3:]]
                env = {**(env or os.environ), KILL_ENV: ":".join(map(str, kill))}
            return real_run(cmd, cwd, env)

        workspace.run_command = run
    elif what == "git-add":  # a clean filter runs while `git add` holds .git/index.lock
        (state.workspace / ".git" / "info" / "attributes").write_text("* filter=lcp-kill\n")
        _git(state.workspace, "config", "filter.lcp-kill.clean", "kill -KILL 0")
    elif what == "git-ref":  # `git commit` holds HEAD.lock and the branch's lock in this hook
        hook = state.workspace / ".git" / "hooks" / "reference-transaction"
        hook.write_text('#!/bin/sh\n[ "$1" = prepared ] && kill -KILL 0\nexit 0\n')
        hook.chmod(0o755)
    else:
        raise ValueError(kill)


def _disarm(ws: Path) -> None:
    """Removes the git kill points of :func:`_arm` (nothing of them is in the tracked tree)."""
    (ws / ".git" / "info" / "attributes").unlink(missing_ok=True)
    (ws / ".git" / "hooks" / "reference-transaction").unlink(missing_ok=True)
    subprocess.run(["git", "config", "--remove-section", "filter.lcp-kill"], cwd=ws, capture_output=True)


def _work(step: str, root: Path, kill: tuple | None, out: Path) -> None:
    """A worker's body: runs ``step`` on the state at ``root``; its output goes to ``out.log``."""
    os.setsid()  # its own process group: a kill takes its children along, never pytest
    log = open(out.with_suffix(".log"), "w", buffering=1)  # noqa: SIM115 -- lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    logging.basicConfig(stream=log, level=logging.WARNING, force=True)
    state = State(root)
    if kill:
        _arm(kill, state)
    if step == "validate":
        from validation.staged import validate_staged_batches

        result = validate_staged_batches(state, _params())
    else:
        from ingestion.versioning import version_data

        result = version_data(state, _params(), "retry")
    out.write_text(json.dumps(result.to_dict()))


def _worker(step: str, state: State, kill: tuple | None, folder: Path) -> tuple[int, str, dict | None]:
    """Runs one worker to its end (or its kill).

    Returns:
        ``(exitcode, its log, its result or None)``; ``exitcode`` is ``KILLED`` after a kill.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{step}-{len(list(folder.glob('*.log')))}.json"
    proc = multiprocessing.get_context("fork").Process(target=_work, args=(step, state.root, kill, out))
    proc.start()
    proc.join(timeout=120)
    if proc.exitcode is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.join()
        pytest.fail(f"the {step} worker (kill point {kill}) ran past 120 s")
    log = out.with_suffix(".log").read_text()
    result = json.loads(out.read_text()) if out.exists() else None
    return proc.exitcode, log, result


# --- what a consistent state is ------------------------------------------------------------


def _hidden(store: Path) -> list[str]:
    folder = store / BATCHES
    # partitions being written or their debris; not git's .gitignore (DVC's, of the partitions)
    return (sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".gitignore")
            if folder.is_dir() else [])


def _statuses(state: State) -> dict[str, str]:
    return {b: e["status"] for b, e in read_manifest(state.manifest).items()}


def _assert_store_matches_manifest(state: State) -> None:
    """Every batch validated, with one whole partition iff it was accepted; no listing twice."""
    store, manifest = state.listings_store, read_manifest(state.manifest)
    assert {e["status"] for e in manifest.values()} <= {"accepted", "partial", "quarantined"}
    kept = sorted(b for b, e in manifest.items() if e["status"] != "quarantined")
    assert batch_ids(store) == kept and _hidden(store) == []
    tables = []
    for batch in kept:
        table = pq.read_table(batch_file(store, batch)).to_pandas()
        assert len(table) == manifest[batch]["report"]["accepted_rows"] > 0
        images = partition_dir(store, batch) / "images"
        assert {Path(k).name for k in table["image_key"]} == {p.name for p in images.iterdir()}
        tables.append(table)
    rows = pd.concat(tables, ignore_index=True)
    assert not rows["listing_id"].duplicated().any(), "a listing is in two partitions"
    assert len(read_store(store)) == len(rows)
    assert not list(entries_dir(state.manifest).glob(".*")), "a manifest write was left half done"


def _git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=True).stdout


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # killed, not reaped yet
    except psutil.NoSuchProcess:
        return False


def _cache_objects(ws: Path) -> set[str]:
    return {p.parent.name + p.name for p in (ws / ".dvc" / "cache" / "files" / "md5").glob("*/*")
            if not p.name.startswith(".")}


def _assert_versioned(state: State, result: dict) -> None:
    """The commit ``result`` names pins exactly the store, cached and pushed; nothing pending."""
    from dvc.repo import Repo

    from ingestion.versioning import PENDING_PUSH, store_changes

    ws = state.workspace
    assert store_changes(ws) == []
    assert _git(ws, "status", "--porcelain") == "" and _git(ws, "rev-parse", "HEAD").strip() == result["data_rev"]
    assert not (state.root / PENDING_PUSH).exists()
    assert not list((ws / ".git").glob("*.lock"))
    rwlock = ws / RWLOCK
    assert not rwlock.exists() or not any(json.loads(rwlock.read_text()).values())
    pointers = [*map(str, sorted((ws / "data" / "listings" / "batches").glob("*.dvc"))), str(ws / "data" / "golden.dvc")]
    assert len(pointers) > 1 and not (ws / "data" / "listings.dvc").exists()
    with Repo(str(ws)) as repo:
        assert repo.status(targets=pointers) == {}, "the workspace differs from the pointer"
        assert repo.status(targets=pointers, cloud=True) == {}, "the remote lacks data"
        changes = repo.checkout(targets=pointers)
        assert [changes[k] for k in ("added", "modified", "deleted")] == [[], [], []], \
            f"a fresh dvc checkout changed {changes}"
    manifest = read_manifest(state.manifest)
    assert all(e["data_rev"] for e in manifest.values() if "data_rev" in e)


# --- validate ----------------------------------------------------------------------------------


def test_validate_killed_at_four_points_then_retried(snapshots, tmp_path):
    """Killed in the middle of a partition, before the manifest's rename, between the two
    renames of a partition's replacement, and in the next batch; the retry finishes every batch
    once, reports the batch an attempt finished before its kill, and the version is clean."""
    from ingestion.versioning import version_data

    state = _copy(snapshots["staged"], tmp_path / "state")
    store, runs = state.listings_store, tmp_path / "runs"
    (week1,) = batch_ids(store)
    b2, b3 = sorted(b for b, s in _statuses(state).items() if s == "staged")

    code, log, _ = _worker("validate", state, ("copy", b2, 10), runs)
    assert code == KILLED, log
    assert batch_ids(store) == [week1]
    (debris,) = _hidden(store)
    assert debris.endswith(".tmp") and len(list((store / BATCHES / debris / "images").iterdir())) == 9
    assert _statuses(state) == {week1: "accepted", b2: "staged", b3: "staged"}

    code, log, _ = _worker("validate", state, ("manifest", b2), runs)
    assert code == KILLED, log
    assert batch_ids(store) == [week1, b2] and _hidden(store) == [], "the killed write's debris is gone"
    assert _statuses(state)[b2] == "staged" and list(entries_dir(state.manifest).glob(".*"))

    code, log, _ = _worker("validate", state, ("swap", b2), runs)
    assert code == KILLED, log
    assert batch_ids(store) == [week1], "b2 was moved aside for its replacement"
    assert sorted(name.rsplit(".", 1)[1] for name in _hidden(store)) == ["old", "tmp"]

    code, log, _ = _worker("validate", state, ("copy", b3, 10), runs)
    assert code == KILLED, log
    assert f"restored partition {partition_dir(store, b2)}" in log
    assert batch_ids(store) == [week1, b2]
    manifest = read_manifest(state.manifest)
    assert manifest[b2]["status"] == "accepted" and manifest[b2]["data_rev"] is None
    assert manifest[b3]["status"] == "staged"

    code, log, outcome = _worker("validate", state, None, runs)
    assert code == 0, log
    assert sorted(outcome["accepted"] + outcome["partial"]) == [b2, b3], \
        "the retry reports b2, validated by the attempt killed in b3"
    assert set(outcome["reports"]) == {b2, b3} and outcome["store_listings"] == len(read_store(store))
    _assert_store_matches_manifest(state)

    result = version_data(state, _params(), "b2 b3").to_dict()
    assert result["added"] == [f"data/listings/{BATCHES}/{b}" for b in (b2, b3)]
    _assert_versioned(state, result)
    assert {b: e["data_rev"] for b, e in read_manifest(state.manifest).items() if b != week1} == \
        {b2: result["data_rev"], b3: result["data_rev"]}


def test_validate_on_a_full_disk_fails_clearly_and_the_retry_succeeds(snapshots, small_disk):
    """The disk fills up while b2's partition is written: a DiskFullError naming the state
    folder and the file, nothing of b2 in the store, the manifest untouched; once space is
    back the retry validates both batches."""
    from common.store import DiskFullError
    from validation.staged import validate_staged_batches

    state = _copy(snapshots["staged"], small_disk / "state")
    store, params = state.listings_store, _params()
    b2, b3 = sorted(b for b, s in _statuses(state).items() if s == "staged")
    before, manifest = read_store(store), read_manifest(state.manifest)
    images = sum(p.stat().st_size for p in (state.staging / b2 / "images").iterdir())
    # GX writes its result and Data Docs (~120 KB) first, then the partition: half of it fits
    filler = _fill(small_disk, leave=200_000 + images // 2)

    with pytest.raises(DiskFullError) as failure:
        validate_staged_batches(state, params)
    message = str(failure.value)
    assert f"validate batch {b2}: the disk holding the state folder {state.root} is full" in message
    assert f"no space left writing {store / BATCHES}/.{b2}." in message, "the file being written"
    assert _hidden(store) == [] and b2 not in batch_ids(store)
    pd.testing.assert_frame_equal(read_store(store), before)
    assert read_manifest(state.manifest) == manifest and not list(entries_dir(state.manifest).glob(".*"))

    filler.unlink()
    outcome = validate_staged_batches(state, params).to_dict()
    assert sorted(outcome["accepted"] + outcome["partial"]) == [b2, b3]
    _assert_store_matches_manifest(state)


# --- version -----------------------------------------------------------------------------------


def test_version_killed_at_four_points_then_retried(snapshots, tmp_path):
    """Killed in the middle of ``dvc add`` (cache half written; its rwlock then names a pid that
    a new process has), as ``dvc add`` rewrote its rwlock (left empty), in ``git add`` (holding
    ``.git/index.lock``) and in ``git commit``'s ref update (holding ``HEAD.lock``; a new
    partition's pointer then cut short); the retry clears the stale locks, removes the cut
    pointer (never committed), re-adds its partition, commits and pushes once."""
    from ingestion.versioning import PENDING_PUSH, store_changes

    state = _copy(snapshots["validated"], tmp_path / "state")
    ws, runs = state.workspace, tmp_path / "runs"
    git = ws / ".git"
    head = _git(ws, "rev-parse", "HEAD").strip()
    new = store_changes(ws)
    assert len(new) == 2
    pointer, committed = ws / f"{new[0]}.dvc", {p.name: p.read_text() for p in (ws / new[0]).parent.glob("*.dvc")}

    def pointers() -> dict[str, str]:
        return {p.name: p.read_text() for p in (ws / new[0]).parent.glob("*.dvc")}

    cached = _cache_objects(ws)

    code, log, _ = _worker("version", state, ("dvc-cache", 10), runs)
    assert code == KILLED, log
    held = json.loads((ws / RWLOCK).read_text())
    assert held["write"] and not any(_running(e["pid"]) for e in held["write"].values())
    assert len(_cache_objects(ws) - cached) >= 9, "killed in the middle of the cache writes"
    assert _git(ws, "rev-parse", "HEAD").strip() == head and not pointer.exists()
    assert {k: v for k, v in pointers().items() if k in committed} == committed, "old pointers untouched"
    assert json.loads((state.root / PENDING_PUSH).read_text()) == new

    sleeper = subprocess.Popen(["sleep", "300"])  # the dead pid, reused in the next container
    try:
        for entry in held["write"].values():
            entry["pid"] = sleeper.pid
        (ws / RWLOCK).write_text(json.dumps(held))

        code, log, _ = _worker("version", state, ("dvc-rwlock",), runs)
        assert code == KILLED, log
        assert f"cleared a stale lock: {ws / RWLOCK} (held: " in log and f'"pid": {sleeper.pid}' in log
        assert (ws / RWLOCK).read_text() == "", "killed between truncating and writing it"
    finally:
        sleeper.kill()
        sleeper.wait()

    code, log, _ = _worker("version", state, ("git-add",), runs)
    _disarm(ws)
    assert code == KILLED, log
    assert f"cleared a stale lock: {ws / RWLOCK} (held: empty file)" in log
    assert (git / "index.lock").exists()
    assert all((ws / f"{t}.dvc").is_file() for t in new) and store_changes(ws) == [], "dvc add had finished"

    code, log, _ = _worker("version", state, ("git-ref",), runs)
    _disarm(ws)
    assert code == KILLED, log
    assert f"cleared a stale lock: {git / 'index.lock'}" in log
    assert (git / "HEAD.lock").exists() and _git(ws, "rev-parse", "HEAD").strip() == head
    text = pointer.read_bytes()
    pointer.write_bytes(text[: len(text) // 2])  # as a kill while DVC rewrites it leaves it

    code, log, result = _worker("version", state, None, runs)
    assert code == 0, log
    assert f"cleared a stale lock: {git / 'HEAD.lock'}" in log
    assert f"removed {pointer}: half written and never committed" in log
    assert result["added"] == new[:1] and result["pushed"] == new  # the cut pointer's partition re-added
    _assert_versioned(state, result)
    assert _git(ws, "rev-list", "--count", f"{head}..HEAD").strip() == "1", "one commit for the batches"
    week1, b2, b3 = sorted(read_manifest(state.manifest))
    assert {b: e["data_rev"] for b, e in read_manifest(state.manifest).items()} == \
        {week1: head, b2: result["data_rev"], b3: result["data_rev"]}


def test_version_on_a_full_disk_fails_clearly_and_the_retry_succeeds(snapshots, small_disk):
    """The disk fills up while ``dvc add`` copies the new partitions into the cache (DVC logs
    the failed transfers but exits 0, having rewritten the pointer): a DiskFullError, the
    pointer and the commit as they were; once space is back the retry versions both batches."""
    from common.store import DiskFullError
    from ingestion.versioning import store_changes, version_data

    state = _copy(snapshots["validated"], small_disk / "state")
    ws, params = state.workspace, _params()
    head = _git(ws, "rev-parse", "HEAD").strip()
    new = store_changes(ws)
    committed = {p.name: p.read_text() for p in (ws / new[0]).parent.glob("*.dvc")}
    size = sum(p.stat().st_size for target in new for p in (ws / target).rglob("*") if p.is_file())
    filler = _fill(small_disk, leave=size // 2)

    with pytest.raises(DiskFullError) as failure:
        version_data(state, params, "weeks 2-3")
    message = str(failure.value)
    assert f"version the listings store: the disk holding the state folder {state.root} is full" in message
    assert "dvc add" in message and "No space left on device" in message
    assert _git(ws, "rev-parse", "HEAD").strip() == head
    assert {p.name: p.read_text() for p in (ws / new[0]).parent.glob("*.dvc")} == committed, \
        "no pointer to data that is not in the cache"
    assert store_changes(ws) == new

    filler.unlink()
    result = version_data(state, params, "weeks 2-3").to_dict()
    assert result["added"] == new and result["pushed"] == new
    _assert_versioned(state, result)
