"""Train stage: fits the listing classifier on ``data/prepared`` and writes ``models/model.pt``.

Shape after torchvision's ``references/classification/train.py``: :func:`train_one_epoch`,
:func:`evaluate` under ``torch.inference_mode()``, :func:`training.data.load_data`, an img/s meter, a checkpoint
dict written after every epoch, resume from it, ``--test-only``, and DDP under ``torchrun``. The
same code runs on CPU and CUDA; the precision (fp32, or bf16 autocast where it pays) is chosen
once per run (``training.precision``); pinned memory and ``torch.compile`` are used only on CUDA.

Data: ``training.data`` (the prepared splits as a ``Dataset`` of whole batches, read by one
``DataLoader`` per split built once per run, ``train.workers`` processes), ``training.sampler``
(the epoch's row order and each rank's share), ``training.presets`` (the train and eval
transforms). Optimizer and schedules: ``training.optim``; the warm start: ``training.warm_start``;
the rest of the run (distributed set-up, checkpoint and resume, early stopping, EMA, train log):
``training.utils``.

Training: one-cycle or cosine schedule, label smoothing, a loss per taxonomy level, optional
class-balanced sampling (``train.sampling``), and early stopping on the validation
business-weighted score (the weights of the best epoch are the ones kept; epochs that end while
the learning rate still warms up do not count towards the patience). ``train.min_steps`` raises
the epochs of a small catalog, whose epoch is only a few optimizer steps. With
``train.ema_decay`` > 0 an exponential moving average of the weights (and BatchNorm buffers) is
updated after every optimizer step (``torch.optim.swa_utils.AveragedModel``, as torchvision's
reference ``--model-ema``); the average is what is evaluated, early-stopped on and kept.

Warm start (``train.init: champion``): the new model starts from the champion's checkpoint,
which ``ingestion.workspace.fetch_init`` puts into ``models/init/`` (a DVC dep of this stage, so a
new champion re-runs it), and trains ``train.warm_epochs`` epochs instead of ``train.epochs``.
Parameters whose name and shape match are copied, the level heads row by label (new categories
get fresh rows, vanished ones are dropped); a champion of another architecture, or none, means
a run from scratch, and the train log's ``init`` / ``init_reason`` say which and why.

The checkpoint written after each epoch holds the training state to resume from; once the run
has ended, ``models/model.pt`` is rewritten without it (``training.utils.final_checkpoint_dict``):
the served weights and the run's records, a quarter of the size.

Image encoder (``train.image_encoder``): ``scratch`` trains ``train.backbone`` from the prepared
pixels; ``frozen`` trains the heads on the embeddings of the pretrained ``train.encoder``, computed
once per image by the embed stage (``training.embeddings``) and read from ``data/embeddings``; the
checkpoint's ``encoder`` entry records the encoder (its spec, id, width and weights: source,
licence, sha256), which inference loads to embed an image it has never seen
(``training.inference``). The train log says how many images the embed stage embedded and reused.

Calibration: after the last epoch, rank 0 fits a temperature and the auto-categorisation
threshold at ``score.target_precision`` on the val split for the kept weights
(``training.calibration``) and stores them in the checkpoint, so that the served probability
is the calibrated one.

Multi-GPU / multi-process (DDP)::

    torchrun --nproc_per_node 4 -m training.train --params params.yaml

The sampler gives each process every ``world_size``-th row of each global batch (so the global
batch size stays ``train.batch_size`` and the processes' shares of an epoch are disjoint); rank 0
evaluates, decides early stopping and writes the checkpoint. Backend: NCCL on CUDA, gloo on CPU.

CLI::

    python -m training.train --params params.yaml [--workspace .] [--test-only] [--no-resume]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from common.params import Params, ScoreParams, TrainParams, load_params
from common.scoring import business_weighted_score
from training import utils
from training.data import (
    Data,
    Split,
    data_fingerprint,
    eval_loader,
    load_data,
    load_split,
    read_labels,
    to_device,
)
from training.embeddings import EMBEDDINGS, EmbeddingCache, read_embed_log, uses_encoder
from training.hierarchy import LabelTree
from training.model import build_model
from training.optim import make_lr_scheduler, make_optimizer, planned_epochs, warmup_steps
from training.precision import (
    autocast,
    choose_precision,
    inherited_probe,
    measure_precisions,
    precision_dtype,
    probe_record,
)
from training.warm_start import init_model

CHECKPOINT = Path("models") / "model.pt"
TRAIN_LOG = Path("models") / "train_log.json"
PREPARED = Path("data") / "prepared"


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    data_loader: torch.utils.data.DataLoader, device: torch.device, epoch: int,
                    lr_scheduler, tree: LabelTree, ema: AveragedModel | None = None,
                    dtype: torch.dtype | None = None, print_every: int = 0) -> dict:
    """One pass over the training loader (its sampler already set to ``epoch``).

    The loss of a step is summed over this rank's rows and divided by the global batch's rows
    per rank, so that DDP's gradient average is the gradient of the global batch's mean loss.

    Args:
        model: the model (DDP- or compile-wrapped or not), trained in place.
        criterion: ``nn.CrossEntropyLoss(reduction="sum")``.
        optimizer, lr_scheduler: stepped once per batch.
        data_loader: the training loader (:func:`training.data.load_data`) over an
            :class:`training.sampler.EpochBatchSampler`.
        device: where the model lives.
        epoch: the epoch number (for the figures).
        tree: the taxonomy (level targets of the leaf targets).
        ema: when given, updated from the model after every optimizer step.
        dtype: the autocast dtype (``training.precision``); None trains in fp32.
        print_every: also print progress every this many steps (0: never).

    Returns:
        ``{"epoch", "train_loss", "train_accuracy", "img_per_s", "seconds", "lr"}`` of this
        rank's rows; img/s counts the images of all processes.
    """
    model.train()
    raw = utils.unwrap_model(model)
    sampler = data_loader.sampler
    total_loss, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    for step, batch in enumerate(data_loader):
        *inputs, targets = to_device(batch, device)
        with autocast(device, dtype):
            level_logits = model(*inputs)
        loss = raw.level_loss(level_logits, tree.level_targets(targets), criterion,
                              denominator=sampler.global_batch_size(step) / sampler.world_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        if ema is not None:
            ema.update_parameters(raw)
        total_loss += loss.item() * len(targets)
        with torch.no_grad():
            correct += int((raw.leaf_log_probs(level_logits).argmax(1) == targets).sum())
        seen += len(targets)
        if print_every and (step + 1) % print_every == 0:
            rate = seen * sampler.world_size / (time.perf_counter() - t0)
            print(f"epoch {epoch} [{step + 1}/{len(data_loader)}] loss {total_loss / seen:.4f} "
                  f"{rate:.1f} img/s", flush=True)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch, "train_loss": total_loss / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "img_per_s": seen * sampler.world_size / seconds if seconds > 0 else 0.0,
            "seconds": seconds, "lr": optimizer.param_groups[0]["lr"]}


def evaluate(model: nn.Module, criterion: nn.Module, data_loader: torch.utils.data.DataLoader,
             device: torch.device, tree: LabelTree, score: ScoreParams | None = None,
             dtype: torch.dtype | None = None) -> dict:
    """Loss, leaf accuracy and business-weighted score of a split (under ``dtype`` autocast).

    Rows of a category unknown to the model count as errors (and are left out of the loss).

    Args:
        data_loader: an evaluation loader (:func:`training.data.load_data`: rows in order, eval preset).

    Returns:
        ``{"loss", "accuracy", "n"}`` and, with ``score``, ``"business_weighted_score"``.
    """
    model.eval()
    raw = utils.unwrap_model(model)
    split: Split = data_loader.dataset.split
    total_loss, known, correct = 0.0, 0, 0
    predicted: list[int] = []
    with torch.inference_mode():
        for batch in data_loader:
            *inputs, targets = to_device(batch, device)
            with autocast(device, dtype):
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


def _validate(kept: nn.Module, criterion: nn.Module, data: Data, device: torch.device,
              score: ScoreParams, dtype: torch.dtype | None) -> dict:
    """The epoch's val figures (``val_loss``, ``val_accuracy``, ``val_business_weighted_score``,
    ``eval_seconds``); empty without a val split."""
    if not len(data.val):
        return {}
    t0 = time.perf_counter()
    val = evaluate(kept, criterion, data.val_loader, device, data.tree, score, dtype)
    return {"val_loss": val["loss"], "val_accuracy": val["accuracy"],
            "val_business_weighted_score": val["business_weighted_score"],
            "eval_seconds": time.perf_counter() - t0}


def _test_only(workspace: Path, params: Params, ckpt: dict | None, device: torch.device) -> dict:
    """``--test-only``: the checkpoint's kept weights evaluated on the val split, in its precision."""
    if ckpt is None:
        raise FileNotFoundError(f"--test-only needs a checkpoint at {workspace / CHECKPOINT}")
    cfg, labels, encoder = params.train, ckpt["labels"], ckpt.get("encoder")
    model, _ = build_model(labels, cfg, None if encoder is None else encoder["dim"])
    model.load_state_dict(ckpt["model"])
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    cache = None if encoder is None else EmbeddingCache(workspace / EMBEDDINGS, encoder["id"])
    loader = eval_loader(load_split(workspace / PREPARED, "val", labels, cfg, cache), cfg, device,
                         model.image_encoder is not None)
    result = evaluate(model, make_criterion(cfg), loader, device, LabelTree(labels), params.score,
                      precision_dtype(ckpt.get("precision", "float32")))
    print(json.dumps(result))
    return result


