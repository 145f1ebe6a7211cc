"""Which rows each training step reads: the epoch's row order, its global batches, each rank's share.

:class:`EpochBatchSampler` is the sampler of the training ``DataLoader``, built once per run and
told the epoch with :meth:`~EpochBatchSampler.set_epoch` (as ``torch.utils.data.DistributedSampler``
is). Each epoch it orders the rows (:func:`epoch_order`: a seeded permutation, or a class-balanced
draw), cuts the order into global batches of ``batch_size`` rows, and gives this rank every
``world_size``-th row of each (so under DDP the global batch stays ``batch_size`` and the ranks'
shares of an epoch are disjoint and cover it). Each batch also carries an augmentation seed, so the
random flips and crops of the training preset depend only on (seed, epoch, step), not on the
number of ranks or DataLoader workers, nor on where a resumed run restarted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch


class BatchIndex(NamedTuple):
    """One step's rows for one rank, as the sampler hands them to the dataset.

    Attributes:
        rows: int64 ``(b,)`` row indices into the split, this rank's share of the global batch.
        positions: int64 ``(b,)`` the places of ``rows`` in the global batch.
        global_size: rows of the global batch over all ranks (the loss is a sum over them).
        seed: seed of the global batch's augmentation draws; None: no random augmentation.
    """

    rows: torch.Tensor
    positions: torch.Tensor
    global_size: int
    seed: int | None = None

    @classmethod
    def of(cls, rows: torch.Tensor) -> BatchIndex:
        """A whole batch of ``rows`` (int64 ``(b,)``) read in one process, without augmentation."""
        return cls(rows, torch.arange(len(rows)), len(rows), None)


def epoch_order(targets: torch.Tensor, epoch: int, seed: int, sampling: str = "uniform",
                balance_power: float = 0.5) -> torch.Tensor:
    """Row order of one epoch: a seeded permutation, or a class-balanced draw of the same length.

    Args:
        targets: int64 ``(N,)`` leaf class of each row (-1, an unknown class, counts as class 0).
        epoch: epoch number (part of the seed).
        seed: ``train.seed``.
        sampling: ``"uniform"`` (each row once) or ``"class_balanced"`` (rows drawn with
            replacement with weight ``n_c ** -balance_power``, ``n_c`` the row's class size;
            Mahajan et al. 2018's square-root sampling at 0.5).
        balance_power: 0 is uniform, 1 gives every class the same expected share.

    Returns:
        int64 ``(N,)`` row indices.
    """
    n = len(targets)
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    if sampling == "uniform" or n == 0:
        return torch.randperm(n, generator=generator)
    targets = targets.clamp(min=0)
    weights = torch.bincount(targets).float()[targets].pow(-balance_power)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def augment_seed(seed: int, epoch: int, step: int) -> int:
    """Seed of the augmentation draws of one global batch (NumPy's ``SeedSequence`` mixing).

    Returns:
        An int in ``[0, 2**64)``, for ``torch.Generator.manual_seed``.
    """
    mixed = np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, epoch, step])
    return int(mixed.generate_state(1, np.uint64)[0])


class EpochBatchSampler(torch.utils.data.Sampler[BatchIndex]):
    """Batch sampler of a split: per epoch, this rank's share of every global batch.

    Args:
        targets: int64 ``(N,)`` leaf class of each row (read by class-balanced sampling).
        batch_size: rows of a global batch (all ranks together); the last one may be smaller.
        shuffle: order rows by :func:`epoch_order` and seed augmentation; False: rows in order,
            no augmentation (evaluation).
        seed: ``train.seed``.
        sampling, balance_power: see :func:`epoch_order`.
        rank, world_size: this process's rank and the number of processes.

    Raises:
        ValueError: when ``rank`` is not in ``[0, world_size)``.
    """

    def __init__(self, targets: torch.Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 sampling: str = "uniform", balance_power: float = 0.5, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.targets = targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.sampling = sampling
        self.balance_power = balance_power
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def global_batch_size(self, step: int) -> int:
        """Rows of global batch ``step`` over all ranks (``batch_size``, less for the last)."""
        return min(self.batch_size, len(self.targets) - step * self.batch_size)

    def order(self) -> torch.Tensor:
        """int64 ``(N,)`` row order of the current epoch over all ranks."""
        if not self.shuffle:
            return torch.arange(len(self.targets))
        return epoch_order(self.targets, self.epoch, self.seed, self.sampling, self.balance_power)

    def __iter__(self) -> Iterator[BatchIndex]:
        order = self.order()
        for step in range(len(self)):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            positions = torch.arange(self.rank, len(batch), self.world_size)
            seed = augment_seed(self.seed, self.epoch, step) if self.shuffle else None
            yield BatchIndex(batch[positions], positions, len(batch), seed)
