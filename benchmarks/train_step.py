"""Where a training step of the whole model goes: batch assembly, forward, backward, optimizer.

Builds the model ``params.yaml`` describes (fused by default: image + text + structured
branches) over a workspace's prepared training split and times ``--steps`` training steps
(after ``--warmup`` untimed ones) phase by phase, the way ``training.train.train_one_epoch``
runs them: ``training.data.ListingDataset`` (train preset) + ``to_device``, the forward pass
under the run's autocast, the level loss, ``zero_grad(set_to_none=True)`` + backward, and the
optimizer step. It does so
for two optimizers, each on a freshly built model with the same seed (the data is read once),
alternating ``--rounds`` times so that a noisy machine affects both alike:

- ``fused``: ``training.optim.make_optimizer`` (AdamW with PyTorch's fused kernel on CPU/CUDA);
- ``for-loop``: ``torch.optim.AdamW(..., foreach=False)``, PyTorch's default on CPU, one
  parameter tensor at a time.

Prints, per optimizer, the median milliseconds of each phase over the rounds and the images
per second of the whole step, as JSON. CPU only (it is about the CPU path; on CUDA the
phases overlap asynchronously and per-phase wall times mean little without synchronising).

Usage::

    python benchmarks/train_step.py --workspace .state/workspace --bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

PHASES = ("batch", "forward", "backward", "optimizer")


def load_workspace(workspace: Path) -> tuple:
    """The train params, sorted leaf labels, label tree and training split of a workspace.

    Args:
        workspace: DVC workspace with ``params.yaml`` and ``data/prepared``.

    Returns:
        ``(TrainParams, labels, LabelTree, Split)``, read once and shared by every round.
    """
    from common.params import load_params
    from training.data import load_split
    from training.hierarchy import LabelTree

    cfg = load_params(workspace / "params.yaml").train
    prepared = workspace / "data" / "prepared"
    labels = sorted(pd.read_parquet(prepared / "train.parquet", columns=["category_path"])
                    ["category_path"].unique().tolist())
    return cfg, labels, LabelTree(labels), load_split(prepared, "train", labels, cfg)


def time_steps(loaded: tuple, optimizer_kind: str, bf16: bool, steps: int, warmup: int,
               seed: int = 0) -> dict[str, float]:
    """Milliseconds per phase of ``steps`` training steps of a freshly built model (mean over the steps).

    Args:
        loaded: :func:`load_workspace`'s result.
        optimizer_kind: ``"fused"`` or ``"for-loop"``.
        bf16: run forward under CPU bf16 autocast.
        steps: timed steps, consecutive batches of ``train.batch_size`` rows.
        warmup: untimed steps before them.
        seed: torch seed of the model's initialisation.

    Returns:
        ``{phase: ms}`` for :data:`PHASES`, plus ``"step"`` (their sum), ``"img_per_s"`` and
        the model's ``"parameters_millions"``.

    Raises:
        ValueError: when the split has fewer than ``(warmup + steps) * batch_size`` listings.
    """
    from training.data import ListingDataset, to_device
    from training.model import build_model
    from training.optim import make_optimizer, param_groups
    from training.precision import autocast
    from training.presets import TrainPreset
    from training.sampler import BatchIndex

    cfg, labels, tree, split = loaded
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model, _ = build_model(labels, cfg)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")
    if optimizer_kind == "fused":
        optimizer = make_optimizer(model, cfg, device)
    else:
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, foreach=False)
    dtype = torch.bfloat16 if bf16 else None
    n = cfg.batch_size
    if len(split) < n * (warmup + steps):
        raise ValueError(f"{len(split)} training listings, {n * (warmup + steps)} needed")
    dataset = ListingDataset(split, TrainPreset(0.5, cfg.crop_padding), model.image_encoder is not None,
                             cfg.channels_last)
    totals = dict.fromkeys(PHASES, 0.0)
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        index = torch.arange(step * n, (step + 1) * n)
        *inputs, targets = to_device(dataset[BatchIndex(index, torch.arange(n), n, seed=step)], device)
        t1 = time.perf_counter()
        with autocast(device, dtype):
            level_logits = model(*inputs)
        loss = model.level_loss(level_logits, tree.level_targets(targets), criterion, denominator=n)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if step >= warmup:
            for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                totals[phase] += seconds
    result = {phase: 1000 * seconds / steps for phase, seconds in totals.items()}
    result["step"] = sum(result.values())
    result["img_per_s"] = 1000 * n / result["step"]
    result["parameters_millions"] = sum(p.numel() for p in model.parameters()) / 1e6
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=".state/workspace",
                        help="DVC workspace after a run (params.yaml and data/prepared)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per optimizer")
    parser.add_argument("--bf16", action="store_true", help="forward under CPU bf16 autocast")
    args = parser.parse_args(argv)
    loaded = load_workspace(Path(args.workspace).resolve())
    runs: dict[str, list[dict]] = {"fused": [], "for-loop": []}
    for _ in range(args.rounds):
        for kind in runs:
            runs[kind].append(time_steps(loaded, kind, args.bf16, args.steps, args.warmup))
    result = {"threads": torch.get_num_threads(), "bf16": args.bf16, "steps": args.steps,
              "rounds": args.rounds}
    for kind, rounds in runs.items():
        result[kind] = {key: round(statistics.median(r[key] for r in rounds), 1) for key in rounds[0]}
    result["optimizer_speedup"] = round(result["for-loop"]["optimizer"] / result["fused"]["optimizer"], 2)
    result["step_speedup"] = round(result["for-loop"]["step"] / result["fused"]["step"], 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
