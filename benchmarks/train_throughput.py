"""Training throughput: our pipeline vs. a plain torchvision ImageFolder + PIL pipeline.

Both train the same model (``training.model.ListingClassifier``, image branch only, so the
comparison is about feeding images) with the same optimizer, batch size and image size, on the
same listings, in one process, one after the other:

- **ours**: the prepare stage's uint8 image cache (memory-mapped ``.npy``), batches sliced from
  it and normalised with ``training.presets.TrainPreset`` (no JPEG decoding during epochs).
- **reference**: a ``torchvision.datasets.ImageFolder`` over the original JPEG files (one folder
  per class, symlinks) with ``Resize`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``,
  read by a ``DataLoader`` with ``--workers`` worker processes, as in torchvision's
  ``references/classification/train.py``.

Prints images/s of each (after ``--warmup`` batches), the ratio, and the peak RSS of the
process (``resource.getrusage``, KiB on Linux) after each phase.

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


def _step(model: nn.Module, optimizer, criterion, images: torch.Tensor, targets: torch.Tensor) -> None:
    logits = model(images, None, None)
    loss = criterion(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bench_ours(prepared: Path, labels: list[str], args) -> float:
    """Images/s of training from the prepare stage's memory-mapped uint8 cache."""
    from training.presets import TrainPreset

    frame = pd.read_parquet(prepared / "train.parquet", columns=["category_path"])
    images = np.load(prepared / "train_images.npy", mmap_mode="r")
    index = {c: i for i, c in enumerate(labels)}
    targets = torch.tensor([index[c] for c in frame["category_path"]])
    torch.manual_seed(0)
    model = _model(len(labels), args.backbone)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    preset = TrainPreset(generator=torch.Generator().manual_seed(0))
    order = torch.randperm(len(frame), generator=torch.Generator().manual_seed(0))
    model.train()
    seen, t0 = 0, 0.0
    for step in range(args.warmup + args.batches):
        if step == args.warmup:
            seen, t0 = 0, time.perf_counter()
        batch, _ = torch.sort(order[(step * args.batch_size) % len(order):][:args.batch_size])
        x = preset(np.ascontiguousarray(images[batch.numpy()]))
        _step(model, optimizer, criterion, x, targets[batch])
        seen += len(batch)
    return seen / (time.perf_counter() - t0)


def bench_reference(listings: Path, prepared: Path, labels: list[str], size: int, args) -> float:
    """Images/s of training from JPEG files through ImageFolder + PIL + DataLoader."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from common.store import image_path
    from training.presets import IMAGENET_MEAN, IMAGENET_STD

    frame = pd.read_parquet(prepared / "train.parquet", columns=["category_path", "image_key", "listing_id"])
    with tempfile.TemporaryDirectory(prefix="imagefolder-") as tmp:
        root = Path(tmp)
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
                            drop_last=True, generator=torch.Generator().manual_seed(0),
                            persistent_workers=args.workers > 0)
        torch.manual_seed(0)
        model = _model(len(dataset.classes), args.backbone)
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=".state/workspace",
                        help="DVC workspace after a run (data/prepared and data/listings)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    args = parser.parse_args(argv)
    ws = Path(args.workspace).resolve()
    prepared = ws / "data" / "prepared"
    size = int(np.load(prepared / "train_images.npy", mmap_mode="r").shape[1])
    labels = sorted(pd.read_parquet(prepared / "train.parquet", columns=["category_path"])
                    ["category_path"].unique())
    result = {"backbone": args.backbone, "image_size": size, "batch_size": args.batch_size,
              "batches": args.batches, "threads": torch.get_num_threads(),
              "device": "cpu"}
    result["ours_img_per_s"] = round(bench_ours(prepared, labels, args), 1)
    result["ours_peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["reference_img_per_s"] = round(bench_reference(ws / "data" / "listings", prepared, labels, size, args), 1)
    result["peak_rss_mib_after_both"] = round(peak_rss_mib(), 1)
    result["speedup"] = round(result["ours_img_per_s"] / result["reference_img_per_s"], 2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
