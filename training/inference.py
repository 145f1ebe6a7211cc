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

A frozen-encoder checkpoint (``train.image_encoder: frozen``) reads image embeddings, not pixels.
Its ``encoder`` entry names the encoder; :func:`image_embeddings` hashes each image's bytes
(SHA-256, the store's ``image_sha256``), takes the embedding from the embedding cache when it
holds that image for that encoder (:class:`training.embeddings.EmbeddingCache`: the workspace's
``data/embeddings``, so the gate and the monitor do not embed a stored image again) and embeds the
others with the recorded encoder, loaded once (:meth:`LoadedClassifier.image_encoder`, from the
weights named in the checkpoint or a copy shipped with the registered model). Evaluation and
calibration pass the prepared split's embeddings directly (:func:`split_images`).

A fine-tuned checkpoint (``train.image_encoder: finetune``) reads pixels like a scratch one, decoded
by the same :func:`decode_image` at its image size (the encoder's input size), but normalised with
the mean and std of the encoder's weights (its ``encoder`` entry's ``preprocessing``), as in
training: :func:`checkpoint_normalization`. Its image branch is the encoder's architecture
(``training.encoders.build_encoder``) with the fine-tuned weights of the checkpoint:
:func:`checkpoint_model`, shared with ``python -m training.train --test-only``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.params import EncoderSpec, TrainParams
from training.embeddings import EMBEDDINGS, EmbeddingCache, read_image
from training.model import ListingClassifier, build_model
from training.presets import IMAGENET, EvalPreset, Normalization, load_image
from training.text import encode_listings
from training.title_expert import TITLE_EXPERT_KEY, TitleExpert

log = logging.getLogger(__name__)


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
    encoder: dict | None = None
    """Frozen encoder: the checkpoint's ``"encoder"`` entry (``training.train.encoder_record``:
    ``spec``, ``id``, ``dim``, ``weights``); None for a model that reads pixels."""
    encoder_weights: Path | None = None
    """A copy of the encoder's weights file to load instead of the spec's source (the registered
    model's artifact); its sha256 must be the recorded one."""
    embeddings: EmbeddingCache | None = None
    """Where embeddings of stored images are looked up before embedding (None: embed all)."""
    keep_embeddings_as: str | None = None
    """A store partition (batch id): images embedded by :func:`image_embeddings` that
    :attr:`embeddings` lacked are added to it as that batch's file, so that the embed stage reuses
    them (the monitor scores a new batch before the embed stage runs). None: nothing is written."""
    image_mode: str = "scratch"
    """The checkpoint's ``image_encoder``: ``scratch``, ``frozen`` or ``finetune``."""
    norm: Normalization = IMAGENET
    """The pixels' normalisation (a fine-tuned encoder's own, else ImageNet's)."""
    title_expert: TitleExpert | None = None
    """The checkpoint's linear title model joined to the heads' scores (``training.title_expert``);
    None: the heads alone."""
    _encoder: object | None = None

    @property
    def frozen(self) -> bool:
        """Whether the model reads embeddings of a frozen encoder (not pixels)."""
        return self.image_mode == "frozen" and self.encoder is not None and self.model.image_encoder is not None

    def image_encoder(self):
        """The recorded frozen encoder (:class:`training.encoders.Encoder`), loaded on first use.

        Raises:
            ValueError: when the weights loaded are not the ones the model was trained on (another
                sha256, hence another encoder id).
            FileNotFoundError, training.encoders.WeightsMismatchError: as ``load_encoder``.
        """
        if self._encoder is None:
            from training.encoders import load_encoder

            spec = EncoderSpec.model_validate(self.encoder["spec"])
            if self.encoder_weights is not None:
                spec = spec.model_copy(update={"weights": f"file:{self.encoder_weights}"})
            encoder = load_encoder(spec)
            if encoder.id != self.encoder["id"]:
                raise ValueError(f"encoder {encoder.id} loaded from {encoder.weights.source} is not the "
                                 f"model's {self.encoder['id']} (weights sha256 "
                                 f"{self.encoder['weights']['sha256'][:12]}...)")
            self._encoder = encoder.to(self.device)
        return self._encoder

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


EMBEDDINGS_ENV = "LCP_EMBEDDINGS_DIR"
"""Environment variable: the embedding cache root (``<workspace>/data/embeddings``) that
:func:`load_checkpoint` looks stored images up in; unset, ``$LCP_STATE_DIR/workspace/data/embeddings``
when ``LCP_STATE_DIR`` is set (the platform's tasks: the gate and the monitor), else none."""


def default_embeddings_dir() -> Path | None:
    """The embedding cache root of this process (see :data:`EMBEDDINGS_ENV`), or None."""
    if os.environ.get(EMBEDDINGS_ENV):
        return Path(os.environ[EMBEDDINGS_ENV])
    if os.environ.get("LCP_STATE_DIR"):
        return Path(os.environ["LCP_STATE_DIR"]) / "workspace" / EMBEDDINGS
    return None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    encoder_weights: str | Path | None = None,
                    embeddings_dir: str | Path | None = None) -> LoadedClassifier:
    """Loads ``models/model.pt`` (see ``training.train``) for inference.

    The backbone is built without pretrained weights: the checkpoint's state dict holds them all.
    The weights served are the checkpoint's ``model`` entry (the best epoch on validation). A
    frozen-encoder checkpoint's encoder is loaded when an image must be embedded.

    Args:
        path: the checkpoint.
        device: where the model runs.
        encoder_weights: frozen encoder: a copy of its weights file (see
            :attr:`LoadedClassifier.encoder_weights`); None: the recorded source.
        embeddings_dir: frozen encoder: the embedding cache root; None: :func:`default_embeddings_dir`.

    Raises:
        FileNotFoundError: when the file does not exist.
    """
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    train_params = TrainParams.model_validate({**ckpt["params"]["train"], "weights": "none"})
    encoder, mode = ckpt.get("encoder"), image_mode(ckpt)
    model = checkpoint_model(ckpt)
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last).eval()
    cache = None
    if mode == "frozen":
        root = embeddings_dir if embeddings_dir is not None else default_embeddings_dir()
        cache = None if root is None else EmbeddingCache(root, encoder["id"])
    labels = list(ckpt["labels"])
    expert = None
    if ckpt.get(TITLE_EXPERT_KEY):
        expert = TitleExpert.from_entry(ckpt[TITLE_EXPERT_KEY])
        if expert.labels != labels:
            raise ValueError("the checkpoint's title expert was fitted on other categories than its heads")
    return LoadedClassifier(model, labels, int(ckpt["image_size"]), train_params,
                            device, bool(ckpt.get("pretrained", False)), ckpt.get("calibration"),
                            encoder, None if encoder_weights is None else Path(encoder_weights), cache,
                            image_mode=mode, norm=checkpoint_normalization(ckpt), title_expert=expert)


