"""Train stage: fits the listing classifier on ``data/prepared`` and writes ``models/model.pt``.

Shape after torchvision's ``references/classification/train.py``: :func:`train_one_epoch`,
:func:`evaluate` under ``torch.inference_mode()``, an img/s meter, a checkpoint dict written
after every epoch, resume from it, ``--test-only``, and DDP under ``torchrun``. The same code runs
on CPU and CUDA; bf16 autocast (``train.amp``) runs on CUDA, and on CPUs with native bf16
(AVX512-BF16 or AMX) where a measured training step is clearly faster in bf16 than in fp32
(:func:`resolve_precision`; emulated bf16 is an order of magnitude slower, so other CPUs stay in
fp32); pinned memory and ``torch.compile`` are used only on CUDA (on a 2-core Xeon, compiled
resnet18 training ran at 199 img/s against 193 eager, after a 40 s compile).

Batches are read from the uint8 image arrays written by the prepare stage (no JPEG decoding
during training), assembled by a ``DataLoader`` (``train.workers`` processes, each opening the
memmap itself); texts and structured fields are hashed once per split.

Training: one-cycle or cosine schedule, label smoothing, a loss per taxonomy level, optional
class-balanced sampling (a class is drawn with weight ``n_c ** -balance_power`` per listing,
Mahajan et al. 2018's square-root sampling at 0.5), and early stopping on the validation
business-weighted score (the weights of the best epoch are the ones kept; epochs that end while
the learning rate still warms up do not count towards the patience). ``train.min_steps`` raises
the epochs of a small catalog, whose epoch is only a few optimizer steps. With
``train.ema_decay`` > 0 an exponential moving average of the weights (and BatchNorm buffers) is
updated after every optimizer step (``torch.optim.swa_utils.AveragedModel``, as torchvision's
reference ``--model-ema``); the average is what is evaluated, early-stopped on and kept.

Multi-GPU / multi-process (DDP)::

    torchrun --nproc_per_node 4 -m training.train --params params.yaml

Each process takes every ``world_size``-th row of each global batch (so the global batch size
stays ``train.batch_size``); rank 0 evaluates, decides early stopping and writes the checkpoint.
Backend: NCCL on CUDA, gloo on CPU.

CLI::

    python -m training.train --params params.yaml [--workspace .] [--test-only] [--no-resume]
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from common.params import PRECISION_ENV, Params, ScoreParams, TrainParams, load_params
from common.scoring import business_weighted_score
from training.hierarchy import LabelTree
from training.model import ListingClassifier, build_model
from training.presets import pad_crop, to_tensor_batch
from training.text import encode_fields, encode_texts, select_bags

CHECKPOINT = Path("models") / "model.pt"
TRAIN_LOG = Path("models") / "train_log.json"


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

    def __len__(self) -> int:
        return len(self.targets)


def encode_listings(frame: pd.DataFrame, cfg: TrainParams
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text and structured inputs of listings, as the model reads them in training and serving.

    Args:
        frame: N listings with ``title`` and optionally ``description``, ``price`` and the
            categorical fields ``cfg.fields`` (columns or keys of an ``attributes`` JSON column).
        cfg: the ``train`` params group.

    Returns:
        ``(ids, offsets, field_ids, field_offsets, numeric)`` (see ``training.text``).
    """
    descriptions = frame["description"].tolist() if "description" in frame.columns else None
    ids, offsets = encode_texts(frame["title"].tolist(), descriptions, cfg.text_buckets,
                                cfg.description_words, cfg.char_ngrams)
    records = frame.to_dict("records")
    field_ids, field_offsets, numeric = encode_fields(records, cfg.fields, cfg.field_buckets)
    return ids, offsets, field_ids, field_offsets, numeric


