"""Serving: the MLflow pyfunc model, its signature and its input.

:class:`ListingClassifierModel` (what ``promotion.register`` logs, with ``training/`` and
``common/`` as its MLflow ``code_paths``) checks a request, reads each row's image
(:func:`image_column`: ``image_bytes`` or an ``image_path`` confined to
``$LCP_SERVING_IMAGE_ROOT``) and predicts through :func:`training.inference.predict_paths`, the
prediction path the evaluate stage uses too. :func:`model_input` turns stored listings into the
served model's input, :func:`model_signature` is the signature it is logged with.

The served output's probability is the calibrated one (``training.calibration``), and ``auto``
says whether it clears the version's stored auto-categorisation threshold.

A frozen-encoder model (``train.image_encoder: frozen``) is logged with its encoder's weights file
as the artifact ``encoder_weights`` next to the checkpoint, whose ``encoder`` entry holds the
``train.encoder`` spec: the served model embeds an image it has never seen with the encoder it
was trained on (``training.inference.image_embeddings``), and takes the embedding of an image the
platform's cache already holds from there (``$LCP_EMBEDDINGS_DIR``, see
``training.inference.default_embeddings_dir``).

A fine-tuned model (``train.image_encoder: finetune``) needs no weights file: its checkpoint holds
the fine-tuned encoder, and the served model decodes an image at the checkpoint's image size (the
encoder's input size) and normalises it with the encoder's mean and std, as in training
(``training.inference.checkpoint_normalization``).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow.exceptions
import mlflow.pyfunc
import numpy as np
import pandas as pd

from common.catalog import split_path
from training.inference import ListingImageError, LoadedClassifier, load_checkpoint, predict_paths

IMAGE_ROOT_ENV = "LCP_SERVING_IMAGE_ROOT"
"""Environment variable: when set, the served model reads ``image_path`` only inside this folder
(relative paths from it); see :func:`image_column`."""

INPUT_COLUMNS = ("listing_id", "title", "description", "brand", "price", "currency", "attributes",
                 "image_path", "image_bytes")
"""Columns the served model reads; only ``title`` (for a model with a text branch) and one of
``image_path`` / ``image_bytes`` (for a model with an image branch) are required. ``listing_id``
is only named in errors."""

DEFAULT_BATCH_SIZE = 256
"""Rows per forward pass when a request gives no ``batch_size`` param (the signature's default)."""


def listing_keys(listings: pd.DataFrame) -> list[str]:
    """A key per listing that changes when anything the served model reads of it changes: a
    64-bit hash (``pandas.util.hash_pandas_object``) of its id, its image's SHA-256 and its
    other input fields (:data:`INPUT_COLUMNS`, as text), 16 hex digits each. The gate's
    per-version caches of golden predictions are keyed by it (``promotion.registry``).

    Args:
        listings: N listings with ``listing_id`` and ``image_sha256`` (an input column it lacks
            counts as missing).

    Returns:
        N keys, in row order.
    """
    fields = {"listing_id": listings["listing_id"], "image_sha256": listings["image_sha256"],
              **{c: listings[c] if c in listings.columns else None for c in INPUT_COLUMNS if c != "image_path"}}
    frame = pd.DataFrame(fields, index=listings.index).astype(str)
    return [f"{h:016x}" for h in pd.util.hash_pandas_object(frame, index=False)]


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


def model_signature(title: bool = True):
    """The served model's MLflow signature: listings in, category path + probability out.

    ``title`` is required when ``title`` is true; the other listing fields are optional columns, and an image comes as
    ``image_path`` (a file the server can read) or ``image_bytes`` (the encoded file). Out:
    ``category_path``, ``leaf``, the calibrated ``probability`` and ``auto`` (optional: a
    version without a stored threshold has no such column). Params (inference time, e.g. a
    request's ``"params": {"batch_size": 64}``): ``batch_size`` (long, default
    :data:`DEFAULT_BATCH_SIZE`), the rows per forward pass.

    Args:
        title: whether ``title`` is a required column (a model with a text branch); an image
            model (``train.branches: image``, a catalog without titles) takes it as optional.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    optional = [ColSpec("string", "listing_id", required=False),
                *([] if title else [ColSpec("string", "title", required=False)]),
                ColSpec("string", "description", required=False),
                ColSpec("string", "brand", required=False),
                ColSpec("double", "price", required=False),
                ColSpec("string", "currency", required=False),
                ColSpec("string", "attributes", required=False),
                ColSpec("string", "image_path", required=False),
                ColSpec("binary", "image_bytes", required=False)]
    return ModelSignature(
        inputs=Schema([*([ColSpec("string", "title")] if title else []), *optional]),
        outputs=Schema([ColSpec("string", "category_path"), ColSpec("string", "leaf"),
                        ColSpec("double", "probability"),
                        ColSpec("boolean", "auto", required=False)]),
        params=ParamSchema([ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)]),
    )


class ListingClassifierModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper of the checkpoint (artifact ``"checkpoint"``).

    Input: a DataFrame of listings: ``title`` (str; optional for an image model) and an image
    as ``image_path`` (str, a
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
            ``mlflow models serve``) when ``title`` is missing (from a model with a text
            branch), ``batch_size`` is not a positive
            integer, or a row's image is missing, unreadable or outside the image root; the
            message names the row (0-based in the request) and its ``listing_id`` when given.
    """

    def __init__(self) -> None:
        self.loaded: LoadedClassifier | None = None

    def load_context(self, context) -> None:
        # a frozen-encoder model ships its encoder's weights file (artifact "encoder_weights");
        # a fine-tuned one holds its encoder in the checkpoint
        self.loaded = load_checkpoint(context.artifacts["checkpoint"], device="cpu",
                                      encoder_weights=context.artifacts.get("encoder_weights"))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if self.loaded is None:
            self.load_context(context)
        if "title" not in model_input.columns and self.loaded.model.text_encoder is not None:
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
            leaves it (``..``, or absolute elsewhere; checked on the normalised path) is refused.
            None: any path. Either way the file is opened without following a link and must be
            a regular file (:func:`common.files.open_regular`, through the one image loader).

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
