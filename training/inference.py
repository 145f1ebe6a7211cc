"""Inference on a checkpoint: the one prediction function that evaluation and serving share.

:func:`predict_paths` is the single code path from (title, image) to category: the evaluate stage
calls it on the cached golden arrays (decoded by :func:`training.presets.load_image` in prepare),
and the served model (``training.serving.ListingClassifierModel``) on image files or bytes,
decoded by the same function at the checkpoint's image size (:func:`decode_image`, in a thread
pool one batch ahead of the model). Nothing here imports MLflow.

Example:
    >>> loaded = load_checkpoint("models/model.pt")                       # doctest: +SKIP
    >>> listings = pd.DataFrame({"title": ["Nike Men Blue T-shirt"], "price": [799.0]})  # doctest: +SKIP
    >>> paths, probs = predict_paths(loaded, listings, ["shirt.jpg"])  # doctest: +SKIP

Probabilities are calibrated: the checkpoint's temperature (``training.calibration``, fitted on
the validation split after training) divides the combined leaf scores.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.params import TrainParams
from training.model import ListingClassifier, build_model
from training.presets import EvalPreset, load_image
from training.text import encode_listings


class ListingImageError(ValueError):
    """A listing's image cannot be used (unreadable, undecodable, missing, outside the root).

    Attributes:
        row: the listing's 0-based row in its request (None when unknown).
        reason: the message without the row prefix.
    """

    def __init__(self, reason: str, row: int | None = None) -> None:
        self.row, self.reason = row, reason
        super().__init__(reason if row is None else f"row {row}: {reason}")


@dataclass
class LoadedClassifier:
    """A checkpoint ready for inference (eval mode)."""

    model: ListingClassifier
    labels: list[str]
    image_size: int
    train_params: TrainParams
    device: torch.device
    pretrained: bool = False
    calibration: dict | None = None
    """The checkpoint's ``"calibration"`` entry (``training.calibration.calibrate``), None for a
    checkpoint written before calibration existed (then ``T = 1`` and no threshold)."""

    @property
    def temperature(self) -> float:
        """The temperature dividing the leaf scores (1.0 without calibration)."""
        return float((self.calibration or {}).get("temperature") or 1.0)

    @property
    def threshold(self) -> float | None:
        """The auto-categorisation threshold on the calibrated top probability; None when none
        is stored or none reached the target precision (see :attr:`calibration`)."""
        t = (self.calibration or {}).get("threshold")
        return None if t is None else float(t)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedClassifier:
    """Loads ``models/model.pt`` (see ``training.train``) for inference.

    The backbone is built without pretrained weights: the checkpoint's state dict holds them all.
    The weights served are the checkpoint's ``model`` entry (the best epoch on validation).

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    train_params = TrainParams.model_validate({**ckpt["params"]["train"], "weights": "none"})
    model, _ = build_model(list(ckpt["labels"]), train_params)
    model.load_state_dict(ckpt["model"])
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last).eval()
    return LoadedClassifier(model, list(ckpt["labels"]), int(ckpt["image_size"]), train_params,
                            device, bool(ckpt.get("pretrained", False)), ckpt.get("calibration"))


def decode_image(image: str | Path | bytes, size: int, row: int | None = None) -> np.ndarray:
    """:func:`training.presets.load_image` of a file path or of encoded image bytes.

    Args:
        image: an image file path, or the encoded file's bytes.
        size: side of the output in pixels.
        row: the listing's row in its request, named in the error (so that one bad listing in
            a large request can be found).

    Returns:
        uint8 array ``(size, size, 3)``.

    Raises:
        ListingImageError: (a ValueError) when the image cannot be read (a missing file, an
            empty file, not an image, corrupt, a decompression bomb, an unsupported mode); the
            message names the image, the row and the loader's reason (e.g. ``image_empty``).
    """
    is_bytes = isinstance(image, bytes | bytearray | memoryview)
    try:
        return load_image(io.BytesIO(bytes(image)) if is_bytes else image, size)
    # the loader's common.images.ImageReadError is a ValueError (its str is the reason code)
    except (OSError, ValueError) as exc:
        what = f"image_bytes of {len(image)} bytes" if is_bytes else f"image_path {str(image)!r}"
        raise ListingImageError(f"cannot read its image ({what}): {exc}", row) from exc


def predict_paths(
    checkpoint: str | Path | LoadedClassifier,
    listings: pd.DataFrame | Sequence[str],
    images: np.ndarray | Sequence[str | Path | bytes] | None,
    batch_size: int = 256,
) -> tuple[list[str], np.ndarray]:
    """Predicts the category path of listings, with calibrated probabilities.

    Args:
        checkpoint, listings, images, batch_size: as :func:`leaf_log_probs`.

    Returns:
        ``(paths, probs)``: the N top-1 leaf category paths (each with its own ancestors), and
        float32 ``(N, C)`` leaf probabilities over ``loaded.labels``, combined from the level
        heads (``ListingClassifier.leaf_log_probs``) and calibrated by the checkpoint's
        temperature (the top leaf does not depend on it).

    Raises:
        ValueError: as :func:`leaf_log_probs`.
    """
    loaded = checkpoint if isinstance(checkpoint, LoadedClassifier) else load_checkpoint(checkpoint)
    probs = np.exp(leaf_log_probs(loaded, listings, images, batch_size))
    top = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    return [loaded.labels[i] for i in top], probs