def make_criterion(cfg: TrainParams) -> nn.Module:
    """Cross-entropy with ``train.label_smoothing``, summed (the model divides by the batch)."""
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")


def _checkpoint_meta(params: Params, labels: list[str], pretrained: bool, data: Data, world_size: int,
                     init: dict, encoder: dict | None = None) -> dict:
    """What the checkpoint records of the run besides the weights (and what resuming compares:
    ``utils.resumable``); ``precision``, ``precision_probe`` and ``precision_probe_record``
    (``training.precision.probe_record``) are added once chosen. A frozen-encoder run adds
    ``image_encoder`` and ``encoder`` (:func:`encoder_record`)."""
    meta = {"params": params.to_dict(), "labels": labels, "pretrained": pretrained,
            "image_size": int(data.train.images.shape[1]),
            "data_fingerprint": data_fingerprint(data.train.frame), "world_size": world_size,
            "init": init["init"]}
    if encoder is not None:
        meta.update(image_encoder="frozen", encoder=encoder)
    return meta


def encoder_record(encoder, spec) -> dict:
    """What a checkpoint records of its frozen encoder: ``{"spec", "id", "dim", "weights":
    {"source", "licence", "sha256", "path"}}`` (plain data; ``path``: the weights file read here,
    which registration ships with the model).

    Args:
        encoder: the loaded :class:`training.encoders.Encoder`.
        spec: the ``train.encoder`` it was loaded from.
    """
    w = encoder.weights
    return {"spec": spec.model_dump(mode="json"), "id": encoder.id, "dim": int(encoder.dim),
            "weights": {"source": w.source, "licence": w.licence, "sha256": w.sha256,
                        "path": None if w.path is None else str(w.path)}}


