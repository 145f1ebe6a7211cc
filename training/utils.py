"""Run utilities of the train stage (as torchvision's ``references/classification/utils.py``):
distributed set-up, seeding, the checkpoint dict, its resume check and the resume itself, early
stopping, the weight EMA, and the train log.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process joins one process group (NCCL on CUDA,
gloo on CPU); rank 0 evaluates, decides early stopping and writes the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from common.params import TrainParams

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from training.model import ListingClassifier


def distributed_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def select_device(local_rank: int, world_size: int) -> torch.device:
    """This process's GPU (``local_rank`` under torchrun, else the current one), or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device, world_size: int) -> None:
    """Joins the process group of a multi-process run (NCCL on CUDA, gloo on CPU)."""
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def close_distributed(world_size: int) -> None:
    """Waits for every rank, then leaves the process group."""
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def broadcast_flag(flag: bool, world_size: int) -> bool:
    """Rank 0's ``flag``, on every rank."""
    if world_size <= 1:
        return flag
    shared = [flag]
    dist.broadcast_object_list(shared, src=0)
    return bool(shared[0])


def gather_counts(count: int, world_size: int) -> list[int]:
    """Every rank's ``count``, in rank order, on every rank (``[count]`` in one process)."""
    if world_size <= 1:
        return [int(count)]
    counts: list = [None] * world_size
    dist.all_gather_object(counts, int(count))
    return [int(c) for c in counts]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and torch; optionally forces deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def configure_torch(cfg: TrainParams, device: torch.device, deterministic: bool) -> None:
    """Seeds, thread count (``train.num_threads``, 0: torch's default) and CUDA kernel choices."""
    seed_everything(cfg.seed, deterministic)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def unwrap_model(model: nn.Module) -> ListingClassifier:
    """The classifier inside a DDP and/or ``torch.compile`` wrapper."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def wrap_model(model: nn.Module, device: torch.device, world_size: int, compile: bool) -> nn.Module:
    """The module the training loop calls: DDP over ``model`` under torchrun, compiled on CUDA
    when ``compile`` (``torch.compile`` pays off only there)."""
    net = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile and device.type == "cuda":
        net = torch.compile(net)
    return net


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """Exponential moving average of the weights and BatchNorm buffers (torchvision reference's
    ``--model-ema``), updated after every optimizer step; None when ``decay`` is 0."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class EarlyStopping:
    """Keeps the epoch with the best validation score and stops after ``patience`` worse ones.

    Epochs that end while the learning rate still warms up (``(epoch + 1) * steps_per_epoch <=
    warmup``) do not count towards the patience: a rising rate makes val worse on purpose.
    With ``patience`` 0 (off) every epoch is kept; without a val score (empty val split) too.

    Args:
        patience: ``train.early_stopping_patience``.
        warmup: optimizer steps of the warm-up (``training.optim.warmup_steps``).
        steps_per_epoch: optimizer steps per epoch.
    """

    def __init__(self, patience: int, warmup: int, steps_per_epoch: int) -> None:
        self.patience, self.warmup, self.steps_per_epoch = patience, warmup, steps_per_epoch
        self.score: float | None = None
        self.epoch: int | None = None
        self.bad_epochs = 0
        self.stopped = False

    def update(self, epoch: int, score: float | None) -> bool:
        """Records an epoch's score (the business-weighted score on val, None without val).

        Returns:
            Whether this epoch's weights become the ones kept; ``stopped`` tells whether to stop.
        """
        keep = score is None or self.score is None or score > self.score or self.patience == 0
        stop = False
        if keep:
            self.score, self.epoch, self.bad_epochs = score, epoch, 0
        elif (epoch + 1) * self.steps_per_epoch > self.warmup:
            self.bad_epochs += 1
            stop = self.patience > 0 and self.bad_epochs >= self.patience
        self.stopped = stop
        return keep

    def state_dict(self) -> dict:
        """``{"score", "epoch", "bad_epochs", "stopped"}``, the checkpoint's ``best`` entry."""
        return {"score": self.score, "epoch": self.epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.score, self.epoch = state.get("score"), state.get("epoch")
        self.bad_epochs, self.stopped = int(state.get("bad_epochs", 0)), bool(state.get("stopped", False))


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path`` (tensors on the CPU), or None when there is none."""
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def resumable(ckpt: dict | None, meta: dict) -> bool:
    """Whether a checkpoint continues this run: written with the same ``train`` params, labels,
    training data (fingerprint), image size and start (``init``: scratch or the same champion),
    and holding the training state or being the finished run's (:func:`final_checkpoint_dict`).

    Args:
        ckpt: the checkpoint, or None.
        meta: this run's checkpoint fields (see :func:`checkpoint_dict`).
    """
    return (ckpt is not None
            and ckpt.get("params", {}).get("train") == meta["params"]["train"]
            and all(ckpt.get(key) == meta[key] for key in ("labels", "data_fingerprint", "image_size"))
            and ckpt.get("init", "scratch") == meta.get("init", "scratch")
            and ("train_state" in ckpt or bool(ckpt.get("finished"))))


def checkpoint_dict(model: nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler,
                    ema: AveragedModel | None, epoch: int, kept_state: dict, best: dict,
                    history: list[dict], meta: dict) -> dict:
    """The checkpoint written after every epoch (``models/model.pt``).

    Args:
        model, optimizer, lr_scheduler, ema: the training state, to resume from.
        epoch: the last finished epoch.
        kept_state: the weights to serve (the best epoch so far), the ``model`` entry.
        best: :meth:`EarlyStopping.state_dict`.
        history: the per-epoch stats so far.
        meta: ``params``, ``labels``, ``pretrained``, ``image_size``, ``data_fingerprint``,
            ``world_size``, ``init``, ``precision``, ``precision_probe``,
            ``precision_probe_record`` of the run.
    """
    return {
        **_run_records(epoch, kept_state, best, history, meta),
        "train_state": {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "rng_state": torch.get_rng_state(),  # dropout continues as if never interrupted
            **({"ema": ema.state_dict()} if ema is not None else {}),
        },
    }


def _run_records(epoch: int, kept_state: dict, best: dict, history: list[dict], meta: dict) -> dict:
    """What both checkpoints hold besides the training state: the served weights and the run's records."""
    return {"model": kept_state, "epoch": epoch, "best": best, "history": history, **meta}


def final_checkpoint_dict(epoch: int, kept_state: dict, best: dict, history: list[dict], meta: dict,
                          ema: AveragedModel | None = None) -> dict:
    """The checkpoint a finished run leaves (``models/model.pt``, the DVC output that is registered
    and served): :func:`checkpoint_dict` without ``train_state`` and with ``finished: True``.

    The training state (optimizer moments, the raw weights, the EMA copy, the RNG) is only needed
    to continue an interrupted run, and was three quarters of the file (453 MB of a 48 px ResNet-18
    fused model's, of which the weights served are 113 MB); every copy of the checkpoint (DVC
    cache and remote, MLflow's model artifacts) and every load of it paid for it. A finished
    checkpoint still resumes (:func:`resume`): to the end of the run, nothing re-trained.

    Args:
        epoch: the last epoch run.
        kept_state: the weights to serve (the best epoch's), the ``model`` entry.
        best: :meth:`EarlyStopping.state_dict`.
        history: the per-epoch stats.
        meta: the run's checkpoint fields, as for :func:`checkpoint_dict`.
        ema: the weight EMA, when the run kept one: its number of averaged optimizer steps is
            recorded as ``ema_updates``.
    """
    final = {**_run_records(epoch, kept_state, best, history, meta), "finished": True}
    if ema is not None:
        final["ema_updates"] = int(ema.n_averaged)
    return final


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, then renamed over ``path`` (never half written)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_train_log(path: Path, history: list[dict], extra: dict) -> dict:
    """Writes ``models/train_log.json``: the last epoch's figures, ``extra``, and ``epochs``.

    Returns:
        The log: ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
        ``img_per_s``, ``epoch_seconds`` (of the last epoch), ``total_seconds`` (s, all epochs),
        the keys of ``extra``, and ``epochs`` (``history``).
    """
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


@dataclass
class Progress:
    """What a run has done so far: restored from the checkpoint it resumes, else empty."""

    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    kept_state: dict | None = None  # the weights of the best epoch so far
    precision: tuple[str, dict | None] | None = None  # (name, probe) a resumed run keeps
    epochs_run: list[int] = field(default_factory=list)  # the epochs this process trained


def resume(path: Path, ckpt: dict | None, meta: dict, model: nn.Module, optimizer, lr_scheduler,
           ema: AveragedModel | None, stopper: EarlyStopping, epochs: int, rank: int) -> Progress:
    """Restores the training state of a checkpoint that continues this run.

    Args:
        path: the checkpoint's file (named in the messages).
        ckpt: the checkpoint (:func:`read_checkpoint`), or None.
        meta: this run's checkpoint fields (see :func:`resumable`).
        model, optimizer, lr_scheduler, ema, stopper: loaded in place from the checkpoint.
        epochs: the run's planned epochs; a finished or early-stopped run starts there.
        rank: this process's rank (rank 0 logs).

    Returns:
        The run's :class:`Progress`; empty when the checkpoint does not continue this run.
    """
    if not resumable(ckpt, meta):
        if ckpt is not None and rank == 0:
            log.info("ignoring %s: written with other params or data", path)
        return Progress()
    finished = bool(ckpt.get("finished"))
    if not finished:  # a finished run's checkpoint holds no training state: nothing is left to train
        state = ckpt["train_state"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if "rng_state" in state:
            torch.set_rng_state(state["rng_state"])
    stopper.load_state_dict(ckpt.get("best", {}))
    if rank == 0:
        log.info("resuming from %s after epoch %s%s", path, ckpt["epoch"],
                 " (the run had finished)" if finished else "")
    precision = (ckpt["precision"], ckpt.get("precision_probe")) if "precision" in ckpt else None
    start = epochs if stopper.stopped or finished else int(ckpt["epoch"]) + 1
    return Progress(start, list(ckpt.get("history", [])), ckpt["model"], precision)


def end_epoch(epoch: int, stats: dict, kept: nn.Module, stopper: EarlyStopping,
              progress: Progress) -> None:
    """Rank 0 after an epoch's validation: early stopping's bookkeeping, the history, a line."""
    if stopper.update(epoch, stats.get("val_business_weighted_score")):
        progress.kept_state = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
    progress.history.append(stats)
    log.info("epoch %d: loss %.4f val_acc %.4f val_score %.4f %.1f img/s %.1fs%s", epoch, stats["train_loss"],
             stats.get("val_accuracy", float("nan")), stats.get("val_business_weighted_score", float("nan")),
             stats["img_per_s"], stats["seconds"], " (best)" if stopper.epoch == epoch else "")
    if stopper.stopped:
        log.info("early stopping: no better validation score for %d epochs; keeping epoch %s",
                 stopper.patience, stopper.epoch)