def leaf_log_probs(
    checkpoint: str | Path | LoadedClassifier,
    listings: pd.DataFrame | Sequence[str],
    images: np.ndarray | Sequence[str | Path | bytes] | None,
    batch_size: int = 256,
    temperature: float | None = None,
) -> np.ndarray:
    """Leaf log-probabilities of listings: the prediction path :func:`predict_paths` serves.

    Args:
        checkpoint: a checkpoint file or a :class:`LoadedClassifier`.
        listings: N listings (``title`` and optionally ``description``, ``brand``, ``price``,
            ``currency``, ``attributes``), or N titles.
        images: uint8 array ``(N, S, S, 3)`` already decoded by ``load_image`` at the
            checkpoint's image size, or N image file paths or encoded image bytes (decoded here
            the same way); may be None for a text-only model.
        batch_size: rows per forward pass.
        temperature: ``T`` dividing the combined leaf scores (``training.calibration``); None:
            the checkpoint's (1.0 without calibration); 1.0: uncalibrated.

    Returns:
        float32 ``(N, C)`` leaf log-probabilities over ``loaded.labels``: the level heads
        combined by ``ListingClassifier.leaf_log_probs``, then ``log_softmax(. / T)``.

    Raises:
        ValueError: when the lengths differ, an array has another image size, images are
            missing for a model with an image branch, or an image cannot be read (missing file,
            not an image, corrupt, decompression bomb); the message names the row (0-based).
    """
    loaded = checkpoint if isinstance(checkpoint, LoadedClassifier) else load_checkpoint(checkpoint)
    if not isinstance(listings, pd.DataFrame):
        listings = pd.DataFrame({"title": list(listings)})
    listings = listings.reset_index(drop=True)
    titles = listings["title"] if "title" in listings.columns else [None] * len(listings)
    listings["title"] = ["" if not isinstance(t, str) else t for t in titles]  # none: an image model
    model = loaded.model
    needs_images = model.image_encoder is not None
    if needs_images and images is None:
        raise ValueError("this model has an image branch: images are required")
    if images is not None and len(listings) != len(images):
        raise ValueError(f"{len(listings)} listings but {len(images)} images")
    is_array = isinstance(images, np.ndarray)
    if is_array and images.shape[1:] != (loaded.image_size, loaded.image_size, 3):
        raise ValueError(f"images of shape {images.shape[1:]}, the model reads "
                         f"({loaded.image_size}, {loaded.image_size}, 3)")
    preset = EvalPreset()
    n = len(listings)
    t = loaded.temperature if temperature is None else float(temperature)
    log_probs = np.zeros((n, len(loaded.labels)), dtype=np.float32)
    decoded = (_decoded_batches(images, loaded.image_size, batch_size)
               if needs_images and not is_array else None)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = None
            if needs_images:
                batch = np.ascontiguousarray(images[start:stop]) if is_array else next(decoded)
                x = preset(batch).to(loaded.device)
            inputs = encode_listings(listings.iloc[start:stop], loaded.train_params)
            level_logits = model(x, *(t.to(loaded.device) for t in inputs))
            leaf = model.leaf_log_probs(level_logits)
            if t != 1.0:  # softmax(log p / T) == softmax(score / T): the leaf scores, scaled
                leaf = torch.log_softmax(leaf / t, dim=1)
            log_probs[start:stop] = leaf.cpu().numpy()
    return log_probs


DECODE_WORKERS = int(os.environ.get("LCP_DECODE_WORKERS", min(4, os.cpu_count() or 1)))
"""Threads decoding image files one batch ahead of the model (Pillow releases the GIL while it
decodes and resizes); ``$LCP_DECODE_WORKERS`` sets it. 0: each batch is decoded in the calling
thread before its forward pass, nothing ahead (the path before the decode pool; the baseline of
``benchmarks/inference_throughput.py``)."""


def _decoded_batches(images: Sequence[str | Path | bytes], size: int, batch_size: int):
    """Yields the decoded uint8 ``(B, size, size, 3)`` batches of ``images`` in order, decoding
    the next batch in a thread pool while the caller runs the model on the current one (one batch
    ahead: memory stays at two batches).

    Raises:
        ListingImageError: of the first unreadable image in row order, from ``next``.
    """
    if DECODE_WORKERS < 1:  # serial: decode a batch, then the caller runs the model on it
        for start in range(0, len(images), batch_size):
            yield np.stack([decode_image(p, size, start + j)
                            for j, p in enumerate(images[start:start + batch_size])])
        return
    pool = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="decode")

    def submit(start: int) -> list:
        return [pool.submit(decode_image, p, size, start + j)
                for j, p in enumerate(images[start:start + batch_size])]

    try:
        pending = submit(0)
        for start in range(0, len(images), batch_size):
            current = pending
            pending = submit(start + batch_size) if start + batch_size < len(images) else []
            yield np.stack([f.result() for f in current])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def embed_paths(
    checkpoint: str | Path | LoadedClassifier,
    listings: pd.DataFrame | Sequence[str],
    images: np.ndarray | Sequence[str | Path | bytes] | None,
    batch_size: int = 256,
) -> np.ndarray:
    """The model's penultimate features of listings: what its level heads read.

    The fused image, text and structured features (after dropout, the identity in eval mode),
    captured at the input of the first level head during :func:`predict_paths`, so the
    listings go through exactly the prediction path. Listings the model never saw a category
    of land near the listings they resemble, which is what grouping them needs.

    Args:
        checkpoint, listings, images, batch_size: as :func:`predict_paths`.

    Returns:
        float32 ``(N, D)``, D the fused width (e.g. 512 + text_dim for resnet18, fused).

    Raises:
        ValueError: as :func:`predict_paths`.
    """
    loaded = checkpoint if isinstance(checkpoint, LoadedClassifier) else load_checkpoint(checkpoint)
    head = loaded.model.heads[0]
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].float().cpu()))
    try:
        predict_paths(loaded, listings, images, batch_size)
    finally:
        hook.remove()
    if not captured:
        return np.zeros((0, head.in_features), dtype=np.float32)
    return torch.cat(captured).numpy().astype(np.float32, copy=False)

