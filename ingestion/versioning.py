"""Versioning with DVC: the listings store, the golden test set and the pipeline runs.

The pipeline runs in a DVC workspace, ``<state>/workspace``: its own git repository holding
``dvc.yaml``, the effective ``params.yaml``, a snapshot of the packages the stages run
(``common/``, ``training/``), the ``.dvc`` pointers of ``data/listings`` and ``data/golden``
and ``dvc.lock``. One commit of the workspace therefore pins data, code and params: its sha is
the *data revision* passed on through XCom and tagged on every model version. Nothing is ever
committed into the developer's checkout.

The DVC remote is ``<state>/dvc-remote`` unless ``LCP_DVC_REMOTE_URL`` names another one: a
folder, or ``s3://bucket/prefix`` (dvc-s3) with the same configuration shape. S3 credentials
come only from the environment, as boto3 reads them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``...); an endpoint (MinIO, a moto server) from
``LCP_DVC_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``. Nothing secret is written to the
workspace's ``.dvc/config``.

Two runs never use the workspace at once: :func:`workspace_lock` (an OS file lock on
``<state>/workspace.lock``, released by the kernel when its holder dies, so it never goes stale)
guards versioning and ``dvc repro``. DVC's own lock (``.dvc/tmp/rwlock``, ``.dvc/tmp/lock``) can go
stale when a worker is killed mid-command: the error message then names the files to remove.

CLI::

    python -m ingestion.versioning version      # dvc add + git commit + dvc push
    python -m ingestion.versioning repro        # dvc repro (prepare -> train -> evaluate)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import yaml

from common.params import PROJECT_ROOT, Params, load_params, write_params
from common.state import State
from common.store import read_store

SNAPSHOT_PACKAGES = ("common", "training")
"""Packages the DVC stages run; copied into the workspace so its commit pins them."""

REMOTE_ENV = "LCP_DVC_REMOTE_URL"
ENDPOINT_ENV = "LCP_DVC_S3_ENDPOINT_URL"
LOCK_TIMEOUT_ENV = "LCP_WORKSPACE_LOCK_TIMEOUT"


class VersioningError(RuntimeError):
    """A git or DVC command failed in the workspace."""


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        hint = ""
        if "unable to acquire lock" in (proc.stderr + proc.stdout).lower():
            hint = (" -- a DVC lock is held: if no other run is active (a killed worker left it), "
                    f"remove {cwd / '.dvc' / 'tmp' / 'rwlock'} and {cwd / '.dvc' / 'tmp' / 'lock'}")
        raise VersioningError(
            f"`{' '.join(cmd)}` failed in {cwd} (exit {proc.returncode}){hint}:\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def _stage_env(workspace: Path) -> dict:
    """Environment for DVC and its stages: our interpreter first on PATH, the snapshot importable."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(workspace)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _dvc(workspace: Path, *args: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], workspace, _stage_env(workspace))


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
        # only DVC's own files: the listings store may already be there and belongs to DVC
        _git(ws, "add", ".dvc", ".dvcignore")
        _git(ws, "commit", "-q", "-m", "init DVC workspace")
    return ws


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    golden.to_parquet(tmp, index=False)
    os.replace(tmp, path)
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


def version_data(state: State, params: Params, note: str = "") -> dict:
    """Tracks the listings store and the golden set with DVC, commits, and pushes to the remote.

    Args:
        state: the state folder.
        params: the effective params of this run (written to the workspace's params.yaml).
        note: appended to the commit message (e.g. the batch ids).

    Returns:
        ``{"data_rev": workspace commit sha, "listings_md5": DVC hash of data/listings,
        "golden_md5": DVC hash of data/golden, "workspace": path}``.

    Raises:
        VersioningError: when git or DVC fails.
    """
    with workspace_lock(state):
        ws = init_workspace(state)
        remote = configure_remote(state)
        sync_snapshot(state, params)
        if freeze_golden(state, params) is None:
            raise VersioningError("the listings store is empty: nothing to version")
        _dvc(ws, "add", "-q", "data/listings", "data/golden")
        rev = _commit(ws, f"data: listings store {note}".strip())
        _dvc(ws, "push", "-q")
    return {
        "remote": remote,
        "data_rev": rev,
        "listings_md5": _out_md5(ws / "data" / "listings.dvc"),
        "golden_md5": _out_md5(ws / "data" / "golden.dvc"),
        "workspace": str(ws),
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
    with workspace_lock(state):
        out = _dvc(ws, "repro")
        print(out[-6000:])
        rev = _commit(ws, f"repro: prepare -> train -> evaluate {note}".strip())
        _dvc(ws, "push", "-q")
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
