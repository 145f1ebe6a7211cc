"""The precision a run trains in: fp32 or bf16 autocast, chosen once per run.

bf16 autocast (``train.amp``) runs on CUDA, and on CPUs with native bf16 (AVX512-BF16 or AMX)
where a measured training step is clearly faster in bf16 than in fp32 (:func:`resolve_precision`);
emulated bf16 is much slower than fp32, so other CPUs stay in fp32. A resumed run keeps the
precision it started in, and ``$LCP_TRAIN_PRECISION`` pins it (:func:`choose_precision`). A run
that starts from the champion's weights (``train.init: champion``) reuses the champion's
measurement instead of measuring again when it was taken on the same machine for the same
training step (:func:`inherited_probe`): a weekly season then measures once, not every week.
Figures of the probe on the machines it ran on: ``docs/measurements.md``.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from common.params import PRECISION_ENV, TrainParams
from training.data import ListingDataset, Split, to_device
from training.hierarchy import LabelTree
from training.optim import make_optimizer
from training.sampler import BatchIndex
from training.utils import unwrap_model

log = logging.getLogger(__name__)

# ``amp: auto`` keeps bf16 on a CPU only when a measured training step is at least this much
# faster than in fp32: bf16 rounds activations to 8 mantissa bits, which is worth it only for a
# clear gain, and a margin keeps near-ties (and timing noise) from flipping the choice between
# runs.
BF16_MIN_SPEEDUP = 1.15


@functools.cache  # asked on every training and evaluation step; the CPU does not change
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles).

    Without them, bf16 matmuls and convolutions are emulated, far slower than fp32.
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


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """bf16 (or ``dtype``) autocast on ``device``; a no-op context for None (fp32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``"bfloat16"``); None for ``"float32"``."""
    return None if precision == "float32" else getattr(torch, precision)


def precision_name(dtype: torch.dtype | None) -> str:
    """The name of an autocast dtype (``"bfloat16"``), ``"float32"`` for None; inverse of
    :func:`precision_dtype`."""
    return str(dtype or torch.float32).removeprefix("torch.")


def measure_precisions(model: nn.Module, criterion: nn.Module, split: Split, tree: LabelTree,
                       cfg: TrainParams, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                       repeats: int = 3, warmup: int = 2) -> dict[str, float]:
    """Training-step throughput of ``model`` in fp32 and under ``dtype`` autocast, on one batch.

    A copy of the model runs a training step (forward, backward and a
    :func:`~training.optim.make_optimizer` step) on the first ``cfg.batch_size`` rows of
    ``split`` (no augmentation): ``warmup`` untimed rounds, then ``repeats`` timed rounds, each
    round one step per precision; the fastest step of each is kept. More than one warm-up round,
    because a process's first fp32 steps run slower than its later ones, enough to flip the
    comparison. The model itself and the global RNG streams are left untouched, so a seeded run
    trains the same with or without the probe. Costs ``2 * (warmup + repeats)`` training steps.

    Returns:
        ``{"float32": img/s, "<dtype>": img/s}`` (e.g. ``"bfloat16"``), images per second.
    """
    probe = copy.deepcopy(unwrap_model(model)).train()
    n = min(len(split), cfg.batch_size)
    dataset = ListingDataset(split, with_images=probe.image_encoder is not None,
                             channels_last=cfg.channels_last)
    *inputs, targets = to_device(dataset[BatchIndex.of(torch.arange(n))], device)
    level_targets = tree.level_targets(targets)
    optimizer = make_optimizer(probe, cfg, device)
    best = {None: float("inf"), dtype: float("inf")}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(warmup + repeats):
            for candidate in best:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                with autocast(device, candidate):
                    level_logits = probe(*inputs)
                probe.level_loss(level_logits, level_targets, criterion, denominator=n).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:  # a process's first steps are slower, fp32's the most
                    best[candidate] = min(best[candidate], time.perf_counter() - t0)
    return {precision_name(d): n / t for d, t in best.items()}


PROBE_IRRELEVANT_KEYS = frozenset({"epochs", "warm_epochs", "init", "seed", "lr", "schedule",
                                   "label_smoothing", "early_stopping_patience", "min_steps", "deterministic",
                                   "weights", "replay_size", "replay_min_per_leaf", "full_retrain_every",
                                   "full_retrain", "title_max_rows"})
"""``train`` params that do not change what a training step costs: a champion's probe is reused
(:func:`inherited_probe`) when every *other* ``train`` param is the same."""


def machine_fingerprint(device: torch.device) -> str:
    """What a probe's timing depends on besides the model: the device (CPU model name, or the
    CUDA device's), the CPU's vector capability, torch's version and its intra-op threads.

    Returns:
        One line, e.g. ``"cpu AMD EPYC x86_64 AVX512 torch 2.14.1 threads 2"``.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
        except OSError:
            pass
        name = f"{name} {platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    return f"{device.type} {name} torch {torch.__version__} threads {torch.get_num_threads()}"