def load_split(prepared: Path, name: str, labels: list[str], cfg: TrainParams) -> Split:
    """Reads ``<name>.parquet`` and ``<name>_images.npy`` of the prepared folder."""
    frame = pd.read_parquet(prepared / f"{name}.parquet")
    image_file = prepared / f"{name}_images.npy"
    images = np.load(image_file, mmap_mode="r")
    if len(images) != len(frame):
        raise ValueError(f"{name}: {len(frame)} rows but {len(images)} images")
    index = {label: i for i, label in enumerate(labels)}
    targets = torch.tensor([index.get(p, -1) for p in frame["category_path"]], dtype=torch.long)
    return Split(images, image_file, *encode_listings(frame, cfg), targets, frame)


def data_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 (12 hex) of the ordered (listing_id, image_sha256, category_path) of a split."""
    blob = "\n".join(
        f"{a}\t{b}\t{c}" for a, b, c in
        zip(frame["listing_id"], frame["image_sha256"], frame["category_path"], strict=True))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class BatchSource(torch.utils.data.Dataset):
    """Item ``i`` is the ``i``-th batch of a list of row indices, assembled on the CPU.

    Workers of a ``DataLoader`` each open the image memmap themselves (a memmap must not be
    pickled into them: that would copy the whole array).

    Args:
        split: the split.
        batches: int64 row-index tensors, one per batch.
        flips: bool tensors (same lengths), which images to flip horizontally; None: no flip.
        with_images: False for a model without an image branch.
        crops: int64 ``(len, 2)`` crop origins per batch for :func:`training.presets.pad_crop`;
            None: no translation.
        padding: pixels of ``pad_crop``'s padding.
    """

    def __init__(self, split: Split, batches: list[torch.Tensor], flips: list[torch.Tensor] | None,
                 with_images: bool, crops: list[torch.Tensor] | None = None, padding: int = 0) -> None:
        self.split = split
        self.batches = batches
        self.flips = flips
        self.with_images = with_images
        self.crops = crops
        self.padding = padding
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None
        state["split"] = copy.copy(self.split)
        state["split"].images = None
        return state

    def __getitem__(self, i: int) -> tuple:
        index, order = torch.sort(self.batches[i])  # sorted reads are sequential in the memmap
        s = self.split
        images = None
        if self.with_images:
            if s.images is None and self._images is None:
                self._images = np.load(s.image_file, mmap_mode="r")
            source = s.images if s.images is not None else self._images
            images = to_tensor_batch(np.ascontiguousarray(source[index.numpy()]))
            if self.flips is not None:
                flip = self.flips[i][order]
                if flip.any():
                    images[flip] = images[flip].flip(-1)
            if self.crops is not None:
                images = pad_crop(images, self.crops[i][order], self.padding)
        ids, offsets = select_bags(s.ids, s.offsets, index)
        fids, foffsets = select_bags(s.field_ids, s.field_offsets, index)
        return images, ids, offsets, fids, foffsets, s.numeric[index], s.targets[index]


def batch_loader(split: Split, batches: list[torch.Tensor], flips: list[torch.Tensor] | None,
                 with_images: bool, workers: int, device: torch.device,
                 crops: list[torch.Tensor] | None = None, padding: int = 0):
    """Iterates over assembled batches (a ``DataLoader`` with ``workers`` processes, pinned on CUDA)."""
    source = BatchSource(split, batches, flips, with_images, crops, padding)
    if workers <= 0:
        return (source[i] for i in range(len(source)))
    return torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=workers,
                                       pin_memory=device.type == "cuda", prefetch_factor=4)


def to_device(batch: tuple, device: torch.device, channels_last: bool = True) -> tuple:
    """Moves an assembled batch to ``device`` (images in channels_last when asked)."""
    images, *rest = batch
    if images is not None:
        images = images.to(device, non_blocking=True,
                           memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return (images, *(t.to(device, non_blocking=True) for t in rest))


@functools.cache  # asked on every training and evaluation step; the CPU does not change
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles).

    Without them, bf16 matmuls and convolutions are emulated: a resnet18 training step at 64 px
    took 17.4 s under bf16 autocast against 1.57 s in fp32 on an AVX2-only AMD EPYC, while an
    AVX512-BF16 EPYC trained 1.57x faster in bf16 (``benchmarks/train_throughput.py --bf16``).
    Reads ``torch.cpu``'s CPU-feature probes (cpuinfo); False when this torch build has none.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in probes if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The dtype bf16 autocast may use on a device: bf16 on CUDA and on a CPU with native bf16
    (:func:`cpu_has_native_bf16`), else None (fp32). Whether a run uses it is
    :func:`resolve_precision`'s decision."""
    if not enabled:
        return None
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


