"""Warm start: a new model initialised from an earlier checkpoint (``train.init: champion``).

:func:`start_model` is the train stage's step (:func:`init_model` its plain-data form): it reads ``models/init/`` (the champion's checkpoint,
put there by ``training.pipeline.fetch_init``), checks that the champion's architecture fits
(:func:`architecture_difference`) and copies its weights into the fresh model
(:func:`warm_start`: every tensor whose name and shape match, the level heads row by label,
:func:`head_row_labels`). A champion that does not fit, or none, leaves the model as built.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from common.params import TrainParams

if TYPE_CHECKING:
    from training.model import ListingClassifier

log = logging.getLogger(__name__)

INIT_DIR = Path("models") / "init"
"""Where ``training.pipeline`` puts the model a run may start from (a DVC-tracked dep of the
train stage): ``init.json`` always, ``model.pt`` (the champion's checkpoint) when there is one."""

ARCHITECTURE_FIELDS = ("branches", "backbone", "structured", "text_dim", "field_dim", "image_encoder",
                       "encoder", "image_proj_dim")
"""``train`` fields that decide the shape of the fused features: a checkpoint whose values differ
cannot warm-start this model (its heads read other features), so the run trains from scratch."""
_DERIVED_BUFFERS = ("ancestors", "level_weights")
"""Buffers computed from this run's taxonomy and params, never copied from a checkpoint."""


def architecture_difference(old: dict, new: TrainParams) -> str | None:
    """Why a checkpoint's model cannot warm-start this one, or None when it can.

    Args:
        old: the checkpoint's ``params["train"]`` (plain data, ``TrainParams.model_dump``).
        new: this run's ``train`` params.

    Returns:
        e.g. ``"backbone resnet18 -> resnet34"``; None when every field of
        :data:`ARCHITECTURE_FIELDS` that shapes both models is equal (the backbone is compared
        only when both have an image branch, ``structured`` only between models that can have
        one (fused or image), ``field_dim`` only when both have a structured branch; the
        backbone between scratch models, ``encoder`` between frozen or between fine-tuned ones,
        ``image_proj_dim`` between frozen ones; a checkpoint from before ``image_encoder``
        existed is a scratch one).
    """
    new_values = new.model_dump(mode="json")
    branches = (old.get("branches"), new.branches)
    skip = set()
    if "text" in branches:
        skip.add("backbone")
    if "image" in branches:
        skip.add("text_dim")
    if "text" in branches:
        skip.add("structured")  # a text model has no structured branch
    if "structured" in skip or not (old.get("structured") and new.structured):
        skip.add("field_dim")
    old = {"image_encoder": "scratch", **old}
    modes = (old["image_encoder"], new.image_encoder)
    if "backbone" in skip or "scratch" not in modes:
        skip.add("backbone")
    if "backbone" in skip and "text" in branches:
        skip.add("image_encoder")
    if modes not in (("frozen", "frozen"), ("finetune", "finetune")) or "text" in branches:
        skip.add("encoder")
    if modes != ("frozen", "frozen") or "text" in branches:
        skip.add("image_proj_dim")
    diffs = [f"{name} {old.get(name)!r} -> {new_values[name]!r}" for name in ARCHITECTURE_FIELDS
             if name not in skip and old.get(name) != new_values[name]]
    return ", ".join(diffs) or None


def head_row_labels(ancestors: torch.Tensor, leaves: list[str]) -> list[list[str]]:
    """The label of every row of every level head, read from a model's ``ancestors`` buffer.

    Row ``r`` of head ``k`` is the level-``k`` ancestor of the leaves ``j`` with
    ``ancestors[k, j] == r``: their common path prefix of ``k + 1`` levels, and for the last
    head the leaf path itself (a flat model's only head is its leaves, in class order).

    Args:
        ancestors: int64 ``(depth, n_leaves)`` (the ``ancestors`` buffer of
            :class:`ListingClassifier`).
        leaves: the model's leaf paths, in class order (a checkpoint's ``labels``).

    Returns:
        ``depth`` lists; list ``k`` has one label per row of head ``k``.

    Raises:
        ValueError: when ``ancestors`` does not match ``leaves`` or leaves a row without a leaf.
    """
    from common.catalog import PATH_SEP, split_path

    depth, n = ancestors.shape
    if n != len(leaves):
        raise ValueError(f"ancestors cover {n} leaves, the checkpoint names {len(leaves)}")
    out = []
    for k in range(depth):
        rows: dict[int, str] = {}
        for j, r in enumerate(ancestors[k].tolist()):
            rows[r] = leaves[j] if k == depth - 1 else PATH_SEP.join(split_path(leaves[j])[:k + 1])
        if sorted(rows) != list(range(len(rows))):
            raise ValueError(f"head {k}: rows {sorted(set(range(max(rows) + 1)) - set(rows))} have no leaf")
        out.append([rows[r] for r in range(len(rows))])
    return out


def _copy_rows(new: dict[str, torch.Tensor], prefix: str, weight: torch.Tensor,
               bias: torch.Tensor | None, new_rows: list[str], old_rows: dict[str, int]) -> dict | None:
    """Copies the rows of an earlier ``Linear``'s ``weight`` / ``bias`` into ``new[prefix.*]`` by label.

    Returns:
        ``{"rows", "copied", "new", "dropped"}`` (counts and labels), or None when the input
        widths differ (nothing copied).
    """
    if weight.shape[1] != new[f"{prefix}.weight"].shape[1]:
        return None
    index = [(i, old_rows[label]) for i, label in enumerate(new_rows) if label in old_rows]
    if index:
        dst, src = (torch.tensor(x, dtype=torch.long) for x in zip(*index, strict=True))
        for part, old in (("weight", weight), ("bias", bias)):
            key = f"{prefix}.{part}"
            if old is not None and key in new:
                new[key] = new[key].clone()
                new[key][dst] = old[src].to(new[key].dtype)
    kept = set(new_rows)
    return {"rows": len(new_rows), "copied": len(index),
            "new": [label for label in new_rows if label not in old_rows],
            "dropped": sorted(label for label in old_rows if label not in kept)}


def warm_start(model: ListingClassifier, labels: list[str], state: dict[str, torch.Tensor],
               old_labels: list[str]) -> dict:
    """Initialises ``model`` in place from an earlier model's state dict, where it fits.

    * Level heads (and the per-branch leaf heads) are copied **row by label**: the row of a label
      the earlier model knew (by its path, at the same level; for levels the earlier model did not
      have, its leaf head) takes that row's weights and bias; rows of new labels keep this model's
      fresh initialisation; labels the earlier model had and this one has not are dropped.
    * Every other parameter and buffer whose name and shape match is copied whole: the backbone
      (and its BatchNorm statistics), the text and field encoders (the hashed embeddings only
      when their bucket counts match: a bucket is a hash value, so other counts mean other rows).
    * ``ancestors`` and ``level_weights`` are this run's own (its taxonomy), never copied.

    The caller checks the architecture first (:func:`architecture_difference`).

    Args:
        model: a freshly built :class:`ListingClassifier` for ``labels``, changed in place.
        labels: this model's leaf paths, in class order.
        state: the earlier model's ``state_dict`` (a checkpoint's ``model`` entry, CPU tensors).
        old_labels: the earlier model's leaf paths, in class order (the checkpoint's ``labels``).

    Returns:
        ``{"copied": [names], "not_copied": {name: "old shape -> new shape"}, "fresh": [names
        this model has and the earlier one had not], "heads": {name: {"rows", "copied", "new",
        "dropped"}}}``; a head whose input width differs is listed in ``not_copied``.

    Raises:
        ValueError: when ``state`` has no ``ancestors`` buffer or it does not fit ``old_labels``.
    """
    if "ancestors" not in state:
        raise ValueError("the checkpoint's state has no 'ancestors' buffer: not a ListingClassifier")
    new = dict(model.state_dict())
    new_rows = head_row_labels(model.ancestors, list(labels))
    old_rows = head_row_labels(state["ancestors"], list(old_labels))
    report: dict = {"copied": [], "not_copied": {}, "fresh": [], "heads": {}}
    handled: set[str] = set()

    def copy_head(prefix: str, old_prefix: str, rows: list[str], old_index: dict[str, int]) -> None:
        handled.update({f"{prefix}.weight", f"{prefix}.bias"})
        if f"{old_prefix}.weight" not in state:
            report["fresh"] += [f"{prefix}.weight", f"{prefix}.bias"]
            return
        weight = state[f"{old_prefix}.weight"]
        moved = _copy_rows(new, prefix, weight, state.get(f"{old_prefix}.bias"), rows, old_index)
        if moved is None:
            report["not_copied"][prefix] = f"{tuple(weight.shape)} -> {tuple(new[f'{prefix}.weight'].shape)}"
        else:
            report["heads"][prefix] = moved

    for k, rows in enumerate(new_rows):
        # the same level of the earlier model; the leaf level for a leaf head or a level it lacked
        old_k = k if k < len(old_rows) - 1 and k < len(new_rows) - 1 else len(old_rows) - 1
        copy_head(f"heads.{k}", f"heads.{old_k}", rows,
                  {label: r for r, label in enumerate(old_rows[old_k])})
    leaf_index = {label: j for j, label in enumerate(old_labels)}
    for i in range(len(model.branch_heads)):
        copy_head(f"branch_heads.{i}", f"branch_heads.{i}", list(labels), leaf_index)
    for name, tensor in new.items():
        if name in handled or name in _DERIVED_BUFFERS:
            continue
        old = state.get(name)
        if old is None:
            report["fresh"].append(name)
        elif old.shape != tensor.shape:
            report["not_copied"][name] = f"{tuple(old.shape)} -> {tuple(tensor.shape)}"
        else:
            new[name] = old.to(tensor.dtype)
            report["copied"].append(name)
    model.load_state_dict(new)
    return report


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """How a run's model started (:func:`start_model`).

    Attributes:
        init: ``"scratch"`` or ``"champion:v<N>"`` (the checkpoint's and train log's ``init``).
        reason: why (the train log's ``init_reason``).
        report: :func:`warm_start`'s report of the copied tensors; None from scratch.
        probe_record: from a champion, its checkpoint's ``precision_probe_record``
            (``training.precision.probe_record``; None when it has none).
        from_champion: whether the weights came from the champion (False from scratch).
    """

    init: str
    reason: str
    report: dict | None = None
    probe_record: dict | None = None
    from_champion: bool = False

    @property
    def warm(self) -> bool:
        """Whether the run starts from the champion (it then trains ``train.warm_epochs``)."""
        return self.init != "scratch"

    def to_dict(self) -> dict:
        """``{"init", "init_reason", "init_report"}``, and from a champion ``probe_record``."""
        out = {"init": self.init, "init_reason": self.reason, "init_report": self.report}
        if self.from_champion:
            out["probe_record"] = self.probe_record
        return out


def champion_checkpoint(workspace: Path, cfg: TrainParams) -> tuple[dict | None, str | None, str]:
    """The champion's checkpoint when this run starts from it, else why not.

    ``<workspace>/models/init/init.json`` (written by ``training.pipeline.fetch_init`` before
    ``dvc repro``) says whether there is a champion: ``{"init": "champion", "version": "3", ...}``
    with its checkpoint in ``models/init/model.pt``, or ``{"init": "scratch", "reason": ...}``.
    ``train.init: scratch``, no champion, a missing or unreadable checkpoint, or a champion of
    another architecture (:func:`architecture_difference`) mean a run from scratch. The prepare
    stage asks too (``training.replay``): only a run that starts from the champion replays.

    Args:
        workspace: the workspace folder.
        cfg: the ``train`` params group.

    Returns:
        ``(checkpoint, version, reason)``: the checkpoint dict (read with ``weights_only``,
        memory-mapped) and the champion's version, or ``(None, version or None, why not)``.
    """
    if cfg.init == "scratch":
        return None, None, "train.init is scratch"
    spec_file, ckpt_file = workspace / INIT_DIR / "init.json", workspace / INIT_DIR / "model.pt"
    if not spec_file.is_file():
        return None, None, (f"train.init is champion but {INIT_DIR / 'init.json'} is missing "
                            "(training.pipeline.fetch_init writes it before dvc repro)")
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    if spec.get("init") != "champion":
        return None, None, spec.get("reason") or "no champion"
    version = str(spec.get("version"))
    if not ckpt_file.is_file():
        return None, version, f"champion v{version}: no checkpoint at {INIT_DIR / 'model.pt'}"
    try:
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True, mmap=True)
        old_train = ckpt["params"]["train"]
        ckpt["labels"], ckpt["model"]  # noqa: B018 -- both must be there
    except Exception as exc:  # noqa: BLE001 -- any unreadable checkpoint: a new model is still a model
        return None, version, f"champion v{version}: checkpoint unreadable ({type(exc).__name__}: {exc})"
    diff = architecture_difference(old_train, cfg)
    if diff:
        return None, version, f"champion v{version} has another architecture ({diff})"
    return ckpt, version, f"champion v{version}"


