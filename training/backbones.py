"""The image branch's backbone: a torchvision classification model with its head removed.

:func:`build_backbone` is what :class:`training.model.ListingClassifier` builds its image encoder
with: any ``torchvision.models`` classification model, its pretrained weights taken from the torch
hub cache (never downloaded) or from a state-dict file (``train.weights``), and the last ``Linear``
of its head replaced by ``Identity`` so that it maps ``(N, 3, S, S)`` to ``(N, feature_dim)``.
A file's weights are loaded strictly (``training.encoders.load_state_strict``): every tensor of the
backbone, each with its shape; only the removed head's tensors may go unused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from training.encoders import WeightsMismatchError, load_state_strict, read_state_dict, remove_head

log = logging.getLogger(__name__)


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
        ValueError: when the file at ``weights`` is not a PyTorch state dict.
        training.encoders.WeightsMismatchError: (a ``ValueError``) when none of the file's keys
            belongs to a ``name`` model, or any tensor of the backbone is missing from it, has no
            place in the backbone, or has another shape: the message counts each kind.
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
        dim, head = remove_head(backbone)
        try:
            state, _ = read_state_dict(path)
        except ValueError as err:
            raise ValueError(f"train.weights {path}: {err}") from err
        if not set(state) & set(backbone.state_dict()):
            raise WeightsMismatchError(f"train.weights {path}: no key matches a {name} model")
        try:
            load_state_strict(backbone, state, head, f"file {path}")
        except WeightsMismatchError as err:
            first = ([f"size mismatch for {k}: {a} in the file, {b} in the model" for k, a, b in err.mismatched]
                     + [f"missing {k}" for k in err.missing] + [f"unexpected {k}" for k in err.unexpected])
            raise WeightsMismatchError(
                f"train.weights {path}: does not fit a {name} model ({len(first)} errors), e.g. {first[0]} "
                f"({err})", err.missing, err.unexpected, err.mismatched) from err
        return backbone, dim, f"file {path.resolve()}"
    dim, _ = remove_head(backbone)
    return backbone, dim, source
