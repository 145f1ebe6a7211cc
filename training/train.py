"""Train stage: fits the listing classifier on ``data/prepared`` and writes ``models/model.pt``.

Shape after torchvision's ``references/classification/train.py``: :func:`train_one_epoch`,
:func:`evaluate` under ``torch.inference_mode()``, an img/s meter, a checkpoint dict
``{model, optimizer, lr_scheduler, epoch, params, ...}`` written after every epoch, resume from
it, ``--test-only``. The same code runs on CPU and CUDA; bf16 autocast and pinned memory are
used only on CUDA.

Batches are read from the uint8 image arrays written by the prepare stage (no JPEG decoding
during training) and titles are hashed once per split.

CLI::

    python -m training.train --params params.yaml [--workspace .] [--test-only] [--no-resume]
"""

from __future__ import annotations

import argparse
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
from torch import nn

from common.params import Params, load_params
from training.model import ListingClassifier, build_model
from training.presets import EvalPreset, TrainPreset
from training.text import encode_titles, select_bags

CHECKPOINT = Path("models") / "model.pt"
TRAIN_LOG = Path("models") / "train_log.json"


@dataclass
class Split:
    """One split of the prepared data, ready for batching.

    Attributes:
        images: uint8 (N, S, S, 3) array (usually a read-only memmap).
        ids: int64 flat hashed title ids; offsets: int64 (N,) bag starts (see ``training.text``).
        targets: int64 (N,) class index, -1 for a category unknown to the model.
        frame: the rows (canonical columns).
    """

    images: np.ndarray
    ids: torch.Tensor
    offsets: torch.Tensor
    targets: torch.Tensor
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.targets)


def load_split(prepared: Path, name: str, labels: list[str], text_buckets: int) -> Split:
    """Reads ``<name>.parquet`` and ``<name>_images.npy`` of the prepared folder."""
    frame = pd.read_parquet(prepared / f"{name}.parquet")
    images = np.load(prepared / f"{name}_images.npy", mmap_mode="r")
    if len(images) != len(frame):
        raise ValueError(f"{name}: {len(frame)} rows but {len(images)} images")
    index = {label: i for i, label in enumerate(labels)}
    targets = torch.tensor([index.get(p, -1) for p in frame["category_path"]], dtype=torch.long)
    ids, offsets = encode_titles(frame["title"].tolist(), text_buckets)
    return Split(images, ids, offsets, targets, frame)


def data_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 (12 hex) of the ordered (listing_id, image_sha256, category_path) of a split."""
    blob = "\n".join(
        f"{a}\t{b}\t{c}" for a, b, c in
        zip(frame["listing_id"], frame["image_sha256"], frame["category_path"], strict=True))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def get_batch(split: Split, index: torch.Tensor, preset, device: torch.device, model: ListingClassifier,
              pin: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs and targets of the rows ``index`` of a split (images skipped for a text-only model)."""
    index, _ = torch.sort(index)  # sorted reads are sequential in the memmap
    images = None
    if model.image_encoder is not None:
        images = preset(np.ascontiguousarray(split.images[index.numpy()]))
        if pin:
            images = images.pin_memory()
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
    ids, offsets = select_bags(split.ids, split.offsets, index)
    return (images, ids.to(device, non_blocking=True), offsets.to(device, non_blocking=True),
            split.targets[index].to(device, non_blocking=True))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_one_epoch(model: ListingClassifier, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    lr_scheduler, split: Split, batch_size: int, device: torch.device, epoch: int,
                    seed: int, print_every: int = 0) -> dict:
    """One pass over the training split in a seeded random order.

    Returns:
        ``{"epoch", "train_loss", "train_accuracy", "img_per_s", "seconds", "lr"}``.
    """
    model.train()
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    preset = TrainPreset(hflip_prob=0.5, generator=generator)
    order = torch.randperm(len(split), generator=generator)
    pin = device.type == "cuda"
    total_loss, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    steps = (len(split) + batch_size - 1) // batch_size
    for step in range(steps):
        batch = order[step * batch_size:(step + 1) * batch_size]
        images, ids, offsets, targets = get_batch(split, batch, preset, device, model, pin)
        with _autocast(device):
            logits = model(images, ids, offsets)
            loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        n = len(targets)
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == targets).sum())
        seen += n
        if print_every and (step + 1) % print_every == 0:
            rate = seen / (time.perf_counter() - t0)
            print(f"epoch {epoch} [{step + 1}/{steps}] loss {total_loss / seen:.4f} {rate:.1f} img/s",
                  flush=True)
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "train_loss": total_loss / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "img_per_s": seen / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "lr": optimizer.param_groups[0]["lr"],
    }


def evaluate(model: ListingClassifier, criterion: nn.Module, split: Split, batch_size: int,
             device: torch.device) -> dict:
    """Loss and leaf accuracy on a split (rows of unknown category count as errors).

    Returns:
        ``{"loss", "accuracy", "n"}``; loss over the rows of known category only.
    """
    model.eval()
    preset = EvalPreset()
    total_loss, known, correct = 0.0, 0, 0
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            batch = torch.arange(start, min(start + batch_size, len(split)))
            images, ids, offsets, targets = get_batch(split, batch, preset, device, model)
            with _autocast(device):
                logits = model(images, ids, offsets).float()
            ok = targets >= 0
            if ok.any():
                total_loss += criterion(logits[ok], targets[ok]).item() * int(ok.sum())
                known += int(ok.sum())
            correct += int((logits.argmax(1) == targets).sum())
    return {"loss": total_loss / max(known, 1), "accuracy": correct / max(len(split), 1),
            "n": len(split)}


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