def _print_start(data: Data, meta: dict, device: torch.device) -> None:
    """Rank 0's line before the first epoch: the data, the device and the chosen precision."""
    print(f"train {len(data.train)} val {len(data.val)} classes {len(meta['labels'])} "
          f"levels {data.tree.sizes} image {meta['image_size']}px device {device} "
          f"world {meta['world_size']} threads {torch.get_num_threads()} pretrained {meta['pretrained']} "
          f"precision {meta['precision']}", flush=True)


def train(workspace: Path, params: Params, resume: bool = True, test_only: bool = False,
          deterministic: bool = False, print_every: int = 0) -> dict:
    """Runs the train stage in a workspace.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (see module docstring).

    Args:
        workspace: folder holding ``data/prepared`` (see ``training.prepare``).
        params: project params (groups ``train``, ``prepare`` and ``score``).
        resume: continue from ``models/model.pt`` when it was written with the same params and
            data (a retried task continues where it stopped; a finished run's checkpoint
            resumes to its end: nothing is trained again and the file is left as it is).
        test_only: only evaluate the existing checkpoint on the val split.
        deterministic: force deterministic torch kernels (also ``train.deterministic``).
        print_every: also print progress every this many steps (0: per epoch only).

    Returns:
        The train log (also written to ``models/train_log.json``): final ``train_loss``,
        ``val_accuracy``, ``val_business_weighted_score``, ``best_epoch``, ``stopped_early``,
        ``img_per_s``, ``epoch_seconds``, ``total_seconds``, ``precision``, ``precision_probe``
        (img/s per precision, None when nothing was measured) and ``precision_probe_source``
        (``"measured"``, ``"champion:v<N>"`` when the champion's probe was reused, None when
        nothing was measured), ``pretrained``, ``weights_source``
        (see ``training.backbones.build_backbone``), ``init`` (``"scratch"`` or
        ``"champion:v<N>"``), ``init_reason`` and ``init_heads`` (see
        :func:`training.warm_start.init_model`), ``num_classes``, ``world_size``, ``calibration``
        (the temperature and auto threshold fitted on val and stored in the checkpoint:
        ``training.calibration.calibrate``), the per-epoch ``epochs`` list, and ``epochs_run``
        (the epochs this call trained: fewer than ``epochs`` when it resumed). Empty on ranks
        other than 0.

    Raises:
        FileNotFoundError: when the prepared data (or, with ``test_only``, the checkpoint) is missing.
    """
    workspace, cfg = Path(workspace), params.train
    deterministic = deterministic or cfg.deterministic
    (workspace / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    ckpt = utils.read_checkpoint(workspace / CHECKPOINT) if resume or test_only else None
    rank, world_size, local_rank = utils.distributed_env()
    device = utils.select_device(local_rank, world_size)
    utils.configure_torch(cfg, device, deterministic)
    if test_only:
        return _test_only(workspace, params, ckpt, device)
    utils.init_distributed(device, world_size)

    labels = read_labels(workspace / PREPARED)
    encoder, cache = None, None
    if uses_encoder(cfg):  # frozen: the embed stage's embeddings, by this encoder's id
        from training.encoders import load_encoder

        loaded_encoder = load_encoder(cfg.encoder)
        encoder = encoder_record(loaded_encoder, cfg.encoder)
        cache = EmbeddingCache(workspace / EMBEDDINGS, loaded_encoder.id)
        del loaded_encoder  # its weights are not part of the model
    model, pretrained = build_model(labels, cfg, None if encoder is None else encoder["dim"])
    pretrained = pretrained or encoder is not None
    init = init_model(workspace, model, labels, cfg)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    data = load_data(workspace / PREPARED, labels, cfg, device, model.image_encoder is not None,
                     rank, world_size, cache)
    criterion, optimizer = make_criterion(cfg), make_optimizer(model, cfg, device)
    steps_per_epoch = len(data.train_loader)
    warm = init["init"] != "scratch"  # a warm start trains train.warm_epochs
    epochs = planned_epochs(cfg.model_copy(update={"epochs": cfg.warm_epochs}) if warm else cfg,
                            steps_per_epoch)
    lr_scheduler = make_lr_scheduler(optimizer, cfg.lr, epochs * steps_per_epoch, cfg.schedule)
    ema = utils.make_ema(model, cfg.ema_decay) if rank == 0 else None  # only rank 0 evaluates
    kept = ema.module if ema is not None else model  # the weights evaluated and kept
    stopper = utils.EarlyStopping(cfg.early_stopping_patience,
                                  warmup_steps(epochs * steps_per_epoch, cfg.schedule), steps_per_epoch)
    meta = _checkpoint_meta(params, labels, pretrained, data, world_size, init, encoder)
    progress = utils.resume(workspace / CHECKPOINT, ckpt, meta, model, optimizer, lr_scheduler, ema, stopper,
                            epochs, rank)
    net = utils.wrap_model(model, device, world_size, cfg.compile)
    inherited = inherited_probe(init.get("probe_record"), cfg, device, meta["image_size"])
    used = {}

    def measure() -> dict[str, float]:
        """The champion's probe when it holds here (same machine and step), else a measurement."""
        if inherited:
            used["source"] = init["init"]
            print(f"precision probe of {init['init']} reused (same machine and training step)", flush=True)
            return inherited
        return measure_precisions(model, criterion, data.train, data.tree, cfg, device)

    meta["precision"], meta["precision_probe"] = choose_precision(
        cfg, device, deterministic, measure, progress.precision, rank, world_size)
    meta["precision_probe_record"] = (
        (ckpt or {}).get("precision_probe_record") if progress.precision is not None
        else probe_record(meta["precision_probe"], device, cfg, meta["image_size"], used.get("source", "measured")))
    dtype = precision_dtype(meta["precision"])
    if rank == 0:
        _print_start(data, meta, device)

    for epoch in range(progress.start_epoch, epochs):
        data.train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(net, criterion, optimizer, data.train_loader, device, epoch,
                                lr_scheduler, data.tree, ema, dtype, print_every if rank == 0 else 0)
        progress.epochs_run.append(epoch)
        if rank == 0:
            stats.update(_validate(kept, criterion, data, device, params.score, dtype))
            utils.end_epoch(epoch, stats, kept, stopper, progress)
            utils.atomic_save(utils.checkpoint_dict(
                model, optimizer, lr_scheduler, ema, epoch, progress.kept_state, stopper.state_dict(),
                progress.history, meta), workspace / CHECKPOINT)
        if utils.broadcast_flag(stopper.stopped, world_size):
            break

    log = {}
    if rank == 0:
        if not (ckpt is not None and ckpt.get("finished") and not progress.epochs_run):
            # the served checkpoint, without the training state (a resumed finished run keeps its file)
            utils.atomic_save(utils.final_checkpoint_dict(
                progress.history[-1]["epoch"], progress.kept_state, stopper.state_dict(), progress.history, meta,
                ema), workspace / CHECKPOINT)
        log = _finish(workspace, data, meta, stopper, progress, device,
                      model.weights_source if encoder is None else encoder["weights"]["source"], init)
        log = _calibrate(workspace, params, log)
    utils.close_distributed(world_size)
    return log


def _finish(workspace: Path, data: Data, meta: dict, stopper: utils.EarlyStopping, progress: utils.Progress,
            device: torch.device, weights_source: str | None, init: dict) -> dict:
    """Writes the train log of a finished run (see :func:`train`'s Returns)."""
    best = next((h for h in reversed(progress.history) if h["epoch"] == stopper.epoch), {})
    return utils.write_train_log(workspace / TRAIN_LOG, progress.history, {
        "pretrained": meta["pretrained"], "weights_source": weights_source,
        "num_classes": len(meta["labels"]), "levels": data.tree.sizes,
        "n_train": len(data.train), "n_val": len(data.val), "image_size": meta["image_size"],
        "device": device.type, "precision": meta["precision"],
        "precision_probe": meta["precision_probe"],
        "precision_probe_source": (meta.get("precision_probe_record") or {}).get("source"),
        "world_size": meta["world_size"],
        "best_epoch": stopper.epoch, "stopped_early": stopper.stopped,
        "val_business_weighted_score": best.get("val_business_weighted_score"),
        "best_val_accuracy": best.get("val_accuracy"),
        "epochs_run": progress.epochs_run,
        "init": init["init"], "init_reason": init["init_reason"],
        "init_heads": (init["init_report"] or {}).get("heads"),
        **_encoder_log(workspace, meta),
    })


def _encoder_log(workspace: Path, meta: dict) -> dict:
    """The train log's image-encoder entries: ``image_encoder``, and for a frozen encoder its
    ``encoder_id``, ``weights_licence``, ``weights_sha256`` and the embed stage's counts
    (``images_embedded`` now, ``images_reused`` from the cache)."""
    encoder = meta.get("encoder")
    if encoder is None:
        return {"image_encoder": "scratch"}
    embedded = read_embed_log(workspace) or {}
    same = embedded.get("encoder_id") == encoder["id"]
    return {"image_encoder": "frozen", "encoder_id": encoder["id"],
            "weights_licence": encoder["weights"]["licence"], "weights_sha256": encoder["weights"]["sha256"],
            "images_embedded": embedded.get("embedded") if same else None,
            "images_reused": embedded.get("reused") if same else None}


def _calibrate(workspace: Path, params: Params, log: dict) -> dict:
    """Fits the temperature and the auto-categorisation threshold of the kept weights on the val
    split (``training.calibration``), stores them in the checkpoint, and adds them to the train
    log as ``calibration``."""
    from training.calibration import calibrate_checkpoint

    calibration = calibrate_checkpoint(workspace / CHECKPOINT, workspace / PREPARED, params.score)
    return utils.write_train_log(workspace / TRAIN_LOG, log["epochs"],
                                 {**{k: v for k, v in log.items() if k != "epochs"},
                                  "calibration": calibration})


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
