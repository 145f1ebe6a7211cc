"""Training throughput: our pipeline vs. a plain torchvision ImageFolder + PIL pipeline.

Both train the same model (``training.model.ListingClassifier``, image branch only, so the
comparison is about feeding images) with the same optimizer, batch size and image size, on the
same listings, in one process, one after the other:

- **ours**: the train stage's own loader (``training.data.make_loader`` over a
  ``ListingDataset`` with the train preset and an ``EpochBatchSampler``): the prepare stage's
  uint8 image cache (memory-mapped ``.npy``), sliced, flipped and normalised (no JPEG decoding
  during epochs).
- **reference**: a ``torchvision.datasets.ImageFolder`` over the original JPEG files (one folder
  per class, symlinks) with ``Resize`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``,
  read by a ``DataLoader`` with ``--workers`` worker processes, as in torchvision's
  ``references/classification/train.py``.

Prints images/s of each (after ``--warmup`` batches), the ratio, and the peak RSS of the
process (``resource.getrusage``, KiB on Linux) after each phase; also the input pipelines alone
(no model), which is what the cache changes: at small image sizes on a CPU the model's compute
bounds the end-to-end ratio. ``--bf16`` adds our pipeline with CPU bf16 autocast. Last,
``ours_as_trained`` is our pipeline as the train stage runs it: its optimizer
(``training.optim.make_optimizer``, fused AdamW) and, with ``--bf16``, bf16 autocast; the
reference keeps the optimizer torchvision's reference script builds for ``--opt adamw``
(``torch.optim.AdamW`` with its defaults: the for-loop implementation on CPU).

Usage::

    python benchmarks/train_throughput.py --workspace .state/workspace --batches 30
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model(num_classes: int, backbone: str) -> nn.Module:
    from common.params import TrainParams
    from training.model import build_model

    model, _ = build_model(num_classes, TrainParams(backbone=backbone, branches="image", weights="none"))
    return model.to(memory_format=torch.channels_last)


def _step(model: nn.Module, optimizer, criterion, images: torch.Tensor, targets: torch.Tensor,
          bf16: bool = False) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(images, None, None)[-1]
    loss = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _our_batches(loader, steps: int):
    """The first ``steps`` batches of a train loader, over as many epochs as it takes."""
    step, epoch = 0, 0
    while step < steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            yield batch
            step += 1
            if step >= steps:
                return
        epoch += 1


def _our_loader(prepared: Path, labels: list[str], args, workers: int):
    """The train stage's loader over the training split, image branch only, flips included;
    returns ``(loader, TrainParams)``."""
    from common.params import TrainParams
    from training.data import ListingDataset, load_split, make_loader
    from training.presets import TrainPreset
    from training.sampler import EpochBatchSampler

    cfg = TrainParams(branches="image", text_buckets=1024, lr=1e-3)
    split = load_split(prepared, "train", labels, cfg)
    return make_loader(ListingDataset(split, TrainPreset(0.5)),
                       EpochBatchSampler(split.targets, args.batch_size, seed=0), workers,
                       torch.device("cpu")), cfg


def bench_ours(prepared: Path, labels: list[str], args, bf16: bool = False, fused: bool = False) -> float:
    """Images/s of training with the train stage's own loader (over the prepare stage's
    memory-mapped uint8 cache, flips included). ``fused``: the train stage's optimizer
    (``training.optim.make_optimizer``, fused AdamW) instead of the reference's
    ``torch.optim.AdamW`` defaults."""
    from training.data import to_device
    from training.optim import make_optimizer

    loader, cfg = _our_loader(prepared, labels, args, args.our_workers)
    torch.manual_seed(0)
    model = _model(len(labels), args.backbone)
    optimizer = (make_optimizer(model, cfg, torch.device("cpu")) if fused
                 else torch.optim.AdamW(model.parameters(), lr=1e-3))
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen, t0 = 0, 0.0
    for step, batch in enumerate(_our_batches(loader, args.warmup + args.batches)):
        if step == args.warmup:
            seen, t0 = 0, time.perf_counter()
        images, *_, targets = to_device(batch, torch.device("cpu"))
        _step(model, optimizer, criterion, images, targets, bf16)
        seen += len(targets)
    return seen / (time.perf_counter() - t0)


def bench_feeding(prepared: Path, listings: Path, labels: list[str], size: int, args) -> dict:
    """Images/s of the input pipelines alone (no model): our batch assembly vs. the reference
    DataLoader, about the same number of images (at most one epoch of ours)."""
    loader, _ = _our_loader(prepared, labels, args, 0)
    t0, n = time.perf_counter(), 0
    for batch in _our_batches(loader, min(len(loader), args.batches)):
        n += len(batch[-1])
    ours = n / (time.perf_counter() - t0)
    loader, cleanup = _reference_loader(listings, prepared, labels, size, args)
    try:
        t0, seen = time.perf_counter(), 0
        for x, _ in loader:
            seen += len(x)
            if seen >= n:
                break
        reference = seen / (time.perf_counter() - t0)
    finally:
        cleanup()
    return {"feeding_ours_img_per_s": round(ours, 1), "feeding_reference_img_per_s": round(reference, 1)}


def _reference_loader(listings: Path, prepared: Path, labels: list[str], size: int, args):
    """torchvision's reference input pipeline over the original JPEG files; returns
    ``(loader, cleanup)``."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from common.store import image_path
    from training.presets import IMAGENET_MEAN, IMAGENET_STD

    frame = pd.read_parquet(prepared / "train.parquet", columns=["category_path", "image_key", "listing_id"])
    tmp = tempfile.TemporaryDirectory(prefix="imagefolder-")
    root = Path(tmp.name)
    for i, row in enumerate(frame.itertuples()):
        folder = root / f"c{labels.index(row.category_path):04d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.jpg").symlink_to(image_path(listings, row.image_key))
    dataset = datasets.ImageFolder(root, transform=transforms.Compose([
        transforms.Resize((size, size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    return loader, tmp.cleanup


def bench_reference(listings: Path, prepared: Path, labels: list[str], size: int, args) -> float:
    """Images/s of training from JPEG files through ImageFolder + PIL + DataLoader."""
    loader, cleanup = _reference_loader(listings, prepared, labels, size, args)
    try:
        torch.manual_seed(0)
        model = _model(len(labels), args.backbone)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        criterion = nn.CrossEntropyLoss()
        model.train()
        seen, t0, step = 0, 0.0, 0
        while step < args.warmup + args.batches:
            for x, y in loader:
                if step == args.warmup:
                    seen, t0 = 0, time.perf_counter()
                _step(model, optimizer, criterion, x.contiguous(memory_format=torch.channels_last), y)
                seen += len(y)
                step += 1
                if step >= args.warmup + args.batches:
                    break
        return seen / (time.perf_counter() - t0)
    finally:
        cleanup()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=".state/workspace",
                        help="DVC workspace after a run (data/prepared and data/listings)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    parser.add_argument("--our-workers", type=int, default=0, help="train.workers of our pipeline")
    parser.add_argument("--bf16", action="store_true",
                        help="also time ours with CPU bf16 autocast (oneDNN, AVX512-BF16/AMX CPUs)")
    args = parser.parse_args(argv)
    ws = Path(args.workspace).resolve()
    prepared = ws / "data" / "prepared"
    size = int(np.load(prepared / "train_images.npy", mmap_mode="r").shape[1])
    labels = sorted(pd.read_parquet(prepared / "train.parquet", columns=["category_path"])
                    ["category_path"].unique())
    result = {"backbone": args.backbone, "image_size": size, "batch_size": args.batch_size,
              "batches": args.batches, "threads": torch.get_num_threads(),
              "device": "cpu"}
    listings = ws / "data" / "listings"
    result.update(bench_feeding(prepared, listings, labels, size, args))
    result["feeding_speedup"] = round(result["feeding_ours_img_per_s"] / result["feeding_reference_img_per_s"], 2)
    result["ours_img_per_s"] = round(bench_ours(prepared, labels, args), 1)
    if args.bf16:
        result["ours_bf16_img_per_s"] = round(bench_ours(prepared, labels, args, bf16=True), 1)
    result["ours_as_trained_img_per_s"] = round(bench_ours(prepared, labels, args, args.bf16, fused=True), 1)
    result["ours_peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["reference_img_per_s"] = round(bench_reference(listings, prepared, labels, size, args), 1)
    result["peak_rss_mib_after_both"] = round(peak_rss_mib(), 1)
    result["speedup"] = round(result["ours_img_per_s"] / result["reference_img_per_s"], 2)
    if args.bf16:
        result["speedup_bf16"] = round(result["ours_bf16_img_per_s"] / result["reference_img_per_s"], 2)
    result["speedup_as_trained"] = round(result["ours_as_trained_img_per_s"] / result["reference_img_per_s"], 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
