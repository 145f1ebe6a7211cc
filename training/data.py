"""The prepared splits as a torch ``Dataset``, and the ``DataLoader`` the train stage reads them with.

Batches are read from the uint8 image arrays written by the prepare stage (no JPEG decoding
during training) and assembled whole: the sampler (:class:`training.sampler.EpochBatchSampler`)
yields one :class:`~training.sampler.BatchIndex` per step, and :class:`ListingDataset` reads its
rows from the memmap in one sorted slice, applies the split's transform preset
(:class:`training.presets.TrainPreset` for training, ``EvalPreset`` for validation) and selects
the pre-encoded text and structured bags. Texts and structured fields are encoded once per split
(:func:`training.text.encode_listings`). :func:`load_data` builds the train and val loaders of a
run, once.

With ``train.image_encoder: frozen`` a split also holds its rows' image embeddings, looked up by
``image_sha256`` in the embed stage's cache (``training.embeddings.EmbeddingCache``), and a batch
carries them instead of pixels: no pixel is read and nothing is augmented (the embedding of an
image is fixed). With ``finetune`` a batch carries pixels normalised as the pretrained encoder's
weights expect (the ``norm`` of :func:`load_data`).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from common.params import TrainParams
from training.embeddings import EmbeddingCache
from training.hierarchy import LabelTree
from training.presets import IMAGENET, EvalPreset, Normalization, TrainPreset
from training.sampler import BatchIndex, EpochBatchSampler
from training.text import encode_listings, select_bags


@dataclass
class Split:
    """One split of the prepared data, ready for batching.

    Attributes:
        images: uint8 (N, S, S, 3) array (usually a read-only memmap).
        image_file: the ``.npy`` file ``images`` was read from (workers re-open it).
        ids, offsets: int64 hashed title(+description) bags (see ``training.text``).
        field_ids, field_offsets: int64 hashed structured-field bags; numeric: float32 (N, 2).
        targets: int64 (N,) leaf class index, -1 for a category unknown to the model.
        frame: the rows (canonical columns).
        name: the split's name (``"train"``, ``"val"``).
        embeddings: float32 (N, E) image embeddings of the rows (frozen encoder), else None.
    """

    images: np.ndarray
    image_file: Path
    ids: torch.Tensor
    offsets: torch.Tensor
    field_ids: torch.Tensor
    field_offsets: torch.Tensor
    numeric: torch.Tensor
    targets: torch.Tensor
    frame: pd.DataFrame
    name: str = ""
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)


def read_labels(prepared: Path) -> list[str]:
    """The sorted leaf category paths of the prepared training split (the model's classes)."""
    frame = pd.read_parquet(prepared / "train.parquet", columns=["category_path"])
    return sorted(frame["category_path"].unique().tolist())


def load_split(prepared: Path, name: str, labels: list[str], cfg: TrainParams,
               embeddings: EmbeddingCache | None = None) -> Split:
    """Reads ``<name>.parquet`` and ``<name>_images.npy`` of the prepared folder.

    Args:
        prepared: the prepare stage's output folder.
        name: the split (``"train"``, ``"val"``, ``"golden"``).
        labels: the model's leaf classes; a row of another category gets target -1.
        cfg: the ``train`` params group (text and field encoding).
        embeddings: frozen encoder: the cache the rows' image embeddings are read from.

    Raises:
        ValueError: when the image cache and the rows differ in length.
        KeyError: when a row's image has no embedding in ``embeddings``.
    """
    frame = pd.read_parquet(prepared / f"{name}.parquet")
    image_file = prepared / f"{name}_images.npy"
    images = np.load(image_file, mmap_mode="r")
    if len(images) != len(frame):
        raise ValueError(f"{name}: {len(frame)} rows but {len(images)} images")
    index = {label: i for i, label in enumerate(labels)}
    targets = torch.tensor([index.get(p, -1) for p in frame["category_path"]], dtype=torch.long)
    vectors = None if embeddings is None else embeddings.lookup(frame["image_sha256"].tolist())
    return Split(images, image_file, *encode_listings(frame, cfg), targets, frame, name, vectors)


def data_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 (12 hex) of the ordered (listing_id, image_sha256, category_path) of a split."""
    blob = "\n".join(
        f"{a}\t{b}\t{c}" for a, b, c in
        zip(frame["listing_id"], frame["image_sha256"], frame["category_path"], strict=True))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class ListingDataset(torch.utils.data.Dataset):
    """Item ``BatchIndex`` is that batch of a split, assembled on the CPU.

    Workers of a ``DataLoader`` each open the image memmap themselves (a memmap must not be
    pickled into them: that would copy the whole array).

    Args:
        split: the split.
        transform: :class:`~training.presets.TrainPreset` or ``EvalPreset``; a batch with an
            augmentation seed draws the preset's parameters for its whole global batch from it
            and takes the rows of its positions (the same draws on any number of ranks).
        with_images: False for a model without an image branch (no pixels are read).
        channels_last: images in channels_last memory format (else contiguous NCHW).
    """

    def __init__(self, split: Split, transform: TrainPreset | EvalPreset | None = None,
                 with_images: bool = True, channels_last: bool = True) -> None:
        self.split = split
        self.transform = transform if transform is not None else EvalPreset()
        self.with_images = with_images
        self.channels_last = channels_last
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.split)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None
        state["split"] = copy.copy(self.split)
        state["split"].images = None
        return state

    def _pixels(self) -> np.ndarray:
        if self.split.images is not None:
            return self.split.images
        if self._images is None:
            self._images = np.load(self.split.image_file, mmap_mode="r")
        return self._images

    def __getitem__(self, batch: BatchIndex) -> tuple:
        """The batch's model inputs and targets.

        Returns:
            ``(images, ids, offsets, field_ids, field_offsets, numeric, targets)``: images
            float32 ``(b, 3, S, S)`` (``(b, E)`` embeddings in frozen mode; None without
            images), int64 bags (see ``training.text``), float32 ``(b, 2)``, int64 ``(b,)``; rows
            in ascending index order (sorted reads are sequential in the memmap).
        """
        index, order = torch.sort(batch.rows)
        s = self.split
        images = None
        if self.with_images and s.embeddings is not None:  # frozen encoder: fixed embeddings
            images = torch.from_numpy(np.ascontiguousarray(s.embeddings[index.numpy()]))
        elif self.with_images:
            params = None
            if batch.seed is not None:
                drawn = self.transform.get_params(batch.global_size, torch.Generator().manual_seed(batch.seed))
                params = None if drawn is None else drawn.select(batch.positions[order])
            images = self.transform(np.ascontiguousarray(self._pixels()[index.numpy()]), params)
            if not self.channels_last:
                images = images.contiguous()
        ids, offsets = select_bags(s.ids, s.offsets, index)
        fids, foffsets = select_bags(s.field_ids, s.field_offsets, index)
        return images, ids, offsets, fids, foffsets, s.numeric[index], s.targets[index]


def make_loader(dataset: ListingDataset, sampler: torch.utils.data.Sampler, workers: int,
                device: torch.device, seed: int = 0) -> torch.utils.data.DataLoader:
    """The ``DataLoader`` of a dataset and its batch sampler, built once per run.

    Args:
        dataset: the split's dataset.
        sampler: yields one :class:`~training.sampler.BatchIndex` per step (``set_epoch`` on it
            changes the next iteration's epoch).
        workers: worker processes assembling batches (0: in this process); they persist
            between epochs.
        device: pinned memory on CUDA.
        seed: seed of the loader's own generator, which draws the workers' base seed (so
            iterating leaves the global torch RNG, which dropout draws from, untouched).
    """
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers > 0 else None,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))


def eval_loader(split: Split, cfg: TrainParams, device: torch.device,
                with_images: bool, norm: Normalization = IMAGENET) -> torch.utils.data.DataLoader:
    """Rows in order, batches of ``2 * train.batch_size``, eval preset (``norm``), in this process."""
    sampler = EpochBatchSampler(split.targets, cfg.batch_size * 2, shuffle=False)
    return make_loader(ListingDataset(split, EvalPreset(norm), with_images, cfg.channels_last),
                       sampler, 0, device)


def to_device(batch: tuple | list, device: torch.device) -> tuple:
    """Moves an assembled batch to ``device`` (memory formats kept)."""
    return tuple(None if t is None else t.to(device, non_blocking=True) for t in batch)


class Data(NamedTuple):
    """The taxonomy, the splits and their loaders (see :func:`load_data`)."""

    tree: LabelTree
    train: Split
    val: Split
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader


def load_data(prepared: Path, labels: list[str], cfg: TrainParams, device: torch.device,
              with_images: bool, rank: int = 0, world_size: int = 1,
              embeddings: EmbeddingCache | None = None, norm: Normalization = IMAGENET) -> Data:
    """The train and val splits and their loaders, built once per run.

    The train loader reads this rank's share of each global batch (:class:`EpochBatchSampler`,
    ``set_epoch`` before each epoch) through the train preset (flips, ``train.crop_padding``);
    the val loader reads every row in order through the eval preset.

    Args:
        prepared: the prepare stage's folder (``train`` and ``val`` splits).
        labels: the model's sorted leaf classes (``training.data.read_labels``).
        cfg: the ``train`` params group.
        device: the training device (pinned memory on CUDA).
        with_images: whether the model reads images (False: no pixels are read).
        rank, world_size: this process's rank and the number of processes.
        embeddings: frozen encoder: the embedding cache (batches carry embeddings, not pixels).
        norm: the pixels' normalisation (``training.presets.Normalization``): ImageNet's, or a
            fine-tuned encoder's own.
    """
    train_split = load_split(prepared, "train", labels, cfg, embeddings)
    val_split = load_split(prepared, "val", labels, cfg, embeddings)
    sampler = EpochBatchSampler(train_split.targets, cfg.batch_size, seed=cfg.seed,
                                sampling=cfg.sampling, balance_power=cfg.balance_power,
                                rank=rank, world_size=world_size)
    dataset = ListingDataset(train_split, TrainPreset(0.5, cfg.crop_padding, norm=norm), with_images,
                             cfg.channels_last)
    return Data(LabelTree(labels), train_split, val_split,
                make_loader(dataset, sampler, cfg.workers, device, cfg.seed),
                eval_loader(val_split, cfg, device, with_images, norm))
