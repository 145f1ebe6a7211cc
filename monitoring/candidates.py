"""Candidate groups: the listings held back for an unknown category, grouped by what the champion sees.

Validation holds back a listing whose category path is not in the taxonomy (``unknown_category``,
``<state>/quarantine/<batch>/rejected.csv``). Before a person extends the taxonomy
(``python -m validation.taxonomy add``) they want to know what is waiting: which new categories
the marketplace is sending, how many listings each, and whether the given labels agree. The
champion's penultimate features (:func:`training.inference.embed_paths`, the fused image + text
features its heads read) place similar listings together even for a category it never learned;
HDBSCAN (``sklearn.cluster.HDBSCAN``; Campello, Moulavi & Sander 2013), on L2-normalised features
(euclidean distance on unit vectors orders pairs as the cosine distance does), finds the dense
groups without being told how many there are, and leaves the rest ungrouped (noise).

Each group: its size, its most common given category (and that category's share of the group),
the given categories, example titles, listing ids and batches. Written to
``<state>/quarantine/candidate_groups.json`` and as the artifact ``candidate_groups/<batch>.json``
of the champion's monitoring run (``monitoring/<model>``); the DAG's ``monitor`` task calls
:func:`candidate_groups` after scoring the fresh batch. No champion yet: skipped, and said so.

CLI::

    python -m monitoring.candidates [--batches fashion-2026-11-09 ...] [--params params.yaml]
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from common.cli import run_command, step_parser
from common.params import Params, load_params
from common.results import StepResult
from common.state import State

logger = logging.getLogger(__name__)

CANDIDATES_FILE = "candidate_groups.json"
"""In ``<state>/quarantine/``: the latest candidate groups."""
ARTIFACT_DIR = "candidate_groups"
"""Artifact folder on the monitoring run: ``candidate_groups/<batch>.json``."""
EXAMPLES = 5
"""Example titles (and given categories) shown per group."""
HELD_BACK_STATUSES = ("partial", "quarantined")
"""Batches whose held-back rows are grouped: a batch quarantined whole also shows what it sent."""


class CandidateGroupsResult(StepResult):
    """The candidate groups of one monitor run.

    Attributes:
        held_back: held-back listings found (rows of ``rejected.csv`` whose only reason is
            ``unknown_category``).
        grouped: of those, the listings in a group.
        groups: one dict per group, largest first: ``group`` (0-based), ``size``,
            ``given_category`` (most common), ``given_share`` (its share of the group, 0..1),
            ``given_categories`` (``{path: n}``, at most :data:`EXAMPLES`), ``examples``
            (titles), ``listing_ids``, ``batches``. Local (kept out of XCom).
        champion_version: the model whose features grouped them, None when skipped.
        file: the JSON written under the quarantine, None when skipped.
        artifact: the monitoring run's artifact path, None when skipped.
        monitoring_run_id: the run holding the artifact.
        skipped: why nothing was grouped (no champion yet), else None.
    """

    LOCAL: ClassVar[frozenset[str]] = frozenset({"groups"})
    held_back: int
    grouped: int = 0
    groups: tuple[dict[str, Any], ...] = ()
    champion_version: str | None = None
    file: str | None = None
    artifact: str | None = None
    monitoring_run_id: str | None = None
    skipped: str | None = None


def group_labels(features: np.ndarray, min_group_size: int) -> np.ndarray:
    """HDBSCAN cluster labels of L2-normalised feature rows.

    Args:
        features: float ``(N, D)``.
        min_group_size: HDBSCAN's ``min_cluster_size`` (>= 2).

    Returns:
        int ``(N,)``: a group index per row, ``-1`` for rows in no group (all ``-1`` when there
        are fewer rows than ``min_group_size``).
    """
    from sklearn.cluster import HDBSCAN
    from sklearn.preprocessing import normalize

    n = len(features)
    size = max(2, int(min_group_size))
    if n < size:
        return np.full(n, -1, dtype=int)
    unit = normalize(np.asarray(features, dtype=np.float64))
    return HDBSCAN(min_cluster_size=size, copy=True).fit_predict(unit).astype(int)


def summarize_groups(rows: pd.DataFrame, labels: np.ndarray, examples: int = EXAMPLES) -> list[dict]:
    """One summary per group, largest first (ties: by given category).

    Args:
        rows: the held-back listings (``listing_id``, ``title``, ``category_path``,
            ``batch_id``), in ``labels`` order.
        labels: :func:`group_labels`.
        examples: titles and given categories shown per group.

    Returns:
        See :attr:`CandidateGroupsResult.groups`.
    """
    out = []
    for label in sorted(set(labels.tolist()) - {-1}):
        members = rows[labels == label]
        given = members["category_path"].value_counts()
        out.append({
            "size": len(members),
            "given_category": str(given.index[0]),
            "given_share": round(float(given.iloc[0]) / len(members), 4),
            "given_categories": {str(k): int(v) for k, v in given.head(examples).items()},
            "examples": [t if isinstance(t, str) and t else f"listing {i}"  # no title: its id
                         for t, i in zip(members["title"].head(examples),
                                         members["listing_id"].head(examples), strict=True)],
            "listing_ids": [str(i) for i in members["listing_id"]],
            "batches": sorted(set(members["batch_id"])),
        })
    out.sort(key=lambda g: (-g["size"], g["given_category"]))
    return [{"group": i, **g} for i, g in enumerate(out)]


def _model_input(rows: pd.DataFrame) -> pd.DataFrame:
    frame = rows.copy()
    frame["price"] = pd.to_numeric(frame.get("price"), errors="coerce")
    return frame


def candidate_groups(state: State, params: Params, batch_ids: Sequence[str] = ()) -> CandidateGroupsResult:
    """Groups the held-back listings by the champion's embeddings and records the groups.

    Args:
        state: the state folder (manifest, quarantine, staging for the images).
        params: the effective params (``registry``, ``validate.candidate_min_group_size``).
        batch_ids: the batches accepted this run; the newest names the artifact (default: the
            newest batch of the manifest).

    Returns:
        :class:`CandidateGroupsResult`.

    Raises:
        mlflow.exceptions.MlflowException: when the tracking server cannot be reached.
        RuntimeError: when the champion's model cannot be loaded.
    """
    import mlflow

    from common.files import write_json
    from ingestion.manifest import read_manifest
    from monitoring.fresh_batch import monitoring_run
    from promotion.registry import ALIAS_CHAMPION, alias_version, ensure_experiment, mlflow_client
    from validation.images import resolve_image
    from validation.staged import held_back

    rows = held_back(state, HELD_BACK_STATUSES).reset_index(drop=True)
    client = mlflow_client(state)
    name = params.registry.model_name
    champion = alias_version(client, name, ALIAS_CHAMPION)
    if champion is None:
        logger.info(f"[monitor] candidate groups: skipped, no champion yet ({len(rows)} held-back "
              "listing(s) wait for a taxonomy change)")
        return CandidateGroupsResult(held_back=len(rows), skipped="no champion yet")
    key = sorted(batch_ids)[-1] if batch_ids else (sorted(read_manifest(state.manifest)) or ["none"])[-1]

    images = [resolve_image(state.staging / b, k) if k else None
              for b, k in zip(rows["batch_id"], rows["image_key"], strict=True)]
    readable = np.array([p is not None and p.is_file() for p in images], dtype=bool)
    rows = rows[readable].reset_index(drop=True)
    images = [str(p) for p, ok in zip(images, readable, strict=True) if ok]
    groups: list[dict] = []
    if len(rows):
        from training.inference import embed_paths, load_checkpoint

        try:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{champion}"))
            loaded = load_checkpoint(next(local.rglob("model.pt")))
        except Exception as exc:  # any failure to fetch or load the champion
            raise RuntimeError(f"the champion (version {champion}) cannot be loaded: {exc}") from exc
        features = embed_paths(loaded, _model_input(rows),
                               images if loaded.model.image_encoder is not None else None)
        labels = group_labels(features, params.validate_.candidate_min_group_size)
        groups = summarize_groups(rows, labels)
    grouped = sum(g["size"] for g in groups)
    record = {"champion_version": str(champion), "batch": key, "held_back": int(readable.size),
              "grouped": grouped, "ungrouped": len(rows) - grouped,
              "min_group_size": params.validate_.candidate_min_group_size, "groups": groups}
    path = write_json(state.quarantine / CANDIDATES_FILE, record)
    run_id = monitoring_run(client, ensure_experiment(state, params), name)
    artifact = f"{ARTIFACT_DIR}/{key}.json"
    client.log_text(run_id, json.dumps(record, indent=2), artifact)
    shown = "; ".join(f"{g['given_category']!r} x{g['size']} ({g['given_share']:.0%})" for g in groups[:5])
    logger.info(f"[monitor] candidate groups: {readable.size} held-back listing(s), {len(groups)} group(s)"
          + (f": {shown}" if shown else "") + f", {len(rows) - grouped} ungrouped; champion "
          f"v{champion}; {path} (artifact {artifact} on run {run_id})")
    return CandidateGroupsResult(held_back=int(readable.size), grouped=grouped, groups=tuple(groups),
                                 champion_version=str(champion), file=str(path), artifact=artifact,
                                 monitoring_run_id=run_id)


def main(argv: list[str] | None = None) -> int:
    """``python -m monitoring.candidates``: prints the result (groups included) as JSON."""
    parser = step_parser("monitoring.candidates", __doc__)
    parser.add_argument("--batches", nargs="*", default=(), help="this run's batches (names the artifact)")
    args = parser.parse_args(argv)
    return run_command(lambda: candidate_groups(State.from_env(), load_params(args.params), args.batches).to_dict())


if __name__ == "__main__":
    sys.exit(main())
