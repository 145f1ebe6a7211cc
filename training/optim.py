"""Optimizer and learning-rate schedules of the train stage.

AdamW (fused kernel on CPU and CUDA) with no weight decay on biases, norms and embeddings, and a
one-cycle or cosine schedule stepped once per optimizer step over the whole run.
``train.min_steps`` raises the epochs of a small catalog (:func:`planned_epochs`).

A fine-tuned pretrained encoder (``train.image_encoder: finetune``) trains at
``train.encoder_lr_scale`` times the heads' learning rate (discriminative learning rates, Howard &
Ruder 2018, "Universal Language Model Fine-tuning"): its parameter groups carry ``lr_scale``, which
the schedules multiply their peak rate by.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.params import TrainParams


def _split_decay(modules, weight_decay: float, lr_scale: float) -> list[dict]:
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if (name == "bias" or isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm
                                              | nn.GroupNorm | nn.EmbeddingBag | nn.Embedding)):
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale}]


def param_groups(model: nn.Module, weight_decay: float, encoder_lr_scale: float = 1.0) -> list[dict]:
    """The model's trainable parameters in AdamW groups: decayed, and not decayed; and for a
    fine-tuned encoder (``model.finetunes_encoder``) two more groups of its own parameters.

    No weight decay on biases, norms and embeddings (torchvision's ``norm_weight_decay=0``).

    Args:
        model: the model.
        weight_decay: decay of the decayed groups.
        encoder_lr_scale: the fine-tuned encoder's learning rate as a fraction of the others'.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay, "lr_scale": 1.0}, {"params": [...],
        "weight_decay": 0.0, "lr_scale": 1.0}]``, then, for a fine-tuned encoder, the same two
        of its parameters with ``"lr_scale": encoder_lr_scale``.
    """
    encoder = model.image_encoder if getattr(model, "finetunes_encoder", False) else None
    inside = set() if encoder is None else {id(m) for m in encoder.modules()}
    groups = _split_decay((m for m in model.modules() if id(m) not in inside), weight_decay, 1.0)
    if encoder is not None:
        groups += [g for g in _split_decay(encoder.modules(), weight_decay, encoder_lr_scale) if g["params"]]
    return groups


def make_optimizer(model: nn.Module, cfg: TrainParams, device: torch.device) -> torch.optim.AdamW:
    """AdamW at ``cfg.lr`` over :func:`param_groups`, with PyTorch's fused kernel on CPU and CUDA.

    PyTorch's CPU default, the for-loop AdamW, updates the parameters one tensor at a time; the
    fused kernel updates them all at once (``benchmarks/train_step.py`` times both). The update
    is the same AdamW update (checked against the for-loop one in the unit tests).

    Args:
        model: the model whose parameters are trained.
        cfg: ``lr``, ``weight_decay`` and ``encoder_lr_scale``.
        device: where the parameters live; other devices than CPU and CUDA get the default
            implementation.

    Returns:
        A ``torch.optim.AdamW`` with the groups of :func:`param_groups`, each at ``cfg.lr``
        times its ``lr_scale``.
    """
    groups = param_groups(model, cfg.weight_decay, cfg.encoder_lr_scale)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True if device.type in ("cpu", "cuda") else None)


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
                      schedule: str = "onecycle") -> torch.optim.lr_scheduler.LRScheduler:
    """Learning-rate schedule over the whole run, stepped once per optimizer step.

    ``onecycle``: Smith & Topin 2019 ("Super-Convergence"), warm-up on 25% of the steps.
    ``cosine``: linear warm-up on 5% of the steps (at least one), then cosine annealing to 1% of
    ``max_lr`` (Loshchilov & Hutter 2017, SGDR, without restarts). The warm-up is stretched to
    at least two steps so tiny runs keep a valid schedule; below 4 steps the rate stays at
    ``max_lr``. A parameter group with ``lr_scale`` (:func:`param_groups`) follows the same
    shape at ``max_lr * lr_scale``.

    Args:
        optimizer: the optimizer whose ``lr`` the scheduler drives.
        max_lr: peak learning rate (of the groups with ``lr_scale`` 1).
        total_steps: optimizer steps of the whole run (epochs x batches per epoch).
        schedule: ``"onecycle"`` or ``"cosine"``.

    Raises:
        ValueError: on another schedule name.
    """
    if schedule not in ("onecycle", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}")
    peaks = [max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    if total_steps < 4 or schedule == "cosine":
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = group["initial_lr"] = peak
    if total_steps < 4:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=total_steps,
            pct_start=_onecycle_pct_start(total_steps), div_factor=10.0, final_div_factor=100.0)
    warmup = warmup_steps(total_steps, schedule)

    def factor(step: int) -> float:
        # linear warm-up from 10% of the peak, then cosine annealing to 1% (torch's LinearLR and
        # CosineAnnealingLR in closed form, so that every group keeps its own peak)
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        t = min(step - warmup, total_steps - warmup) / (total_steps - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