def init_model(workspace: Path, model: nn.Module, labels: list[str], cfg: TrainParams) -> dict:
    """:func:`start_model` as plain data (:meth:`WarmStart.to_dict`)."""
    return start_model(workspace, model, labels, cfg).to_dict()


def start_model(workspace: Path, model: nn.Module, labels: list[str], cfg: TrainParams) -> WarmStart:
    """Starts ``model`` from the champion's weights when ``train.init`` is ``champion`` and it fits.

    Whether it fits: :func:`champion_checkpoint` (no champion, another architecture, a missing
    or unreadable checkpoint, or ``train.init: scratch`` leave the fresh model as built). The
    weights are copied by :func:`warm_start` (heads row by label).

    Args:
        workspace: the workspace folder.
        model: the freshly built classifier for ``labels`` (unwrapped, on the CPU), changed in place.
        labels: the run's leaf paths, in class order.
        cfg: the ``train`` params group.

    A fine-tuned champion (``image_encoder: finetune``) starts a fine-tuned run with the same
    ``train.encoder`` whole, its encoder included; another encoder or mode is another architecture.

    Returns:
        The :class:`WarmStart`: ``init`` ``"scratch"`` or ``"champion:v<N>"``, its reason, and
        from a champion the copy report and the champion's precision probe record.
    """
    ckpt, version, why = champion_checkpoint(workspace, cfg)
    if ckpt is None:
        log.info("init: scratch (%s)", why)
        return WarmStart("scratch", why)
    report = warm_start(model, labels, ckpt["model"], list(ckpt["labels"]))
    leaf = report["heads"].get(f"heads.{len(model.heads) - 1}", {})
    reason = (f"champion v{version}: {len(report['copied'])} tensors copied, "
              f"{len(report['not_copied'])} of other shape, {len(report['fresh'])} new; leaf head "
              f"{leaf.get('copied', 0)}/{leaf.get('rows', 0)} rows copied, {len(leaf.get('new', []))} new "
              f"leaves, {len(leaf.get('dropped', []))} dropped")
    log.info("init: %s", reason)
    return WarmStart(f"champion:v{version}", reason, report, ckpt.get("precision_probe_record"), True)