# ``amp: auto`` keeps bf16 on a CPU only when a measured training step is at least this much
# faster than in fp32: bf16 rounds activations to 8 mantissa bits, which is worth it only for a
# clear gain, and a margin keeps near-ties (and timing noise) from flipping the choice between
# runs. Measured (benchmarks/train_throughput.py, resnet18, 64 px, batch 128): AVX512-BF16 AMD
# EPYC 1.57x (bf16 kept); AVX512-BF16 Intel Xeon without AMX under KVM 0.90x (fp32 kept).
BF16_MIN_SPEEDUP = 1.15


def measure_precisions(model: nn.Module, criterion: nn.Module, split: Split, tree: LabelTree,
                       cfg: TrainParams, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                       repeats: int = 3, warmup: int = 2) -> dict[str, float]:
    """Training-step throughput of ``model`` in fp32 and under ``dtype`` autocast, on one batch.

    A copy of the model runs a training step (forward, backward and a :func:`make_optimizer`
    step) on the first ``cfg.batch_size`` rows of ``split``: ``warmup`` untimed rounds, then
    ``repeats`` timed rounds, each round one step per precision; the fastest step of each is
    kept. One warm-up round was not enough: a process's first fp32 steps ran ~15% slower than
    its later ones (fused model, 2-core Xeon), enough to flip the comparison. The model itself
    and the global RNG streams are left untouched, so a seeded run trains the same with or
    without the probe.
    Costs ``2 * (warmup + repeats)`` training steps.

    Returns:
        ``{"float32": img/s, "<dtype>": img/s}`` (e.g. ``"bfloat16"``), images per second.
    """
    probe = copy.deepcopy(_unwrap(model)).train()
    n = min(len(split), cfg.batch_size)
    *inputs, targets = to_device(BatchSource(split, [torch.arange(n)], None, probe.image_encoder is not None)[0],
                                 device, cfg.channels_last)
    level_targets = tree.level_targets(targets)
    optimizer = make_optimizer(probe, cfg, device)
    best = {None: float("inf"), dtype: float("inf")}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(warmup + repeats):
            for candidate in best:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                with _autocast(device, candidate):
                    level_logits = probe(*inputs)
                probe.level_loss(level_logits, level_targets, criterion, denominator=n).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:  # a process's first steps are slower, fp32's the most
                    best[candidate] = min(best[candidate], time.perf_counter() - t0)
    return {_precision_name(d): n / t for d, t in best.items()}