def make_lr_scheduler(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int):
    """One-cycle learning rate (Smith & Topin 2019, "Super-Convergence"), warm-up on 25% of steps.

    The warm-up phase is stretched to at least two steps so that tiny runs (a handful of
    optimizer steps) keep a valid schedule; below 4 steps the rate stays constant at ``max_lr``.

    Args:
        optimizer: the optimizer whose ``lr`` the scheduler drives.
        max_lr: peak learning rate.
        total_steps: optimizer steps of the whole run (epochs x batches per epoch).
    """
    if total_steps < 4:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    pct_start = min(0.5, max(0.25, 2.0 / total_steps))
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps,
        pct_start=pct_start, div_factor=10.0, final_div_factor=100.0)


def train(workspace: Path, params: Params, resume: bool = True, test_only: bool = False,
          deterministic: bool = False, print_every: int = 0) -> dict:
    """Runs the train stage in a workspace.

    Args:
        workspace: folder holding ``data/prepared`` (see ``training.prepare``).
        params: project params (groups ``train`` and ``prepare``).
        resume: continue from ``models/model.pt`` when it was written with the same params and
            data and is not finished (a retried task continues where it stopped).
        test_only: only evaluate the existing checkpoint on the val split.
        deterministic: force deterministic torch kernels.
        print_every: also print progress every this many steps (0: per epoch only).

    Returns:
        The train log (also written to ``models/train_log.json``): final ``train_loss``,
        ``val_accuracy``, ``img_per_s``, ``epoch_seconds``, ``total_seconds``, ``pretrained``,
        ``num_classes`` and the per-epoch ``epochs`` list.

    Raises:
        FileNotFoundError: when the prepared data (or, with ``test_only``, the checkpoint) is missing.
    """
    workspace = Path(workspace)
    cfg = params.train
    prepared = workspace / "data" / "prepared"
    ckpt_path = workspace / CHECKPOINT
    log_path = workspace / TRAIN_LOG
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)

    seed_everything(cfg.seed, deterministic)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    train_frame = pd.read_parquet(prepared / "train.parquet", columns=["category_path"])
    labels = sorted(train_frame["category_path"].unique().tolist())
    train_split = load_split(prepared, "train", labels, cfg.text_buckets)
    val_split = load_split(prepared, "val", labels, cfg.text_buckets)
    image_size = int(train_split.images.shape[1])
    fingerprint = data_fingerprint(train_split.frame)

    model, pretrained = build_model(len(labels), cfg)
    model.to(device, memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = max(1, (len(train_split) + cfg.batch_size - 1) // cfg.batch_size)
    lr_scheduler = make_lr_scheduler(optimizer, cfg.lr, cfg.epochs * steps_per_epoch)

    start_epoch, history = 0, []
    ckpt = None
    if ckpt_path.is_file() and (resume or test_only):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if test_only:
        if ckpt is None:
            raise FileNotFoundError(f"--test-only needs a checkpoint at {ckpt_path}")
        model.load_state_dict(ckpt["model"])
        model.to(device)
        result = evaluate(model, criterion, load_split(prepared, "val", ckpt["labels"], cfg.text_buckets),
                          cfg.batch_size, device)
        print(json.dumps(result))
        return result
    same_run = (ckpt is not None
                and ckpt.get("params", {}).get("train") == params.to_dict()["train"]
                and ckpt.get("labels") == labels
                and ckpt.get("data_fingerprint") == fingerprint
                and ckpt.get("image_size") == image_size)
    if same_run:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch = int(ckpt["epoch"]) + 1
        history = list(ckpt.get("history", []))
        if "rng_state" in ckpt:
            torch.set_rng_state(ckpt["rng_state"])  # dropout continues as if never interrupted
        print(f"resuming from {ckpt_path} after epoch {ckpt['epoch']}", flush=True)
    elif ckpt is not None:
        print(f"ignoring {ckpt_path}: written with other params or data", flush=True)

    print(f"train {len(train_split)} val {len(val_split)} classes {len(labels)} "
          f"image {image_size}px device {device} threads {torch.get_num_threads()} "
          f"pretrained {pretrained}", flush=True)
    for epoch in range(start_epoch, cfg.epochs):
        stats = train_one_epoch(model, criterion, optimizer, lr_scheduler, train_split,
                                cfg.batch_size, device, epoch, cfg.seed, print_every)
        if len(val_split):
            t0 = time.perf_counter()
            val = evaluate(model, criterion, val_split, cfg.batch_size * 2, device)
            stats.update(val_loss=val["loss"], val_accuracy=val["accuracy"],
                         eval_seconds=time.perf_counter() - t0)
        history.append(stats)
        print(f"epoch {epoch}: loss {stats['train_loss']:.4f} "
              f"val_acc {stats.get('val_accuracy', float('nan')):.4f} "
              f"{stats['img_per_s']:.1f} img/s {stats['seconds']:.1f}s", flush=True)
        _atomic_save({
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "epoch": epoch,
            "params": params.to_dict(),
            "labels": labels,
            "pretrained": pretrained,
            "image_size": image_size,
            "data_fingerprint": fingerprint,
            "history": history,
            "rng_state": torch.get_rng_state(),
        }, ckpt_path)

    return _write_log(log_path, history, {
        "pretrained": pretrained, "num_classes": len(labels), "n_train": len(train_split),
        "n_val": len(val_split), "image_size": image_size, "device": device.type,
    })


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--workspace", default=".", help="workspace folder (default: .)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--test-only", action="store_true", help="only evaluate the checkpoint on val")
    parser.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    parser.add_argument("--print-every", type=int, default=0, help="progress every N steps")
    args = parser.parse_args(argv)
    result = train(Path(args.workspace), load_params(args.params), resume=not args.no_resume,
                   test_only=args.test_only, deterministic=args.deterministic,
                   print_every=args.print_every)
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}, indent=2))
    return result


if __name__ == "__main__":
    main()
