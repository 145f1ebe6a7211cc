"""The listing classifier: a torchvision image backbone and a hashed-n-gram title encoder, fused.

::

    image (N, 3, S, S) -> backbone (head = Identity) -> (N, F_img) --+
                                                                     +-> concat -> dropout -> linear -> (N, C)
    title ids/offsets  -> EmbeddingBag(mean) -> MLP -> (N, text_dim) -+

With ``branches="image"`` or ``"text"`` only that branch is built and the other input is ignored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from common.params import TrainParams

log = logging.getLogger(__name__)

_HEAD_ATTRS = ("fc", "classifier", "head", "heads")


def _replace_head(backbone: nn.Module) -> int:
    """Replaces the classification head of a torchvision model by ``Identity``.

    Returns:
        The dimension of the features the head used to read.

    Raises:
        ValueError: when the model has none of the usual head attributes or no Linear in it.
    """
    for attr in _HEAD_ATTRS:
        head = getattr(backbone, attr, None)
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if not linears:
                continue
            # the first Linear of the head reads the pooled features
            dim = linears[0].in_features
            setattr(backbone, attr, nn.Identity())
            return dim
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


def build_backbone(name: str, weights: str = "auto") -> tuple[nn.Module, int, bool]:
    """A torchvision classification model with its head removed.

    Args:
        name: any name of ``torchvision.models.list_models(module=torchvision.models)``.
        weights: ``"auto"`` (pretrained when cached locally, else random init), ``"none"``, or
            the path of a state dict (of the full torchvision model, or of the model without head).

    Returns:
        ``(backbone, feature_dim, pretrained)``.

    Raises:
        FileNotFoundError: when ``weights`` is a path that does not exist.
    """
    pretrained = False
    if weights == "auto":
        enum = _cached_weights(name)
        backbone = torchvision.models.get_model(name, weights=enum)
        pretrained = enum is not None
        if not pretrained:
            log.info("no cached pretrained weights for %s: training from scratch", name)
    elif weights in ("none", "", "scratch"):
        backbone = torchvision.models.get_model(name, weights=None)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"train.weights: no such file {path}")
        backbone = torchvision.models.get_model(name, weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        missing, _ = backbone.load_state_dict(state, strict=False)
        if len(missing) == len(backbone.state_dict()):
            raise ValueError(f"train.weights {path}: no key matches a {name} model")
        pretrained = True
    dim = _replace_head(backbone)
    return backbone, dim, pretrained


class TextEncoder(nn.Module):
    """Mean of hashed n-gram embeddings, then a small MLP.

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


class ListingClassifier(nn.Module):
    """Leaf-category classifier of a listing from its image and title.

    Args:
        num_classes: number of leaf categories (output logits).
        backbone: torchvision model name (image branch), unused when ``branches="text"``.
        branches: ``"fused"``, ``"image"`` or ``"text"``.
        text_buckets: hash buckets of the title encoder.
        text_dim: width of the title encoder.
        weights: see :func:`build_backbone`.
        dropout: dropout before the final linear layer.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet18", branches: str = "fused",
                 text_buckets: int = 262_144, text_dim: int = 128, weights: str = "none",
                 dropout: float = 0.2) -> None:
        super().__init__()
        if branches not in ("fused", "image", "text"):
            raise ValueError(f"branches must be fused, image or text, got {branches!r}")
        self.branches = branches
        self.pretrained = False
        width = 0
        self.image_encoder: nn.Module | None = None
        self.text_encoder: TextEncoder | None = None
        if branches in ("fused", "image"):
            self.image_encoder, dim, self.pretrained = build_backbone(backbone, weights)
            width += dim
        if branches in ("fused", "text"):
            self.text_encoder = TextEncoder(text_buckets, text_dim)
            width += text_dim
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor | None, ids: torch.Tensor | None,
                offsets: torch.Tensor | None) -> torch.Tensor:
        """Logits.

        Args:
            images: float (N, 3, S, S) normalised (see ``training.presets``); ignored by "text".
            ids: int64 flat bucket ids of the titles; ignored by "image".
            offsets: int64 (N,) start of each title in ``ids``; ignored by "image".

        Returns:
            float (N, num_classes) logits.
        """
        feats = []
        if self.image_encoder is not None:
            feats.append(self.image_encoder(images).flatten(1))
        if self.text_encoder is not None:
            feats.append(self.text_encoder(ids, offsets).to(feats[0].dtype if feats else torch.float32))
        x = torch.cat(feats, dim=1) if len(feats) > 1 else feats[0]
        return self.classifier(self.dropout(x))


def build_model(num_classes: int, train_params: TrainParams) -> tuple[ListingClassifier, bool]:
    """The classifier configured by the ``train`` params group.

    Returns:
        ``(model, pretrained)``: whether the image backbone started from pretrained weights.
    """
    model = ListingClassifier(
        num_classes,
        backbone=train_params.backbone,
        branches=train_params.branches,
        text_buckets=train_params.text_buckets,
        text_dim=train_params.text_dim,
        weights=train_params.weights,
    )
    return model, model.pretrained