def resolve_precision(cfg: TrainParams, device: torch.device, deterministic: bool = False,
                      measure=None) -> tuple[torch.dtype | None, dict[str, float] | None]:
    """The autocast dtype a run trains and validates in, from ``train.amp``.

    - ``false``: fp32.
    - ``true``: bf16 wherever :func:`autocast_dtype` allows it (CUDA, CPUs with native bf16).
    - ``"auto"``: bf16 on CUDA; on a CPU with native bf16, bf16 only when ``measure()`` finds it
      at least :data:`BF16_MIN_SPEEDUP` times as fast as fp32, and fp32 in deterministic mode
      (the choice must not hang on a timing); fp32 on other CPUs.

    Args:
        measure: ``() -> {"float32": img/s, "bfloat16": img/s}`` (e.g. :func:`measure_precisions`
            bound to the run's model and data); called only when ``"auto"`` needs it.

    Returns:
        ``(dtype or None for fp32, the measured img/s or None when nothing was measured)``.
    """
    dtype = autocast_dtype(device, cfg.amp is not False)
    if dtype is None or cfg.amp is True or device.type == "cuda":
        return dtype, None
    if deterministic or measure is None:
        return None, None
    rates = measure()
    fp32, low = rates["float32"], rates[_precision_name(dtype)]
    return (dtype if low >= BF16_MIN_SPEEDUP * fp32 else None), rates


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 (or ``dtype``) autocast on ``device``; a no-op context for None (fp32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``"bfloat16"``); None for ``"float32"``."""
    return None if precision == "float32" else getattr(torch, precision)


def _precision_name(dtype: torch.dtype | None) -> str:
    """The name of an autocast dtype (``"bfloat16"``), ``"float32"`` for None; inverse of :func:`_dtype`."""
    return str(dtype or torch.float32).removeprefix("torch.")


def _unwrap(model: nn.Module) -> ListingClassifier:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def planned_epochs(cfg: TrainParams, steps_per_epoch: int) -> int:
    """Epochs of a run: ``train.epochs``, raised until the run makes ``train.min_steps``
    optimizer steps (a small catalog's epoch is a handful of steps).

    Args:
        cfg: the ``train`` params group.
        steps_per_epoch: optimizer steps per epoch (``ceil(n_train / batch_size)``).

    Returns:
        ``max(epochs, ceil(min_steps / steps_per_epoch))``.
    """
    return max(cfg.epochs, -(-cfg.min_steps // max(steps_per_epoch, 1)))


def epoch_order(split: Split, epoch: int, seed: int, sampling: str = "uniform",
                balance_power: float = 0.5) -> torch.Tensor:
    """Row order of one epoch: a seeded permutation, or a class-balanced draw of the same length.

    Args:
        split: the training split.
        epoch: epoch number (part of the seed).
        seed: ``train.seed``.
        sampling: ``"uniform"`` (each row once) or ``"class_balanced"`` (rows drawn with
            replacement with weight ``n_c ** -balance_power``, ``n_c`` the row's class size).
        balance_power: 0 is uniform, 1 gives every class the same expected share.

    Returns:
        int64 ``(len(split),)`` row indices.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    if sampling == "uniform" or len(split) == 0:
        return torch.randperm(len(split), generator=generator)
    targets = split.targets.clamp(min=0)
    counts = torch.bincount(targets).float()
    weights = counts[targets].pow(-balance_power)
    return torch.multinomial(weights, len(split), replacement=True, generator=generator)


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    lr_scheduler, split: Split, tree: LabelTree, cfg: TrainParams, device: torch.device,
                    epoch: int, print_every: int = 0, rank: int = 0, world_size: int = 1,
                    ema: AveragedModel | None = None, autocast: torch.dtype | None = None) -> dict:
    """One pass over the training split (seeded order, see :func:`epoch_order`).

    ``ema``, when given, is updated from the model after every optimizer step. ``autocast``:
    the autocast dtype (see :func:`resolve_precision`); None trains in fp32.

    Under DDP each process takes every ``world_size``-th row of each global batch of
    ``cfg.batch_size`` rows; the figures returned are this process's.

    Returns:
        ``{"epoch", "train_loss", "train_accuracy", "img_per_s", "seconds", "lr"}``; img/s
        counts the images of all processes.
    """
    model.train()
    raw = _unwrap(model)
    order = epoch_order(split, epoch, cfg.seed, cfg.sampling, cfg.balance_power)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 1)
    flips_all = torch.rand(len(order), generator=generator) < 0.5
    crops_all = (torch.randint(0, 2 * cfg.crop_padding + 1, (len(order), 2), generator=generator)
                 if cfg.crop_padding > 0 else None)
    steps = (len(split) + cfg.batch_size - 1) // cfg.batch_size
    batches, flips, crops, global_sizes = [], [], [], []
    for step in range(steps):
        sl = slice(step * cfg.batch_size, (step + 1) * cfg.batch_size)
        global_sizes.append(len(order[sl]))
        batches.append(order[sl][rank::world_size])
        flips.append(flips_all[sl][rank::world_size])
        if crops_all is not None:
            crops.append(crops_all[sl][rank::world_size])
    loader = batch_loader(split, batches, flips, raw.image_encoder is not None, cfg.workers, device,
                          crops or None, cfg.crop_padding)
    total_loss, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    for step, batch in enumerate(loader):
        *inputs, targets = to_device(batch, device, cfg.channels_last)
        with _autocast(device, autocast):
            level_logits = model(*inputs)
        loss = raw.level_loss(level_logits, tree.level_targets(targets), criterion,
                              denominator=global_sizes[step] / world_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        if ema is not None:
            ema.update_parameters(raw)
        n = len(targets)
        total_loss += loss.item() * n
        with torch.no_grad():
            correct += int((raw.leaf_log_probs(level_logits).argmax(1) == targets).sum())
        seen += n
        if print_every and (step + 1) % print_every == 0:
            rate = seen * world_size / (time.perf_counter() - t0)
            print(f"epoch {epoch} [{step + 1}/{steps}] loss {total_loss / seen:.4f} {rate:.1f} img/s",
                  flush=True)
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "train_loss": total_loss / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "img_per_s": seen * world_size / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "lr": optimizer.param_groups[0]["lr"],
    }


