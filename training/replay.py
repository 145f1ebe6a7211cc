"""Replay: a run from the champion trains on what is new plus a stratified sample of the rest.

A weekly run that warm-starts from the champion (``train.init: champion``, same architecture:
``training.warm_start.champion_checkpoint``) does not need the whole store again: the champion
has learnt it. The prepare stage (:func:`plan_replay`, :func:`select_replay`) keeps

- every listing of a batch the champion never trained on (its checkpoint's ``replay`` record
  lists them: ``trained_batches``; a listing updated in a new batch counts as new), and
- a sample of ``train.replay_size`` earlier listings, stratified by leaf: each leaf keeps its
  proportional share, at least ``train.replay_min_per_leaf`` listings (all of them when it has
  fewer), so that the class set and the rare leaves stay in every run (experience replay,
  Rolnick et al. 2019, "Experience Replay for Continual Learning", NeurIPS; stratified by class
  as in Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning").

The validation split is sampled the same way (its new listings and a share of earlier ones in
the ratio ``prepare.val_fraction`` gives), so early stopping and calibration see both. The
sample's order is a seeded hash of the listing id and the run's count of trained batches: each
week replays other earlier listings.

A run trains on the whole store instead (``mode: "full"``) when it starts from scratch, when
``train.replay_size`` is 0, when ``train.full_retrain`` asks (the trigger form), every
``train.full_retrain_every``-th run from the champion, or when the champion records no trained
batches (a checkpoint from before replay). The plan is ``data/prepared/replay.json``; the train
stage copies its ``record`` into the checkpoint (key ``replay``), which the next week reads.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from common.params import Params

log = logging.getLogger(__name__)

REPLAY_FILE = "replay.json"
"""In ``data/prepared/``: the run's :class:`ReplayPlan` (``to_dict``)."""
CHECKPOINT_KEY = "replay"
"""The checkpoint's key holding :attr:`ReplayPlan.record` (plain lists and ints)."""


@dataclass(frozen=True)
class ReplayPlan:
    """What the run trains on.

    Attributes:
        mode: ``"full"`` (the whole store) or ``"replay"`` (new listings + a sample).
        reason: why, in words (logged and kept in the train log).
        champion: the champion's version the run starts from, or None.
        new_batches: batch ids of the store the champion never trained on, sorted.
        trained_batches: batch ids the model of this run will have trained on (the champion's
            and the new ones; every batch of the store after a full run), sorted.
        runs_since_full: replay runs since the last full run, this one included (0: full).
        counts: filled by :func:`select_replay`: ``{"train": {"new", "replayed", "earlier"},
            "val": {...}}``, listings.
    """

    mode: str
    reason: str
    champion: str | None = None
    new_batches: list[str] = field(default_factory=list)
    trained_batches: list[str] = field(default_factory=list)
    runs_since_full: int = 0
    counts: dict = field(default_factory=dict)

    @property
    def record(self) -> dict:
        """What the checkpoint keeps for the next run: ``{"trained_batches", "runs_since_full"}``."""
        return {"trained_batches": list(self.trained_batches), "runs_since_full": int(self.runs_since_full)}

    def to_dict(self) -> dict:
        return asdict(self)


def plan_replay(workspace: Path, params: Params, store_batches: list[str]) -> ReplayPlan:
    """Decides whether this run replays or trains on the whole store.

    Args:
        workspace: the workspace (``models/init`` holds the champion's checkpoint, if any).
        params: the run's params (``train``).
        store_batches: every batch id of the store (partitions).

    Returns:
        The :class:`ReplayPlan` (without ``counts``).
    """
    from training.warm_start import champion_checkpoint

    cfg = params.train
    every = sorted(store_batches)

    def full(reason: str, champion: str | None = None) -> ReplayPlan:
        return ReplayPlan("full", reason, champion, [], every, 0)

    ckpt, version, why = champion_checkpoint(Path(workspace), cfg)
    if ckpt is None:
        return full(f"no warm start: {why}")
    if cfg.replay_size == 0:
        return full("train.replay_size is 0", version)
    if cfg.full_retrain:
        return full("train.full_retrain asks for it (trigger form)", version)
    record = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("trained_batches"), list):
        return full(f"champion v{version} records no trained batches (trained before replay)", version)
    runs = int(record.get("runs_since_full", 0)) + 1
    if cfg.full_retrain_every and runs >= cfg.full_retrain_every:
        return full(f"a full run every {cfg.full_retrain_every} runs (train.full_retrain_every): champion "
                    f"v{version} was replay run {runs - 1} since the last full one", version)
    seen = set(map(str, record["trained_batches"]))
    new = [b for b in every if b not in seen]
    return ReplayPlan("replay", f"champion v{version}: {len(new)} new batch(es) + a replay of "
                      f"{cfg.replay_size} earlier listings", version, new, sorted(seen | set(new)), runs)


