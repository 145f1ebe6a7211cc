"""Serving: the MLflow pyfunc model, and the one prediction function evaluation also uses.

:func:`predict_paths` is the single code path from (title, image) to category: the evaluate stage
calls it on the cached golden arrays (decoded by :func:`training.presets.load_image` in prepare),
and :class:`ListingClassifierModel` calls it on image files, decoded by the same function at the
checkpoint's image size. Only ``training/`` and ``common/`` need to ship as MLflow ``code_paths``.

Example:
    >>> loaded = load_checkpoint("models/model.pt")                       # doctest: +SKIP
    >>> paths, probs = predict_paths(loaded, ["Nike Men Blue T-shirt"], ["shirt.jpg"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from common.catalog import split_path
from common.params import TrainParams
from training.model import ListingClassifier
from training.presets import EvalPreset, load_image
from training.text import encode_titles


@dataclass
class LoadedClassifier:
    """A checkpoint ready for inference (eval mode)."""

    model: ListingClassifier
    labels: list[str]
    image_size: int
    text_buckets: int
    device: torch.device
    pretrained: bool = False


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedClassifier:
    """Loads ``models/model.pt`` (see ``training.train``) for inference.

    The backbone is built without pretrained weights: the checkpoint's state dict holds them all.

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    train_params = TrainParams.model_validate({**ckpt["params"]["train"], "weights": "none"})
    model = ListingClassifier(
        len(ckpt["labels"]), backbone=train_params.backbone, branches=train_params.branches,
        text_buckets=train_params.text_buckets, text_dim=train_params.text_dim, weights="none")
    model.load_state_dict(ckpt["model"])
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last).eval()
    return LoadedClassifier(model, list(ckpt["labels"]), int(ckpt["image_size"]),
                            train_params.text_buckets, device, bool(ckpt.get("pretrained", False)))


def predict_paths(
    checkpoint: str | Path | LoadedClassifier,
    titles: Sequence[str],
    images: np.ndarray | Sequence[str | Path],
    batch_size: int = 256,
) -> tuple[list[str], np.ndarray]:
    """Predicts the category path of listings.

    Args:
        checkpoint: a checkpoint file or a :class:`LoadedClassifier`.
        titles: N titles.
        images: uint8 array ``(N, S, S, 3)`` already decoded by ``load_image`` at the
            checkpoint's image size, or N image file paths (decoded here the same way).
        batch_size: rows per forward pass.

    Returns:
        ``(paths, probs)``: the N top-1 category paths, and float32 ``(N, C)`` class
        probabilities (softmax) over ``loaded.labels``.

    Raises:
        ValueError: when the lengths differ or an array has another image size.
    """
    loaded = checkpoint if isinstance(checkpoint, LoadedClassifier) else load_checkpoint(checkpoint)
    titles = ["" if not isinstance(t, str) else t for t in titles]
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles but {len(images)} images")
    is_array = isinstance(images, np.ndarray)
    if is_array and images.shape[1:] != (loaded.image_size, loaded.image_size, 3):
        raise ValueError(f"images of shape {images.shape[1:]}, the model reads "
                         f"({loaded.image_size}, {loaded.image_size}, 3)")
    preset = EvalPreset()
    model = loaded.model
    needs_images = model.image_encoder is not None
    probs = np.zeros((len(titles), len(loaded.labels)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(titles), batch_size):
            stop = min(start + batch_size, len(titles))
            x = None
            if needs_images:
                if is_array:
                    batch = np.ascontiguousarray(images[start:stop])
                else:
                    batch = np.stack([load_image(p, loaded.image_size) for p in images[start:stop]])
                x = preset(batch).to(loaded.device)
            ids, offsets = encode_titles(titles[start:stop], loaded.text_buckets)
            logits = model(x, ids.to(loaded.device), offsets.to(loaded.device)).float()
            probs[start:stop] = torch.softmax(logits, dim=1).cpu().numpy()
    top = probs.argmax(axis=1) if len(titles) else np.zeros(0, dtype=int)
    return [loaded.labels[i] for i in top], probs


class ListingClassifierModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper of the checkpoint (artifact ``"checkpoint"``).

    Input: a DataFrame with ``title`` (str) and ``image_path`` (str, an image file).
    Output: a DataFrame with ``category_path`` (str), ``leaf`` (str, the last level) and
    ``probability`` (float, of the predicted path).
    """

    def __init__(self) -> None:
        self.loaded: LoadedClassifier | None = None

    def load_context(self, context) -> None:
        self.loaded = load_checkpoint(context.artifacts["checkpoint"], device="cpu")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if self.loaded is None:
            self.load_context(context)
        missing = {"title", "image_path"} - set(model_input.columns)
        if missing:
            raise ValueError(f"model input lacks column(s) {sorted(missing)}")
        batch_size = int((params or {}).get("batch_size", 256))
        paths, probs = predict_paths(self.loaded, model_input["title"].tolist(),
                                     [str(p) for p in model_input["image_path"]], batch_size)
        return pd.DataFrame({
            "category_path": paths,
            "leaf": [split_path(p)[-1] for p in paths],
            "probability": probs.max(axis=1).astype(float) if len(paths) else np.zeros(0),
        })
