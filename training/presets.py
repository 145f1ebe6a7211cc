"""Image decoding and transform presets shared by train, evaluate and serving.

One decode function (:func:`load_image`) turns any image file into a fixed-size uint8 array; it
reads pixels with the loader validation checked them with (:func:`common.images.open_rgb`). The
prepare stage applies it once per listing and caches the arrays, and serving applies the very same
function to an incoming image path. The presets then turn uint8 NHWC batches into normalised float
NCHW tensors: :class:`TrainPreset` (random flip and translation) in training, :class:`EvalPreset`
in validation, evaluation and serving. Shape of the presets follows torchvision's
``references/classification/presets.py``.

The normalisation is ImageNet's mean and std for a backbone trained here (``image_encoder:
scratch``); a fine-tuned pretrained encoder (``finetune``) gets its weights' own
(``training.encoders.Preprocessing.mean``/``std``, e.g. ``(x * 255 - 127) / 128`` for
EfficientNet-Lite), passed as :class:`Normalization` to both presets by training and inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from PIL import Image

from common.images import open_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalization(NamedTuple):
    """Per-channel ``(pixel / 255 - mean) / std``, RGB, of pixels scaled to [0, 1]."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


IMAGENET = Normalization()


def load_image(path: str | Path | BinaryIO, size: int) -> np.ndarray:
    """Decodes an image file into a square RGB array, through the shared loader.

    Args:
        path: image file path or binary file object (any format Pillow reads), read by
            :func:`common.images.open_rgb`: EXIF orientation applied, every mode converted to RGB
            (transparency on white), first frame of an animation.
        size: side of the output in pixels.

    Returns:
        uint8 array of shape ``(size, size, 3)``; the image is resized (bilinear) without keeping
        the aspect ratio, so the whole product stays in the frame.

    Raises:
        ImageReadError: when the content cannot be used (empty, not an image, too large,
            corrupt, an unsupported mode); a ``ValueError``.
        OSError: when the file cannot be opened or read.
    """
    # draft_size: a JPEG is decoded by libjpeg at a reduced scale, much faster
    rgb = open_rgb(path, draft_size=size)
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_tensor_batch(images: np.ndarray | torch.Tensor, norm: Normalization = IMAGENET) -> torch.Tensor:
    """uint8 NHWC batch -> float32 NCHW tensor normalised with ``norm`` (default ImageNet's).

    Args:
        images: uint8 array or tensor of shape ``(N, H, W, 3)``.
        norm: the mean and std.

    Returns:
        float32 tensor of shape ``(N, 3, H, W)`` in channels_last memory format.
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = np.array(images)  # read-only memmap slice: torch wants writable memory
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (N, H, W, 3) batch, got {tuple(x.shape)} {x.dtype}")
    # permute keeps NHWC storage, i.e. the result is already channels_last
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(norm.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def pad_crop(images: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Random-translation augmentation: pad every side by ``padding``, crop back to size.

    The augmentation of He et al. 2016 ("Deep Residual Learning for Image Recognition", section
    4.2: 4-pixel padding and a random crop of the original size), applied per image. The padding
    repeats the edge pixels (product photos sit on a plain background) rather than zeros.

    Args:
        images: float ``(N, 3, S, S)`` batch.
        offsets: int64 ``(N, 2)`` crop origins (row, column) in ``[0, 2 * padding]``; ``padding``
            for both leaves an image where it was.
        padding: pixels added on each side; 0 returns ``images`` unchanged.

    Returns:
        float ``(N, 3, S, S)`` in channels_last memory format.

    Raises:
        ValueError: when ``offsets`` has another shape or leaves the padded image.
    """
    if padding <= 0:
        return images
    n, c, h, w = images.shape
    if tuple(offsets.shape) != (n, 2) or (n and (int(offsets.min()) < 0 or int(offsets.max()) > 2 * padding)):
        raise ValueError(f"offsets must be (N, 2) in [0, {2 * padding}], got {tuple(offsets.shape)}")
    padded = torch.nn.functional.pad(images, (padding,) * 4, mode="replicate")
    rows = (offsets[:, 0:1] + torch.arange(h)).view(n, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w)).view(n, 1, 1, w)
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]
    return out.contiguous(memory_format=torch.channels_last)


class AugmentParams(NamedTuple):
    """The random draws of :class:`TrainPreset` for a batch, one row per image.

    Attributes:
        flip: bool ``(N,)``, which images are flipped horizontally.
        crop: int64 ``(N, 2)`` crop origins for :func:`pad_crop`; None: no translation.
    """

    flip: torch.Tensor
    crop: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> AugmentParams:
        """The draws of the images at ``index`` (int64), in that order."""
        return AugmentParams(self.flip[index], None if self.crop is None else self.crop[index])


class EvalPreset:
    """Evaluation and serving transform: normalisation only (images are already resized).

    Args:
        norm: the mean and std (default ImageNet's).
    """

    def __init__(self, norm: Normalization = IMAGENET) -> None:
        self.norm = Normalization(*norm)

    def get_params(self, n: int, generator: torch.Generator | None = None) -> None:
        """No random draws (the same interface as :meth:`TrainPreset.get_params`)."""
        return None

    def __call__(self, images: np.ndarray | torch.Tensor, params: None = None) -> torch.Tensor:
        """uint8 ``(N, S, S, 3)`` -> float32 ``(N, 3, S, S)``, see :func:`to_tensor_batch`."""
        return to_tensor_batch(images, self.norm)


class TrainPreset:
    """Training transform: :class:`EvalPreset`, a random horizontal flip (``hflip_prob`` per
    image), then, with ``crop_padding``, a random translation (:func:`pad_crop`).

    The draws are made by :meth:`get_params` (as torchvision's ``RandomResizedCrop.get_params``)
    so that a caller can draw them for a whole global batch from a seeded generator and hand each
    rank the rows of its share (see ``training.data.ListingDataset``).

    Args:
        hflip_prob: probability of flipping each image.
        crop_padding: pixels of :func:`pad_crop`'s padding; 0: no translation.
        generator: torch generator of the draws when ``__call__`` is given none.
        norm: the mean and std (default ImageNet's).
    """

    def __init__(self, hflip_prob: float = 0.5, crop_padding: int = 0,
                 generator: torch.Generator | None = None, norm: Normalization = IMAGENET) -> None:
        self.norm = Normalization(*norm)
        self.hflip_prob = hflip_prob
        self.crop_padding = crop_padding
        self.generator = generator

    def get_params(self, n: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draws the flips, then the crop origins (in ``[0, 2 * crop_padding]``), of ``n`` images."""
        flip = torch.rand(n, generator=generator) < self.hflip_prob
        crop = (torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=generator)
                if self.crop_padding > 0 else None)
        return AugmentParams(flip, crop)

    def __call__(self, images: np.ndarray | torch.Tensor,
                 params: AugmentParams | None = None) -> torch.Tensor:
        """uint8 ``(N, S, S, 3)`` -> float32 ``(N, 3, S, S)`` channels_last, augmented.

        Args:
            images: the batch.
            params: the draws for these images; None: drawn now from ``self.generator``.
        """
        x = to_tensor_batch(images, self.norm)
        if params is None:
            params = self.get_params(len(x), self.generator)
        if params.flip.any():
            x[params.flip] = x[params.flip].flip(-1)
        if params.crop is not None:
            x = pad_crop(x, params.crop, self.crop_padding)
        return x
