"""Serving: the MLflow pyfunc model, and the one prediction function evaluation also uses.

:func:`predict_paths` is the single code path from (title, image) to category: the evaluate stage
calls it on the cached golden arrays (decoded by :func:`training.presets.load_image` in prepare),
and :class:`ListingClassifierModel` calls it on image files, decoded by the same function at the
checkpoint's image size. Only ``training/`` and ``common/`` need to ship as MLflow ``code_paths``.

Example:
    >>> loaded = load_checkpoint("models/model.pt")                       # doctest: +SKIP
    >>> listings = pd.DataFrame({"title": ["Nike Men Blue T-shirt"], "price": [799.0]})  # doctest: +SKIP
    >>> paths, probs = predict_paths(loaded, listings, ["shirt.jpg"])  # doctest: +SKIP

Probabilities are calibrated: the checkpoint's temperature (``training.calibration``, fitted on
the validation split after training) divides the combined leaf scores, and the served output's
``auto`` says whether the top probability clears the version's stored auto-categorisation
threshold.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow.exceptions
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from common.catalog import split_path
from common.params import TrainParams
from training.model import ListingClassifier, build_model
from training.presets import EvalPreset, load_image
from training.text import encode_listings

IMAGE_ROOT_ENV = "LCP_SERVING_IMAGE_ROOT"
"""Environment variable: when set, the served model reads ``image_path`` only inside this folder
(relative paths from it); see :func:`image_column`."""

INPUT_COLUMNS = ("listing_id", "title", "description", "brand", "price", "currency", "attributes",
                 "image_path", "image_bytes")
"""Columns the served model reads; only ``title`` and one of ``image_path`` / ``image_bytes``
are required (the image only for a model with an image branch). ``listing_id`` is only named in
errors."""

DEFAULT_BATCH_SIZE = 256
"""Rows per forward pass when a request gives no ``batch_size`` param (the signature's default)."""


class ListingImageError(ValueError):
    """A listing's image cannot be used (unreadable, undecodable, missing, outside the root).

    Attributes:
        row: the listing's 0-based row in its request (None when unknown).
        reason: the message without the row prefix.
    """

    def __init__(self, reason: str, row: int | None = None) -> None:
        self.row, self.reason = row, reason
        super().__init__(reason if row is None else f"row {row}: {reason}")


class InvalidListingError(mlflow.exceptions.MlflowException, ValueError):
    """A bad listing in a request to the served model: MLflow's ``INVALID_PARAMETER_VALUE``
    (the scoring server answers HTTP 400 with this message), and a ``ValueError`` for callers in
    Python.

    Attributes:
        row: 0-based row of the listing in the request; listing_id: its ``listing_id`` or None;
        reason: what is wrong with it.
    """

    def __init__(self, reason: str, row: int | None = None, listing_id: str | None = None) -> None:
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        self.row, self.listing_id, self.reason = row, listing_id, reason
        where = "" if row is None else f"row {row}" + ("" if listing_id is None else f" (listing_id {listing_id})") + ": "
        super().__init__(f"{where}{reason}", error_code=INVALID_PARAMETER_VALUE)


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
    listings["title"] = ["" if not isinstance(t, str) else t for t in listings["title"]]
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


DECODE_WORKERS = min(4, os.cpu_count() or 1)
"""Threads decoding image files (Pillow releases the GIL while it decodes and resizes)."""


def _decoded_batches(images: Sequence[str | Path | bytes], size: int, batch_size: int):
    """Yields the decoded uint8 ``(B, size, size, 3)`` batches of ``images`` in order, decoding
    the next batch in a thread pool while the caller runs the model on the current one (one batch
    ahead: memory stays at two batches).

    Raises:
        ListingImageError: of the first unreadable image in row order, from ``next``.
    """
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


def model_signature():
    """The served model's MLflow signature: listings in, category path + probability out.

    ``title`` is required; the other listing fields are optional columns, and an image comes as
    ``image_path`` (a file the server can read) or ``image_bytes`` (the encoded file). Out:
    ``category_path``, ``leaf``, the calibrated ``probability`` and ``auto`` (optional: a
    version without a stored threshold has no such column). Params (inference time, e.g. a
    request's ``"params": {"batch_size": 64}``): ``batch_size`` (long, default
    :data:`DEFAULT_BATCH_SIZE`), the rows per forward pass.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    optional = [ColSpec("string", "listing_id", required=False),
                ColSpec("string", "description", required=False),
                ColSpec("string", "brand", required=False),
                ColSpec("double", "price", required=False),
                ColSpec("string", "currency", required=False),
                ColSpec("string", "attributes", required=False),
                ColSpec("string", "image_path", required=False),
                ColSpec("binary", "image_bytes", required=False)]
    return ModelSignature(
        inputs=Schema([ColSpec("string", "title"), *optional]),
        outputs=Schema([ColSpec("string", "category_path"), ColSpec("string", "leaf"),
                        ColSpec("double", "probability"),
                        ColSpec("boolean", "auto", required=False)]),
        params=ParamSchema([ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)]),
    )


class ListingClassifierModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper of the checkpoint (artifact ``"checkpoint"``).

    Input: a DataFrame of listings: ``title`` (str) and an image as ``image_path`` (str, a
    file; with ``$LCP_SERVING_IMAGE_ROOT`` set, relative to that folder and never outside it) or
    ``image_bytes`` (bytes, the encoded JPEG/PNG/WebP); optional ``description``,
    ``brand``, ``price`` (float), ``currency``, ``attributes`` (JSON object as str).
    Output: a DataFrame with ``category_path`` (str), ``leaf`` (str, the last level),
    ``probability`` (float, of the predicted path, calibrated by the checkpoint's temperature) and
    ``auto`` (bool: ``probability`` >= the version's stored threshold, so the listing may be
    categorised without a person; all False when no threshold reached the target precision).
    A checkpoint written before calibration (no ``"calibration"`` entry) serves uncalibrated
    probabilities and no ``auto`` column, as versions registered before it did.

    Params: ``batch_size`` (int >= 1, rows per forward pass; default :data:`DEFAULT_BATCH_SIZE`).
    A version logged before the signature had a params schema gets no params from MLflow: the
    default then.

    Raises (from ``predict``):
        InvalidListingError: (MLflow ``INVALID_PARAMETER_VALUE``: HTTP 400 from
            ``mlflow models serve``) when ``title`` is missing, ``batch_size`` is not a positive
            integer, or a row's image is missing, unreadable or outside the image root; the
            message names the row (0-based in the request) and its ``listing_id`` when given.
    """

    def __init__(self) -> None:
        self.loaded: LoadedClassifier | None = None

    def load_context(self, context) -> None:
        self.loaded = load_checkpoint(context.artifacts["checkpoint"], device="cpu")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if self.loaded is None:
            self.load_context(context)
        if "title" not in model_input.columns:
            raise InvalidListingError("model input lacks column(s) ['title']")
        batch_size = (params or {}).get("batch_size", DEFAULT_BATCH_SIZE)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise InvalidListingError(f"params batch_size must be a positive integer, got {batch_size!r}")
        ids = (model_input["listing_id"].tolist() if "listing_id" in model_input.columns
               else [None] * len(model_input))
        try:
            images = None
            if self.loaded.model.image_encoder is not None:
                images = image_column(model_input, os.environ.get(IMAGE_ROOT_ENV) or None)
            paths, probs = predict_paths(self.loaded, model_input, images, int(batch_size))
        except ListingImageError as exc:
            listing_id = None if exc.row is None or ids[exc.row] is None else str(ids[exc.row])
            raise InvalidListingError(exc.reason, exc.row, listing_id) from exc
        probability = probs.max(axis=1) if len(paths) else np.zeros(0, dtype=np.float32)
        out = pd.DataFrame({
            "category_path": paths,
            "leaf": [split_path(p)[-1] for p in paths],
            "probability": probability.astype(float),
        })
        if self.loaded.calibration is not None:
            threshold = self.loaded.threshold  # compared in float32, as it was chosen
            out["auto"] = (np.zeros(len(paths), dtype=bool) if threshold is None
                           else probability >= np.float32(threshold))
        return out


def model_input(listings: pd.DataFrame) -> pd.DataFrame:
    """The served model's input from listings: the :data:`INPUT_COLUMNS` they have.

    Use it wherever stored listings (e.g. the golden set with an ``image_path`` column) are
    sent to the served model, so it reads the same fields the evaluate stage did.
    """
    frame = listings[[c for c in INPUT_COLUMNS if c in listings.columns]].reset_index(drop=True)
    # An optional column without any value is left out: MLflow's schema check cannot type an
    # all-null column (after JSON it is float64). Missing text is "", which the encoders read as
    # no value, exactly like None.
    keep = [c for c in frame.columns if c == "title" or frame[c].notna().any()]
    frame = frame[keep].copy()
    for column in ("title", "description", "brand", "currency", "attributes", "image_path"):
        if column in frame.columns:
            frame[column] = [v if isinstance(v, str) else "" for v in frame[column]]
    if "price" in frame.columns:
        frame["price"] = pd.to_numeric(frame["price"], errors="coerce").astype("float64")
    return frame


def image_column(frame: pd.DataFrame, root: str | Path | None = None) -> list[str | bytes]:
    """Each row's image: ``image_bytes`` when set, else ``image_path``.

    Args:
        frame: the model input.
        root: a folder that confines ``image_path`` (a served model's clients then cannot make
            the server open its other files): relative paths are read from it, and a path that
            leaves it (``..``, or absolute elsewhere; checked on the normalised path, so links
            placed inside the folder by its operator are followed) is refused. None: any path.

    Returns:
        One encoded image (bytes) or file path (str) per row.

    Raises:
        ListingImageError: (a ValueError, with the row) when a row has neither, or its
            ``image_path`` leaves ``root``.
    """
    paths = frame["image_path"].tolist() if "image_path" in frame.columns else [None] * len(frame)
    blobs = frame["image_bytes"].tolist() if "image_bytes" in frame.columns else [None] * len(frame)
    base = os.path.abspath(root) if root else None
    out: list[str | bytes] = []
    for i, (path, blob) in enumerate(zip(paths, blobs, strict=True)):
        if isinstance(blob, bytes | bytearray) and blob:
            out.append(bytes(blob))
        elif isinstance(path, str) and path:
            if base is not None:
                inside = os.path.normpath(os.path.join(base, path))
                if os.path.commonpath([base, inside]) != base:
                    raise ListingImageError(f"image_path {path!r} is outside the image root "
                                            f"${IMAGE_ROOT_ENV}", i)
                path = inside
            out.append(path)
        else:
            raise ListingImageError("has neither image_path nor image_bytes", i)
    return out