def image_mode(ckpt: dict) -> str:
    """A checkpoint's ``image_encoder`` (``scratch``, ``frozen`` or ``finetune``); one written
    before the key existed is frozen when it records an encoder, else scratch."""
    return ckpt.get("image_encoder") or ("frozen" if ckpt.get("encoder") is not None else "scratch")


def checkpoint_normalization(ckpt: dict) -> Normalization:
    """The normalisation of a checkpoint's pixels: a fine-tuned encoder's weights' mean and std
    (its record's ``preprocessing``), else ImageNet's (``training.presets``)."""
    if image_mode(ckpt) != "finetune":
        return IMAGENET
    pre = ckpt["encoder"]["preprocessing"]
    return Normalization(tuple(pre["mean"]), tuple(pre["std"]))


def checkpoint_model(ckpt: dict) -> ListingClassifier:
    """The classifier of a checkpoint, with its served weights (``ckpt["model"]``) loaded.

    A scratch backbone is built without pretrained weights and a fine-tuned encoder as its bare
    architecture (``training.encoders.build_encoder``): the state dict holds every tensor.

    Raises:
        RuntimeError: when the state dict does not fit the architecture the params describe.
    """
    train_params = TrainParams.model_validate({**ckpt["params"]["train"], "weights": "none"})
    encoder, mode = ckpt.get("encoder"), image_mode(ckpt)
    pretrained_encoder = None
    if mode == "finetune" and encoder is not None:
        from training.encoders import Preprocessing, WeightsInfo, build_encoder

        w = encoder["weights"]
        pretrained_encoder = build_encoder(
            EncoderSpec.model_validate(encoder["spec"]), Preprocessing.from_dict(encoder["preprocessing"]),
            WeightsInfo(w["source"], w["licence"], w["sha256"], None if w["path"] is None else Path(w["path"])))
    model, _ = build_model(list(ckpt["labels"]), train_params,
                           encoder["dim"] if mode == "frozen" else None, pretrained_encoder)
    model.load_state_dict(ckpt["model"])
    return model


def split_images(loaded: LoadedClassifier, prepared: str | Path, name: str,
                 frame: pd.DataFrame) -> np.ndarray | None:
    """A prepared split's model images: the uint8 ``(N, S, S, 3)`` pixels of
    ``<prepared>/<name>_images.npy`` (memmap), or for a frozen encoder the float32 ``(N, E)``
    embeddings of ``frame``'s images from the cache next to it (``<prepared>/../embeddings``, the
    workspace's ``data/embeddings``); None for a text model.

    Raises:
        KeyError: a frozen encoder's image has no embedding (the embed stage did not run).
    """
    prepared = Path(prepared)
    if loaded.model.image_encoder is None:
        return None
    if loaded.frozen:
        return EmbeddingCache(prepared.parent / EMBEDDINGS.name, loaded.encoder["id"]).lookup(
            frame["image_sha256"].tolist())
    return np.load(prepared / f"{name}_images.npy", mmap_mode="r")


