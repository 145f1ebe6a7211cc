"""The image branch's backbone: a torchvision classification model with its head removed.

:func:`build_backbone` is what :class:`training.model.ListingClassifier` builds its image encoder
with: any ``torchvision.models`` classification model, its pretrained weights taken from the torch
hub cache (never downloaded) or from a state-dict file (``train.weights``), and the last ``Linear``
of its head replaced by ``Identity`` so that it maps ``(N, 3, S, S)`` to ``(N, feature_dim)``.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn

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