def stratified_sample(frame: pd.DataFrame, size: int, min_per_leaf: int, salt: str) -> pd.DataFrame:
    """A sample of ``frame`` stratified by ``category_path``.

    Each leaf keeps ``max(min_per_leaf, round(size * n_leaf / len(frame)))`` rows, at most all of
    its ``n_leaf``: the floor can make the sample a little larger than ``size``. Within a leaf
    the rows are taken in the order of SHA-256 of ``"<salt>:<listing_id>"`` (seeded, stable).

    Returns:
        The sampled rows, in ``frame``'s order (index kept).
    """
    from training.prepare import split_key

    if size >= len(frame) or frame.empty:
        return frame
    keys = frame["listing_id"].astype(str).map(lambda i: split_key(i, salt))
    keep = []
    for _, idx in frame.groupby("category_path", sort=True).groups.items():
        quota = min(len(idx), max(min_per_leaf, int(round(size * len(idx) / len(frame)))))
        keep.extend(keys.loc[idx].sort_values(kind="stable").index[:quota])
    return frame.loc[sorted(keep)]


def select_replay(frames: dict[str, pd.DataFrame], plan: ReplayPlan, params: Params) -> tuple[dict, ReplayPlan]:
    """The rows a replay run trains and validates on.

    Args:
        frames: ``{"train": ..., "val": ...}`` of the whole store (``batch_id``, ``listing_id``,
            ``category_path``), as the split gives them.
        plan: from :func:`plan_replay`; a ``"full"`` plan keeps the frames as they are.
        params: the run's params (``train.replay_size``, ``replay_min_per_leaf``, ``seed``;
            ``prepare.val_fraction``).

    Returns:
        ``(frames, plan)``: the selected frames (index reset) and the plan with its ``counts``.
    """
    cfg = params.train
    if plan.mode != "replay":
        counts = {name: {"new": len(f), "replayed": 0, "earlier": 0} for name, f in frames.items()}
        return frames, ReplayPlan(**{**plan.to_dict(), "counts": counts})
    new_batches = set(plan.new_batches)
    val_fraction = params.prepare.val_fraction
    sizes = {"train": cfg.replay_size,
             "val": int(math.ceil(cfg.replay_size * val_fraction / max(1e-9, 1 - val_fraction)))}
    salt = f"{cfg.seed}:{len(plan.trained_batches)}"
    out, counts = {}, {}
    for name, frame in frames.items():
        is_new = frame["batch_id"].isin(new_batches)
        earlier = frame.loc[~is_new]
        replayed = stratified_sample(earlier, sizes.get(name, cfg.replay_size), cfg.replay_min_per_leaf, salt)
        out[name] = pd.concat([frame.loc[is_new], replayed]).sort_index().reset_index(drop=True)
        counts[name] = {"new": int(is_new.sum()), "replayed": len(replayed), "earlier": len(earlier)}
    plan = ReplayPlan(**{**plan.to_dict(), "counts": counts})
    log.info("replay: %s; train %d new + %d of %d earlier, val %d new + %d of %d earlier", plan.reason,
             counts["train"]["new"], counts["train"]["replayed"], counts["train"]["earlier"],
             counts["val"]["new"], counts["val"]["replayed"], counts["val"]["earlier"])
    return out, plan


def write_plan(prepared: Path, plan: ReplayPlan) -> None:
    """Writes ``data/prepared/replay.json``."""
    (Path(prepared) / REPLAY_FILE).write_text(json.dumps(plan.to_dict(), indent=1, sort_keys=True) + "\n",
                                              encoding="utf-8")


def read_plan(prepared: Path) -> ReplayPlan | None:
    """The prepare stage's plan, or None for data prepared before replay existed."""
    path = Path(prepared) / REPLAY_FILE
    return ReplayPlan(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