def evaluate(model: nn.Module, criterion: nn.Module, split: Split, tree: LabelTree, cfg: TrainParams,
             device: torch.device, score: ScoreParams | None = None,
             autocast: torch.dtype | None = None) -> dict:
    """Loss, leaf accuracy and business-weighted score on a split (under ``autocast``, None: fp32).

    Rows of a category unknown to the model count as errors (and are left out of the loss).

    Returns:
        ``{"loss", "accuracy", "n"}`` and, with ``score``, ``"business_weighted_score"``.
    """
    model.eval()
    raw = _unwrap(model)
    total_loss, known, correct = 0.0, 0, 0
    predicted: list[int] = []
    batches = list(torch.arange(len(split)).split(cfg.batch_size * 2))
    with torch.inference_mode():
        for batch in batch_loader(split, batches, None, raw.image_encoder is not None, 0, device):
            *inputs, targets = to_device(batch, device, cfg.channels_last)
            with _autocast(device, autocast):
                level_logits = raw(*inputs)
            ok = targets >= 0
            if ok.any():
                level_targets = tree.level_targets(targets)
                total_loss += raw.level_loss(level_logits, level_targets, criterion).item() * int(ok.sum())
                known += int(ok.sum())
            top = raw.leaf_log_probs(level_logits).argmax(1)
            correct += int((top == targets).sum())
            predicted.extend(top.cpu().tolist())
    result = {"loss": total_loss / max(known, 1), "accuracy": correct / max(len(split), 1),
              "n": len(split)}
    if score is not None and len(split):
        result["business_weighted_score"] = business_weighted_score(
            split.frame["category_path"].tolist(), [tree.leaves[i] for i in predicted],
            score.value_table, score.level_credit, score.default_value)
    return result


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and embeddings (torchvision's ``norm_weight_decay=0``)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if (name == "bias" or isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm
                                              | nn.GroupNorm | nn.EmbeddingBag | nn.Embedding)):
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainParams, device: torch.device) -> torch.optim.AdamW:
    """AdamW at ``cfg.lr`` over :func:`_param_groups`, with PyTorch's fused kernel on CPU and CUDA.

    PyTorch's CPU default, the for-loop AdamW, updates the parameters one tensor at a time. For
    the default fused model (28.3 M parameters, most of them the text branch's embedding table)
    its step took 110.6 ms of a 525 ms bf16 training step of 128 listings on a 2-core AMD EPYC,
    and the fused kernel's 15.5 ms (``benchmarks/train_step.py --bf16 --rounds 6``, medians).
    The update is the same AdamW update (checked against the for-loop one in the unit tests).

    Args:
        model: the model whose parameters are trained.
        cfg: ``lr`` and ``weight_decay``.
        device: where the parameters live; other devices than CPU and CUDA get the default
            implementation.

    Returns:
        A ``torch.optim.AdamW`` with two parameter groups (decayed, not decayed).
    """
    return torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             fused=True if device.type in ("cpu", "cuda") else None)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and torch; optionally forces deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_log(path: Path, history: list[dict], extra: dict) -> dict:
    last = history[-1] if history else {}
    log = {
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "val_loss": last.get("val_loss"),
        "val_accuracy": last.get("val_accuracy"),
        "img_per_s": last.get("img_per_s"),
        "epoch_seconds": last.get("seconds"),
        "total_seconds": sum(h["seconds"] for h in history),
        **extra,
        "epochs": history,
    }
    path.write_text(json.dumps(log, indent=2), encoding="utf-8")
    return log


