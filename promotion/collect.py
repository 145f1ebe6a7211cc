"""Retention: old pipeline data leaves the DVC cache (and optionally the remote) once no model
that may still be served or rolled back, and no recent week, needs it.

Every week's ``dvc repro`` caches new prepared arrays, embeddings, checkpoints and the store's
new partitions; nothing removes the old ones, so the cache grows with every week's outputs. After
each run (the DAG's ``collect_garbage`` task) ``dvc gc`` keeps what these workspace commits use:

- the commits that trained the versions holding ``champion`` and ``previous-champion`` (their
  ``workspace_commit`` tag), tagged ``lcp-champion`` and ``lcp-previous-champion`` in the
  workspace's git repository so that ``dvc gc --all-tags`` keeps them (a rollback or ``make
  reproduce`` of either still finds its data);
- the last ``retention.keep_commits`` commits from ``HEAD`` (about two a week: data, training);
- the workspace as checked out.

The store's partitions are used by every later commit, so they are never collected while the
store holds them; what goes is superseded prepared data, embeddings of removed encoders and
checkpoints of versions that are neither champion nor previous champion nor recent.
``retention.cloud`` also removes them from the DVC remote (then only the kept commits can be
reproduced). ``retention.keep_commits: 0`` turns collection off.

CLI::

    python -m promotion.collect [--params FILE]
"""

from __future__ import annotations

import logging
import re
import sys

from common.cli import run_command, step_parser
from common.params import Params, load_params
from common.results import StepResult
from common.state import State

log = logging.getLogger(__name__)

KEEP_TAGS = {"champion": "lcp-champion", "previous-champion": "lcp-previous-champion"}
"""Alias -> the git tag of its version's workspace commit."""


class CollectResult(StepResult):
    """``collect_garbage``'s result.

    Attributes:
        kept: git tag -> the workspace commit it keeps (the aliases' versions that have one).
        keep_commits: commits from HEAD kept (0: nothing was collected).
        removed: cache entries ``dvc gc`` reported removed (0 when it removed nothing).
        cloud: whether the remote was collected too.
        skipped: why nothing was collected, else None.
    """

    kept: dict[str, str] = {}
    keep_commits: int = 0
    removed: int = 0
    cloud: bool = False
    skipped: str | None = None


def collect_garbage(state: State, params: Params) -> CollectResult:
    """Runs the retention policy (module docstring) on the state's DVC workspace.

    Returns:
        The :class:`CollectResult`.

    Raises:
        ingestion.workspace.VersioningError: when ``git`` or ``dvc gc`` fails.
        mlflow.exceptions.MlflowException: when the registry cannot be reached (nothing is
            collected: an unknown champion must never read as "no champion").
    """
    from ingestion.workspace import run_dvc, run_git
    from promotion.registry import alias_version, mlflow_client

    cfg = params.retention
    ws = state.workspace
    if cfg.keep_commits == 0:
        return CollectResult(skipped="retention.keep_commits is 0")
    if not (ws / ".dvc").is_dir():
        return CollectResult(skipped=f"no DVC workspace at {ws}")
    client, name = mlflow_client(state), params.registry.model_name
    kept: dict[str, str] = {}
    for alias, tag in KEEP_TAGS.items():
        version = alias_version(client, name, alias)
        commit = client.get_model_version(name, version).tags.get("workspace_commit") if version else None
        if commit:
            run_git(ws, "tag", "-f", tag, commit)
            kept[tag] = commit
        elif tag in run_git(ws, "tag", "--list", tag).split():  # the alias is gone: so is its keep
            run_git(ws, "tag", "-d", tag)
    args = ["gc", "--force", "--workspace", "--all-tags", "--rev", "HEAD", "--num", str(cfg.keep_commits)]
    out = run_dvc(ws, *args, *(["--cloud"] if cfg.cloud else []))
    removed = _count_removed(out)
    log.info("[collect_garbage] dvc %s: kept %s and the last %d commits; %s", " ".join(args),
             kept or "no champion", cfg.keep_commits, out.strip().splitlines()[-1] if out.strip() else "nothing removed")
    return CollectResult(kept=kept, keep_commits=cfg.keep_commits, removed=removed, cloud=cfg.cloud)


def _count_removed(out: str) -> int:
    """The count in ``dvc gc``'s summary (``Removed 12 objects from local cache.``), else 0."""
    return sum(int(m) for m in re.findall(r"Removed (\d+) objects?", out))


def main(argv: list[str] | None = None) -> int:
    """``python -m promotion.collect [--params FILE]``: prints the result as JSON."""
    parser = step_parser("promotion.collect", __doc__)
    args = parser.parse_args(argv)
    return run_command(lambda: collect_garbage(State.from_env(), load_params(args.params)).to_dict())


if __name__ == "__main__":
    sys.exit(main())
