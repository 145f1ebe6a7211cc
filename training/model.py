"""The listing classifier: image, text and structured branches, fused, one head per taxonomy level.

::

    image (N, 3, S, S)      -> backbone (head = Identity) -> (N, F_img) ------+
    title+description bags  -> EmbeddingBag(mean) -> MLP -> (N, text_dim) ---+-> concat -> dropout
    field tokens + price    -> EmbeddingBag(sum) + Linear -> MLP -> (N, field_dim) -+      |
                                                                       heads: level 1 ... leaf
                                                                       -> leaf_log_probs (N, C_leaf)

With ``branches="image"`` (a catalog without titles) or ``"text"`` only that branch is built and
the other inputs are ignored; the structured branch joins a fused or image model when
``train.structured`` is true. The heads
follow Criteo's catalogue classifier (one head per taxonomy level, losses weighted by depth);
:meth:`ListingClassifier.leaf_log_probs` combines them so that the predicted leaf's ancestors are
the predicted ancestors.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn

from common.params import TrainParams

log = logging.getLogger(__name__)

_HEAD_ATTRS = ("fc", "classifier", "head", "heads")


def _replace_head(backbone: nn.Module) -> int:
    """Replaces the last ``Linear`` of a torchvision model's classification head by ``Identity``.

    The layers before it stay, as in torchvision's fine-tuning recipe
    (``model.classifier[-1] = nn.Linear(...)``): ConvNeXt keeps its head's ``LayerNorm2d`` and
    ``Flatten`` (pretrained parameters), MobileNetV3 its ``Linear(960, 1280)`` + ``Hardswish``,
    EfficientNet its dropout; a ResNet's ``fc`` is the Linear itself.

    Returns:
        The dimension of the features the last Linear read, i.e. of the backbone's output
        ``(N, dim)``.

    Raises:
        ValueError: when the model has none of the usual head attributes or no Linear in it.
    """
    for attr in _HEAD_ATTRS:
        head = getattr(backbone, attr, None)
        if isinstance(head, nn.Linear):
            setattr(backbone, attr, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Module):
            linears = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                continue
            name, last = linears[-1]
            parent_name, _, child = name.rpartition(".")
            setattr(head.get_submodule(parent_name) if parent_name else head, child, nn.Identity())
            return last.in_features
    raise ValueError(f"cannot find the classification head of {type(backbone).__name__}")


def _cached_weights(name: str):
    """The torchvision DEFAULT weights enum of ``name`` if its file is already in the torch hub
    cache (``$TORCH_HOME/hub/checkpoints``); ``None`` otherwise. Never downloads."""
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    filename = os.path.basename(weights.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return weights if cached.is_file() else None


def build_backbone(name: str, weights: str) -> tuple[nn.Module, int, str | None]:
    """A torchvision classification model with its head removed.

    Args:
        name: any name of ``torchvision.models.list_models(module=torchvision.models)``.
        weights: ``"auto"`` (pretrained when cached locally, else random init), ``"none"``, or
            the path of a state dict (of the full torchvision model, or of the model without head):
            ``train.weights``, whose default lives in ``common.params.TrainParams``.

    Returns:
        ``(backbone, feature_dim, weights_source)``: the backbone maps float ``(N, 3, S, S)``
        to ``(N, feature_dim)``; ``weights_source`` says where the pretrained weights came from
        (``"torchvision ResNet18_Weights.IMAGENET1K_V1 (cached)"``, ``"file /path"``), None when
        the backbone starts from random initialisation.

    Raises:
        FileNotFoundError: when ``weights`` is a path that does not exist.
        ValueError: when the file at ``weights`` is not a PyTorch state dict, none of its keys
            belongs to a ``name`` model, or a tensor has another shape than the model's.
    """
    source = None
    if weights == "auto":
        enum = _cached_weights(name)
        backbone = torchvision.models.get_model(name, weights=enum)
        if enum is None:
            log.info("no cached pretrained weights for %s: training from scratch", name)
        else:
            source = f"torchvision {enum} (cached)"
    elif weights in ("none", "", "scratch"):
        backbone = torchvision.models.get_model(name, weights=None)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"train.weights: no such file {path}")
        backbone = torchvision.models.get_model(name, weights=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise ValueError(f"train.weights {path}: not a PyTorch state dict ({err})") from err
        state = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not set(state) & set(backbone.state_dict()):
            raise ValueError(f"train.weights {path}: no key matches a {name} model")
        try:
            backbone.load_state_dict(state, strict=False)
        except RuntimeError as err:  # tensors of the wrong shape, e.g. another architecture's
            lines = [line.strip() for line in str(err).splitlines()[1:]] or [str(err)]
            raise ValueError(f"train.weights {path}: does not fit a {name} model "
                             f"({len(lines)} errors), e.g. {lines[0]}") from err
        source = f"file {path.resolve()}"
    dim = _replace_head(backbone)
    return backbone, dim, source


class BagEncoder(nn.Module):
    """Mean of hashed n-gram embeddings, then a small MLP (the text branch).

    Args:
        buckets: number of hash buckets.
        dim: embedding and output dimension.
    """

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU())
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embedding(ids, offsets))




class FieldEncoder(nn.Module):
    """The structured branch: categorical field tokens (summed embeddings) + the numeric block.

    Args:
        buckets: hash buckets of the field tokens (see ``training.text.encode_fields``).
        dim: output dimension.
        numeric: width of the numeric block (2: log-price, price-missing flag).
    """

    def __init__(self, buckets: int, dim: int, numeric: int = 2) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="sum")
        self.numeric = nn.Linear(numeric, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU())
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embedding(ids, offsets) + self.numeric(numeric))


class ListingClassifier(nn.Module):
    """Category classifier of a listing from its image, text and structured fields.

    One linear head per taxonomy level reads the fused features; :meth:`leaf_log_probs`
    combines the heads into a distribution over leaves that is consistent with the tree.

    The settings that the ``train`` params also hold are keyword-only and required: their
    defaults live in one place, ``common.params.TrainParams``, from which :func:`build_model`
    passes them (``tests/unit/test_params.py`` checks that this signature has none of its own).

    Args:
        level_sizes: labels per taxonomy level, top first; the last is the leaf level
            (see ``training.hierarchy.LabelTree``). An int means a flat classifier.
        ancestors: int64 ``(depth, n_leaves)`` level-k ancestor index of each leaf
            (``LabelTree.ancestors``); None for a flat classifier.
        level_weights: weight of each level, in the loss and in the combination (see
            :meth:`leaf_log_probs`), resolved to the tree's depth
            (``training.hierarchy.level_weights``); None: 1.0 each.
        backbone: torchvision model name (image branch), unused without an image branch.
        branches: ``"fused"`` (image + text [+ structured]), ``"image"`` [+ structured] or
            ``"text"``.
        structured: add the structured branch to a fused or image model.
        text_buckets, text_dim: the text branch.
        field_buckets, field_dim: the structured branch.
        weights: see :func:`build_backbone`.
        dropout: dropout on the fused features.
        branch_loss_weight: weight of auxiliary leaf heads, one per branch of a fused model,
            trained on that branch's features alone (deep supervision, so that a strong branch
            cannot leave the others untrained; Wang et al. 2020, "What Makes Training
            Multi-modal Classification Networks Hard?"). 0: none. Unused at inference.
    """

    def __init__(self, level_sizes: list[int] | int, ancestors: torch.Tensor | None = None, *,
                 level_weights: list[float] | None, backbone: str, branches: str, structured: bool,
                 text_buckets: int, text_dim: int, field_buckets: int, field_dim: int, weights: str,
                 dropout: float, branch_loss_weight: float) -> None:
        super().__init__()
        if branches not in ("fused", "image", "text"):
            raise ValueError(f"branches must be fused, image or text, got {branches!r}")
        if isinstance(level_sizes, int):
            level_sizes = [level_sizes]
        level_sizes = list(level_sizes)
        if ancestors is None:
            if len(level_sizes) != 1:
                raise ValueError("a hierarchical classifier needs the ancestors of its leaves")
            ancestors = torch.arange(level_sizes[0]).unsqueeze(0)
        if tuple(ancestors.shape) != (len(level_sizes), level_sizes[-1]):
            raise ValueError(f"ancestors of shape {tuple(ancestors.shape)}, expected "
                             f"({len(level_sizes)}, {level_sizes[-1]})")
        level_weights = list(level_weights or [1.0] * len(level_sizes))
        if len(level_weights) != len(level_sizes):
            raise ValueError(f"{len(level_weights)} level weights for {len(level_sizes)} levels")
        self.branches = branches
        self.weights_source: str | None = None
        width = 0
        self.image_encoder: nn.Module | None = None
        self.text_encoder: BagEncoder | None = None
        self.field_encoder: FieldEncoder | None = None
        if branches in ("fused", "image"):
            self.image_encoder, dim, self.weights_source = build_backbone(backbone, weights)
            width += dim
        if branches in ("fused", "text"):
            self.text_encoder = BagEncoder(text_buckets, text_dim)
            width += text_dim
        if branches in ("fused", "image") and structured:
            self.field_encoder = FieldEncoder(field_buckets, field_dim)
            width += field_dim
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList(nn.Linear(width, n) for n in level_sizes)
        self.depth = len(level_sizes)
        self.branch_loss_weight = float(branch_loss_weight)
        branch_dims = [e.out_dim if hasattr(e, "out_dim") else None
                       for e in (self.text_encoder, self.field_encoder) if e is not None]
        if self.image_encoder is not None:
            branch_dims.insert(0, width - sum(branch_dims))
        self.branch_heads = nn.ModuleList(
            nn.Linear(d, level_sizes[-1]) for d in branch_dims
        ) if branch_loss_weight > 0 and len(branch_dims) > 1 else nn.ModuleList()
        self.register_buffer("ancestors", ancestors.to(torch.long).clone(), persistent=True)
        self.register_buffer("level_weights", torch.tensor(level_weights, dtype=torch.float32),
                             persistent=True)

    @property
    def pretrained(self) -> bool:
        """Whether the image backbone started from pretrained weights (see ``weights_source``)."""
        return self.weights_source is not None

    @property
    def num_classes(self) -> int:
        """Number of leaf categories."""
        return self.heads[-1].out_features

    def forward(self, images: torch.Tensor | None, ids: torch.Tensor | None,
                offsets: torch.Tensor | None, field_ids: torch.Tensor | None = None,
                field_offsets: torch.Tensor | None = None,
                numeric: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Logits of every taxonomy level.

        Args:
            images: float (N, 3, S, S) normalised (see ``training.presets``); ignored without an
                image branch.
            ids, offsets: int64 hashed text bags (``training.text.encode_texts``); ignored
                without a text branch.
            field_ids, field_offsets, numeric: structured inputs (``training.text.encode_fields``);
                ignored without a structured branch.

        Returns:
            ``depth`` float tensors ``(N, level_sizes[k])``; in training mode with branch heads,
            followed by one leaf-logit tensor per branch (see ``branch_loss_weight``).
        """
        feats = []
        if self.image_encoder is not None:
            feats.append(self.image_encoder(images).flatten(1))
        dtype = feats[0].dtype if feats else torch.float32
        if self.text_encoder is not None:
            feats.append(self.text_encoder(ids, offsets).to(dtype))
        if self.field_encoder is not None:
            feats.append(self.field_encoder(field_ids, field_offsets, numeric).to(dtype))
        x = self.dropout(torch.cat(feats, dim=1) if len(feats) > 1 else feats[0])
        out = [head(x) for head in self.heads]
        if self.training and len(self.branch_heads):
            out += [head(self.dropout(f)) for head, f in zip(self.branch_heads, feats, strict=True)]
        return out

    def leaf_log_probs(self, level_logits: list[torch.Tensor]) -> torch.Tensor:
        """One distribution over leaves from the level heads, consistent with the tree.

        ``score(leaf) = sum_k w_k * log p_k(ancestor_k(leaf))`` (a weighted product of
        experts over the path), normalised over leaves with a log-softmax. The top leaf therefore
        comes with its own ancestors; a flat model returns its log-softmax unchanged.

        Args:
            level_logits: the output of :meth:`forward`.

        Returns:
            float32 ``(N, n_leaves)`` log-probabilities.
        """
        score = None
        for k, logits in enumerate(level_logits[:self.depth]):
            part = torch.log_softmax(logits.float(), dim=1)[:, self.ancestors[k]] * self.level_weights[k]
            score = part if score is None else score + part
        return torch.log_softmax(score, dim=1)

    def level_loss(self, level_logits: list[torch.Tensor], level_targets: list[torch.Tensor],
                   criterion: nn.Module, denominator: float | None = None) -> torch.Tensor:
        """``sum_k w_k * sum_i criterion(logits_k[i], targets_k[i]) / denominator``.

        Args:
            level_logits: the output of :meth:`forward`.
            level_targets: int64 ``(N,)`` targets of the taxonomy's levels, top first
                (``LabelTree.level_targets``); the model reads the last ``depth`` of them, so a
                flat model reads the leaf targets only. Rows with ``-1`` are left out.
            criterion: a loss with ``reduction="sum"`` (e.g. ``nn.CrossEntropyLoss``).
            denominator: rows the sum is divided by; default the rows of known category. Under
                DDP, the global batch size / world size, so that the averaged gradient is the
                gradient of the global batch's mean loss whatever the split of rows.

        Returns:
            A scalar float32 tensor.
        """
        level_targets = list(level_targets)[-self.depth:]
        total = None
        leaf = level_targets[-1] >= 0
        for k, logits in enumerate(level_logits):
            if k < self.depth:
                targets = level_targets[k]
                known = targets >= 0
                part = criterion(logits.float()[known], targets[known]) * self.level_weights[k]
            else:  # an auxiliary branch head: leaf targets
                part = criterion(logits.float()[leaf], level_targets[-1][leaf]) * self.branch_loss_weight
            total = part if total is None else total + part
        if denominator is None:
            denominator = max(int((level_targets[-1] >= 0).sum()), 1)
        return total / denominator