def probe_conditions(device: torch.device, cfg: TrainParams, image_size: int) -> dict:
    """What a probe's figures hold for: ``{"machine", "image_size", "train"}`` (the ``train``
    params apart from :data:`PROBE_IRRELEVANT_KEYS`); two runs with equal conditions would
    measure the same training step on the same machine."""
    return {"machine": machine_fingerprint(device), "image_size": int(image_size),
            "train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in PROBE_IRRELEVANT_KEYS}}


def probe_record(rates: dict[str, float] | None, device: torch.device, cfg: TrainParams,
                 image_size: int, source: str = "measured") -> dict | None:
    """What a checkpoint stores of a probe (``precision_probe_record``), for a later run to reuse.

    Args:
        rates: the probe's img/s (:func:`measure_precisions`), or None when nothing was measured.
        device: the device it ran on.
        cfg: the run's ``train`` params.
        image_size: the run's image side, pixels.
        source: ``"measured"``, or where an inherited probe came from (e.g. ``"champion:v3"``).

    Returns:
        ``{"rates", "machine", "train", "image_size", "source"}``, or None without rates.
    """
    if not rates:
        return None
    return {"rates": dict(rates), **probe_conditions(device, cfg, image_size), "source": source}


def inherited_probe(record: dict | None, cfg: TrainParams, device: torch.device,
                    image_size: int) -> dict[str, float] | None:
    """The champion's probe rates, when they hold for this run: measured (or itself inherited)
    on this machine (:func:`machine_fingerprint`), at this image size, for the same ``train``
    params apart from :data:`PROBE_IRRELEVANT_KEYS`; else None (the run measures).

    Args:
        record: the champion checkpoint's ``precision_probe_record`` (:func:`probe_record`), or None.
        cfg: this run's ``train`` params.
        device: this run's device.
        image_size: this run's image side, pixels.

    Returns:
        ``{"float32": img/s, "bfloat16": img/s}`` or None.
    """
    if not record or not record.get("rates"):
        return None
    same = all(record.get(k) == v for k, v in probe_conditions(device, cfg, image_size).items())
    return dict(record["rates"]) if same else None


def resolve_precision(cfg: TrainParams, device: torch.device, deterministic: bool = False,
                      measure: Callable[[], dict[str, float]] | None = None
                      ) -> tuple[torch.dtype | None, dict[str, float] | None]:
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
    fp32, low = rates["float32"], rates[precision_name(dtype)]
    return (dtype if low >= BF16_MIN_SPEEDUP * fp32 else None), rates


def choose_precision(cfg: TrainParams, device: torch.device, deterministic: bool,
                     measure: Callable[[], dict[str, float]],
                     resumed: tuple[str, dict | None] | None = None, rank: int = 0,
                     world_size: int = 1) -> tuple[str, dict[str, float] | None]:
    """The precision of a run, in this order: the resumed checkpoint's, the pinned one
    (``$LCP_TRAIN_PRECISION``, set by ``promotion.reproduce``), else :func:`resolve_precision`'s
    on rank 0, broadcast so that every rank trains in it.

    Args:
        cfg, device, deterministic, measure: see :func:`resolve_precision`.
        resumed: ``(precision, probe img/s)`` stored in the checkpoint being resumed, or None.
        rank, world_size: this process's rank and the number of processes.

    Returns:
        ``(precision name, the probe's img/s or None)``.

    Raises:
        ValueError: when ``$LCP_TRAIN_PRECISION`` is neither float32 nor bfloat16.
    """
    if resumed is not None:
        return resumed
    pinned = os.environ.get(PRECISION_ENV, "")
    if pinned:
        if pinned not in ("float32", "bfloat16"):
            raise ValueError(f"{PRECISION_ENV}={pinned!r}: expected float32 or bfloat16")
        return pinned, None
    precision, rates = "float32", None
    if rank == 0:
        chosen, rates = resolve_precision(cfg, device, deterministic, measure)
        precision = precision_name(chosen)
        if rates:
            log.info("precision probe (img/s of a training step): %s -> %s",
                     ", ".join(f"{k} {v:.1f}" for k, v in rates.items()), precision)
    if world_size > 1:
        shared = [precision]
        dist.broadcast_object_list(shared, src=0)
        precision = shared[0]
    return precision, rates
