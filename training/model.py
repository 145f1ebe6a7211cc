"""The listing classifier: image, text and structured branches, fused, one head per taxonomy level.

::

    image (N, 3, S, S)      -> backbone (head = Identity) -> (N, F_img) ------+
      or, frozen: embedding (N, E) -> LayerNorm -> Dropout -> Linear -> GELU   |
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

The branches' modules: the image backbone ``training.backbones``, the text and structured
encoders ``training.encoders``; starting a model from an earlier checkpoint: ``training.warm_start``.

With ``train.image_encoder: frozen`` the image branch reads the pooled features of a pretrained
encoder computed once per image (``training.embeddings``) through :class:`EmbeddingProjection`,
the usual linear-probe head with a normalisation and a non-linearity (feature extraction, as in
torchvision's transfer-learning tutorial); the encoder itself is not part of the model.

With ``train.image_encoder: finetune`` the image branch is the pretrained encoder itself
(``training.encoders.Encoder``: the pooled features, e.g. 1280 for EfficientNet-Lite0), loaded
from its weights and trained end to end on pixels normalised as its weights expect, at a lower
learning rate than the heads (``training.optim.param_groups``) and optionally frozen for the first
epochs (:meth:`ListingClassifier.set_encoder_trainable`): fine-tuning as in Kornblith et al. 2019
("Do Better ImageNet Models Transfer Better?") and torchvision's transfer-learning tutorial.
"""

from __future__ import annotations

import torch
from torch import nn

from common.params import TrainParams
from training.backbones import build_backbone
from training.encoders import BagEncoder, FieldEncoder


class EmbeddingProjection(nn.Module):
    """The frozen-mode image branch: ``GELU(Linear(Dropout(LayerNorm(e))))``.

    Args:
        in_dim: the embedding width (the encoder's pooled features, e.g. 1280 for EfficientNet-Lite0).
        out_dim: the branch's output width.
        dropout: dropout on the normalised embedding.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim),
                                 nn.GELU())
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: float ``(N, in_dim)``. Returns: float ``(N, out_dim)``."""
        return self.net(x)


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
        image_encoder: ``"scratch"`` (the backbone reads pixels), ``"frozen"`` (the image branch
            is an :class:`EmbeddingProjection` of precomputed embeddings) or ``"finetune"`` (the
            image branch is ``pretrained_encoder``, trained from its weights).
        image_proj_dim: width of the frozen image branch.
        embedding_dim: width of the precomputed embeddings (frozen only).
        pretrained_encoder: finetune only: the ``training.encoders.Encoder`` (pixels ``(N, 3, S,
            S)`` -> ``(N, dim)``) that becomes the image branch, made trainable here.
        dropout: dropout on the fused features (and in the frozen image branch).
        branch_loss_weight: weight of auxiliary leaf heads, one per branch of a fused model,
            trained on that branch's features alone (deep supervision, so that a strong branch
            cannot leave the others untrained; Wang et al. 2020, "What Makes Training
            Multi-modal Classification Networks Hard?"). 0: none. Unused at inference.
    """

    def __init__(self, level_sizes: list[int] | int, ancestors: torch.Tensor | None = None, *,
                 level_weights: list[float] | None, backbone: str, branches: str, structured: bool,
                 text_buckets: int, text_dim: int, field_buckets: int, field_dim: int, weights: str,
                 dropout: float, branch_loss_weight: float, image_encoder: str, image_proj_dim: int,
                 embedding_dim: int | None = None, pretrained_encoder: nn.Module | None = None) -> None:
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
        if image_encoder not in ("scratch", "frozen", "finetune"):
            raise ValueError(f"image_encoder must be scratch, frozen or finetune, got {image_encoder!r}")
        self.image_mode = image_encoder
        self.encoder_trainable = True
        if branches in ("fused", "image") and image_encoder == "finetune":
            if pretrained_encoder is None:
                raise ValueError("image_encoder finetune needs the pretrained encoder (pretrained_encoder)")
            self.image_encoder = pretrained_encoder.requires_grad_(True)
            self.weights_source = pretrained_encoder.weights.source
            width += int(pretrained_encoder.dim)
        elif branches in ("fused", "image") and image_encoder == "frozen":
            if not embedding_dim:
                raise ValueError("image_encoder frozen needs the embedding width (embedding_dim)")
            self.image_encoder = EmbeddingProjection(embedding_dim, image_proj_dim, dropout)
            width += image_proj_dim
        elif branches in ("fused", "image"):
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
    def finetunes_encoder(self) -> bool:
        """Whether the image branch is a pretrained encoder trained end to end (finetune)."""
        return self.image_mode == "finetune" and self.image_encoder is not None

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Finetune: unfreezes or freezes the encoder (its gradients, and its BatchNorm statistics,
        which a frozen encoder keeps in eval mode whatever :meth:`train` is called with).
        Parameters without a gradient are skipped by AdamW, so the optimizer need not change."""
        if not self.finetunes_encoder:
            return
        self.encoder_trainable = trainable
        self.image_encoder.requires_grad_(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> ListingClassifier:
        """``nn.Module.train``, keeping a frozen fine-tuning encoder in eval mode."""
        super().train(mode)
        if self.finetunes_encoder and not self.encoder_trainable:
            self.image_encoder.eval()
        return self

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
            images: float (N, 3, S, S) normalised (see ``training.presets``), or in frozen mode
                float (N, E) embeddings; ignored without an image branch.
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


CLASSIFIER_PARAMS = ("backbone", "branches", "structured", "text_buckets", "text_dim", "field_buckets",
                     "field_dim", "weights", "dropout", "branch_loss_weight", "image_encoder",
                     "image_proj_dim")
"""The ``train`` fields :func:`build_model` passes to :class:`ListingClassifier` as they are, by
name (``level_weights``, also one, is resolved to the tree's depth first)."""


def build_model(labels: list[str], train_params: TrainParams, embedding_dim: int | None = None,
                pretrained_encoder: nn.Module | None = None) -> tuple[ListingClassifier, bool]:
    """The classifier configured by the ``train`` params group.

    Args:
        labels: the leaf category paths (class order), e.g. sorted training categories.
        train_params: the ``train`` params group.
        embedding_dim: ``image_encoder: frozen``: the encoder's embedding width.
        pretrained_encoder: ``image_encoder: finetune``: the ``training.encoders.Encoder`` that
            becomes the image branch (:func:`training.encoders.load_encoder` for training,
            ``build_encoder`` for a checkpoint that holds its weights).

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
    model = ListingClassifier(sizes, ancestors, level_weights=weights, embedding_dim=embedding_dim,
                              pretrained_encoder=pretrained_encoder,
                              **{name: getattr(train_params, name) for name in CLASSIFIER_PARAMS})
    return model, model.pretrained