def build_model(labels: list[str], train_params: TrainParams) -> tuple[ListingClassifier, bool]:
    """The classifier configured by the ``train`` params group.

    Args:
        labels: the leaf category paths (class order), e.g. sorted training categories.
        train_params: the ``train`` params group.

    Returns:
        ``(model, pretrained)``: whether the image backbone started from pretrained weights.
    """
    from training.hierarchy import LabelTree, level_weights

    if isinstance(labels, int):  # a flat classifier of n anonymous classes
        labels = [f"class {i}" for i in range(labels)]
    tree = LabelTree(labels)
    if not train_params.hierarchical:
        sizes, ancestors, weights = [len(labels)], None, None
    else:
        sizes, ancestors = tree.sizes, tree.ancestors
        weights = level_weights(train_params.level_weights, tree.depth)
    model = ListingClassifier(
        sizes, ancestors,
        level_weights=weights,
        backbone=train_params.backbone,
        branches=train_params.branches,
        structured=train_params.structured,
        text_buckets=train_params.text_buckets,
        text_dim=train_params.text_dim,
        field_buckets=train_params.field_buckets,
        field_dim=train_params.field_dim,
        weights=train_params.weights,
        dropout=train_params.dropout,
        branch_loss_weight=train_params.branch_loss_weight,
    )
    return model, model.pretrained


# --- Warm start: a new model initialised from an earlier checkpoint (train.init: champion) ----

ARCHITECTURE_FIELDS = ("branches", "backbone", "structured", "text_dim", "field_dim")
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
        one (fused or image), ``field_dim`` only when both have a structured branch).
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
