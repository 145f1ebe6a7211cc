"""Optimizer and learning-rate schedules of the train stage.

AdamW (fused kernel on CPU and CUDA) with no weight decay on biases, norms and embeddings, and a
one-cycle or cosine schedule stepped once per optimizer step over the whole run.
``train.min_steps`` raises the epochs of a small catalog (:func:`planned_epochs`).
"""

from __future__ import annotations

import torch
from torch import nn

from common.params import TrainParams


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The model's trainable parameters in two AdamW groups: decayed, and not decayed.

    No weight decay on biases, norms and embeddings (torchvision's ``norm_weight_decay=0``).

    Args:
        model: the model.
        weight_decay: decay of the first group.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``.
    """
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
    """AdamW at ``cfg.lr`` over :func:`param_groups`, with PyTorch's fused kernel on CPU and CUDA.

    PyTorch's CPU default, the for-loop AdamW, updates the parameters one tensor at a time; the
    fused kernel updates them all at once (``benchmarks/train_step.py`` times both). The update
    is the same AdamW update (checked against the for-loop one in the unit tests).

    Args:
        model: the model whose parameters are trained.
        cfg: ``lr`` and ``weight_decay``.
        device: where the parameters live; other devices than CPU and CUDA get the default
            implementation.

    Returns:
        A ``torch.optim.AdamW`` with two parameter groups (decayed, not decayed).
    """
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             fused=True if device.type in ("cpu", "cuda") else None)


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