def warmup_steps(total_steps: int, schedule: str = "onecycle") -> int:
    """Optimizer steps before the learning rate peaks (see :func:`make_lr_scheduler`).

    Returns:
        ``onecycle``: 25% of the steps (at least 2, at most half); ``cosine``: 5% (at least 2);
        0 below 4 steps (constant rate).
    """
    if total_steps < 4:
        return 0
    if schedule == "onecycle":
        return int(_onecycle_pct_start(total_steps) * total_steps)
    return max(2, int(0.05 * total_steps))


def _onecycle_pct_start(total_steps: int) -> float:
    return min(0.5, max(0.25, 2.0 / total_steps))


def make_lr_scheduler(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int,
                      schedule: str = "onecycle"):
    """Learning-rate schedule over the whole run, stepped once per optimizer step.

    ``onecycle``: Smith & Topin 2019 ("Super-Convergence"), warm-up on 25% of the steps.
    ``cosine``: linear warm-up on 5% of the steps (at least one), then cosine annealing to 1% of
    ``max_lr`` (Loshchilov & Hutter 2017, SGDR, without restarts). The warm-up is stretched to
    at least two steps so tiny runs keep a valid schedule; below 4 steps the rate stays at
    ``max_lr``.

    Args:
        optimizer: the optimizer whose ``lr`` the scheduler drives.
        max_lr: peak learning rate.
        total_steps: optimizer steps of the whole run (epochs x batches per epoch).
        schedule: ``"onecycle"`` or ``"cosine"``.

    Raises:
        ValueError: on another schedule name.
    """
    if total_steps < 4:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total_steps,
            pct_start=_onecycle_pct_start(total_steps), div_factor=10.0, final_div_factor=100.0)
    if schedule == "cosine":
        for group in optimizer.param_groups:
            group["lr"] = max_lr
        warmup = warmup_steps(total_steps, schedule)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup,
                                                       eta_min=max_lr * 0.01),
        ], milestones=[warmup])
    raise ValueError(f"unknown schedule {schedule!r}")