def _image_bytes(image: str | Path | bytes, row: int) -> bytes:
    """An image's encoded bytes (a path read with ``common.files.read_regular``: no link, no FIFO)."""
    from common.files import read_regular

    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    try:
        return read_regular(image)
    except OSError as exc:
        raise ListingImageError(f"cannot read its image (image_path {str(image)!r}): {exc}", row) from exc


def image_embeddings(loaded: LoadedClassifier, images: Sequence[str | Path | bytes],
                     batch_size: int = 64) -> np.ndarray:
    """float32 ``(N, E)`` frozen-encoder embeddings of image files or encoded bytes.

    Each image's bytes are hashed (SHA-256); an image the cache (:attr:`LoadedClassifier.embeddings`)
    holds is not embedded again, the others are read by :func:`training.embeddings.read_image` and
    embedded by the recorded encoder (the embed stage's path), and added to the cache when
    :attr:`LoadedClassifier.keep_embeddings_as` names a batch.

    Raises:
        ListingImageError: (a ValueError, with the row) an image is missing or unreadable.
    """
    blobs = [_image_bytes(image, i) for i, image in enumerate(images)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    dim = int(loaded.encoder["dim"])
    out, missing = (loaded.embeddings.get(shas) if loaded.embeddings is not None
                    else (None, list(range(len(shas)))))
    if out is None:
        out = np.zeros((len(shas), dim), dtype=np.float32)
    if missing:
        from training.encoders import embed

        encoder = loaded.image_encoder()
        pictures = []
        for i in missing:
            try:
                pictures.append(read_image(io.BytesIO(blobs[i]), encoder.preprocessing))
            except (OSError, ValueError) as exc:
                raise ListingImageError(f"cannot read its image: {exc}", i) from exc
        out[missing] = embed(encoder, pictures, batch_size=batch_size, device=loaded.device)
        if loaded.embeddings is not None and loaded.keep_embeddings_as:
            first = {}
            for i in missing:  # an image listed twice is cached once
                first.setdefault(shas[i], i)
            rows = list(first.values())
            path = loaded.embeddings.add(loaded.keep_embeddings_as, [shas[i] for i in rows], out[rows])
            log.info("cached the embeddings of %d new images as %s", len(rows), path.name)
    return out


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
            the same way); may be None for a text-only model. For a frozen-encoder model: float32
            ``(N, E)`` embeddings (:func:`split_images`), or N paths or bytes
            (:func:`image_embeddings`).
        batch_size: rows per forward pass.
        temperature: ``T`` dividing the combined leaf scores (``training.calibration``); None:
            the checkpoint's (1.0 without calibration); 1.0: uncalibrated.

    Returns:
        float32 ``(N, C)`` leaf log-probabilities over ``loaded.labels``: the level heads
        combined by ``ListingClassifier.leaf_log_probs``, joined to the checkpoint's title expert
        when it has one (:attr:`LoadedClassifier.title_expert`), then ``log_softmax(. / T)``.

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
    if needs_images and loaded.frozen:  # embeddings, computed once before the batches
        if not (isinstance(images, np.ndarray) and images.dtype.kind == "f"):
            images = image_embeddings(loaded, images, min(batch_size, 64))
        if images.shape[1:] != (loaded.encoder["dim"],):
            raise ValueError(f"embeddings of shape {images.shape[1:]}, the model reads "
                             f"({loaded.encoder['dim']},)")
    is_array = isinstance(images, np.ndarray)
    if is_array and not loaded.frozen and images.shape[1:] != (loaded.image_size, loaded.image_size, 3):
        raise ValueError(f"images of shape {images.shape[1:]}, the model reads "
                         f"({loaded.image_size}, {loaded.image_size}, 3)")
    preset = EvalPreset(loaded.norm)
    n = len(listings)
    t = loaded.temperature if temperature is None else float(temperature)
    log_probs = np.zeros((n, len(loaded.labels)), dtype=np.float32)
    decoded = (_decoded_batches(images, loaded.image_size, batch_size)
               if needs_images and not is_array else None)
    expert = (torch.from_numpy(loaded.title_expert.log_probs(listings["title"].tolist()))
              if loaded.title_expert is not None else None)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = None
            if needs_images and loaded.frozen:
                x = torch.from_numpy(np.ascontiguousarray(images[start:stop])).to(loaded.device)
            elif needs_images:
                batch = np.ascontiguousarray(images[start:stop]) if is_array else next(decoded)
                x = preset(batch).to(loaded.device)
            inputs = encode_listings(listings.iloc[start:stop], loaded.train_params)
            level_logits = model(x, *(t.to(loaded.device) for t in inputs))
            leaf = model.leaf_log_probs(level_logits)
            if expert is not None:  # the product of experts (training.title_expert)
                leaf = torch.log_softmax(leaf + expert[start:stop].to(leaf.device), dim=1)
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