def _distributed() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def train(workspace: Path, params: Params, resume: bool = True, test_only: bool = False,
          deterministic: bool = False, print_every: int = 0) -> dict:
    """Runs the train stage in a workspace.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (see module docstring).

    Args:
        workspace: folder holding ``data/prepared`` (see ``training.prepare``).
        params: project params (groups ``train``, ``prepare`` and ``score``).
        resume: continue from ``models/model.pt`` when it was written with the same params and
            data and is not finished (a retried task continues where it stopped).
        test_only: only evaluate the existing checkpoint on the val split.
        deterministic: force deterministic torch kernels (also ``train.deterministic``).
        print_every: also print progress every this many steps (0: per epoch only).

    Returns:
        The train log (also written to ``models/train_log.json``): final ``train_loss``,
        ``val_accuracy``, ``val_business_weighted_score``, ``best_epoch``, ``stopped_early``,
        ``img_per_s``, ``epoch_seconds``, ``total_seconds``, ``pretrained``, ``weights_source``
        (see ``training.model.build_backbone``), ``num_classes``, ``world_size`` and the
        per-epoch ``epochs`` list.

    Raises:
        FileNotFoundError: when the prepared data (or, with ``test_only``, the checkpoint) is missing.
    """
    workspace = Path(workspace)
    cfg = params.train
    prepared = workspace / "data" / "prepared"
    ckpt_path = workspace / CHECKPOINT
    log_path = workspace / TRAIN_LOG
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)

    rank, world_size, local_rank = _distributed()
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    seed_everything(cfg.seed, deterministic or cfg.deterministic)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not (deterministic or cfg.deterministic)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    train_frame = pd.read_parquet(prepared / "train.parquet", columns=["category_path"])
    labels = sorted(train_frame["category_path"].unique().tolist())
    tree = LabelTree(labels)
    train_split = load_split(prepared, "train", labels, cfg)
    val_split = load_split(prepared, "val", labels, cfg)
    image_size = int(train_split.images.shape[1])
    fingerprint = data_fingerprint(train_split.frame)

    model, pretrained = build_model(labels, cfg)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")
    optimizer = make_optimizer(model, cfg, device)
    steps_per_epoch = max(1, (len(train_split) + cfg.batch_size - 1) // cfg.batch_size)
    epochs = planned_epochs(cfg, steps_per_epoch)
    lr_scheduler = make_lr_scheduler(optimizer, cfg.lr, epochs * steps_per_epoch, cfg.schedule)
    # only rank 0 evaluates and checkpoints, so only it keeps the average
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay > 0 and rank == 0 else None)
    kept = ema.module if ema is not None else model  # the weights evaluated and kept

    start_epoch, history = 0, []
    best = {"score": None, "epoch": None, "bad_epochs": 0, "stopped": False}
    ckpt = None
    if ckpt_path.is_file() and (resume or test_only):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if test_only:
        if ckpt is None:
            raise FileNotFoundError(f"--test-only needs a checkpoint at {ckpt_path}")
        model.load_state_dict(ckpt["model"])
        model.to(device)
        result = evaluate(model, criterion, load_split(prepared, "val", ckpt["labels"], cfg),
                          LabelTree(ckpt["labels"]), cfg, device, params.score,
                          _dtype(ckpt.get("precision", "float32")))
        print(json.dumps(result))
        return result
    same_run = (ckpt is not None
                and ckpt.get("params", {}).get("train") == params.to_dict()["train"]
                and ckpt.get("labels") == labels
                and ckpt.get("data_fingerprint") == fingerprint
                and ckpt.get("image_size") == image_size
                and "train_state" in ckpt)
    best_state = None
    if same_run:
        state = ckpt["train_state"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch = int(ckpt["epoch"]) + 1
        history = list(ckpt.get("history", []))
        best = dict(ckpt.get("best", best))
        best_state = ckpt["model"]
        if best["stopped"]:
            start_epoch = epochs
        if "rng_state" in state:
            torch.set_rng_state(state["rng_state"])  # dropout continues as if never interrupted
        if rank == 0:
            print(f"resuming from {ckpt_path} after epoch {ckpt['epoch']}", flush=True)
    elif ckpt is not None and rank == 0:
        print(f"ignoring {ckpt_path}: written with other params or data", flush=True)

    net: nn.Module = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        net = torch.compile(net)

    pinned = os.environ.get(PRECISION_ENV, "")
    if same_run and "precision" in ckpt:  # a resumed run keeps the precision it started in
        precision, probe_rates = ckpt["precision"], ckpt.get("precision_probe")
    elif pinned:
        if pinned not in ("float32", "bfloat16"):
            raise ValueError(f"{PRECISION_ENV}={pinned!r}: expected float32 or bfloat16")
        precision, probe_rates = pinned, None
    else:
        precision, probe_rates = "float32", None
        if rank == 0:
            chosen, probe_rates = resolve_precision(
                cfg, device, deterministic or cfg.deterministic,
                lambda: measure_precisions(model, criterion, train_split, tree, cfg, device))
            precision = _precision_name(chosen)
            if probe_rates:
                print("precision probe (img/s of a training step): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in probe_rates.items())
                      + f" -> {precision}", flush=True)
        if world_size > 1:  # every rank trains in rank 0's choice
            shared = [precision]
            dist.broadcast_object_list(shared, src=0)
            precision = shared[0]
    autocast = _dtype(precision)
    if rank == 0:
        print(f"train {len(train_split)} val {len(val_split)} classes {len(labels)} "
              f"levels {tree.sizes} image {image_size}px device {device} world {world_size} "
              f"threads {torch.get_num_threads()} pretrained {pretrained} precision {precision}", flush=True)
    patience = cfg.early_stopping_patience
    warmup = warmup_steps(epochs * steps_per_epoch, cfg.schedule)
    for epoch in range(start_epoch, epochs):
        stats = train_one_epoch(net, criterion, optimizer, lr_scheduler, train_split, tree, cfg,
                                device, epoch, print_every if rank == 0 else 0, rank, world_size, ema,
                                autocast)
        stop = False
        if rank == 0:
            improved = True
            if len(val_split):
                t0 = time.perf_counter()
                val = evaluate(kept, criterion, val_split, tree, cfg, device, params.score, autocast)
                stats.update(val_loss=val["loss"], val_accuracy=val["accuracy"],
                             val_business_weighted_score=val["business_weighted_score"],
                             eval_seconds=time.perf_counter() - t0)
                improved = best["score"] is None or val["business_weighted_score"] > best["score"]
            if improved or patience == 0:
                best.update(score=stats.get("val_business_weighted_score"), epoch=epoch, bad_epochs=0)
                best_state = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
            elif (epoch + 1) * steps_per_epoch > warmup:  # not while the learning rate still rises
                best["bad_epochs"] += 1
                stop = patience > 0 and best["bad_epochs"] >= patience
            best["stopped"] = stop
            history.append(stats)
            print(f"epoch {epoch}: loss {stats['train_loss']:.4f} "
                  f"val_acc {stats.get('val_accuracy', float('nan')):.4f} "
                  f"val_score {stats.get('val_business_weighted_score', float('nan')):.4f} "
                  f"{stats['img_per_s']:.1f} img/s {stats['seconds']:.1f}s"
                  + (" (best)" if best["epoch"] == epoch else ""), flush=True)
            _atomic_save({
                "model": best_state,  # the weights to serve: the best epoch so far
                "train_state": {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(),
                    "rng_state": torch.get_rng_state(),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                },
                "epoch": epoch,
                "best": best,
                "params": params.to_dict(),
                "labels": labels,
                "pretrained": pretrained,
                "image_size": image_size,
                "data_fingerprint": fingerprint,
                "history": history,
                "world_size": world_size,
                "precision": precision,
                "precision_probe": probe_rates,
            }, ckpt_path)
            if stop:
                print(f"early stopping: no better validation score for {patience} epochs; "
                      f"keeping epoch {best['epoch']}", flush=True)
        if world_size > 1:
            flag = [stop]
            dist.broadcast_object_list(flag, src=0)
            stop = bool(flag[0])
        if stop:
            break

    log = {}
    if rank == 0:
        last_val = next((h for h in reversed(history) if h["epoch"] == best["epoch"]), {})
        log = _write_log(log_path, history, {
            "pretrained": pretrained, "weights_source": model.weights_source,
            "num_classes": len(labels), "levels": tree.sizes,
            "n_train": len(train_split), "n_val": len(val_split), "image_size": image_size,
            "device": device.type, "precision": precision, "precision_probe": probe_rates,
            "world_size": world_size,
            "best_epoch": best["epoch"],
            "stopped_early": bool(best["stopped"]),
            "val_business_weighted_score": last_val.get("val_business_weighted_score"),
            "best_val_accuracy": last_val.get("val_accuracy"),
        })
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return log


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--workspace", default=".", help="workspace folder (default: .)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--test-only", action="store_true", help="only evaluate the checkpoint on val")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic torch kernels (also train.deterministic)")
    parser.add_argument("--print-every", type=int, default=0, help="progress every N steps")
    args = parser.parse_args(argv)
    result = train(Path(args.workspace), load_params(args.params), resume=not args.no_resume,
                   test_only=args.test_only, deterministic=args.deterministic,
                   print_every=args.print_every)
    if result:
        print(json.dumps({k: v for k, v in result.items() if k != "epochs"}, indent=2))
    return result


if __name__ == "__main__":
    main()
