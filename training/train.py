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
which ``training.pipeline.fetch_init`` puts into ``models/init/`` (a DVC dep of this stage, so a
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
``finetune`` makes the pretrained ``train.encoder`` itself the image branch (``load_encoder``, then
trainable), trained on the prepared pixels (``prepare.image_size`` equals ``train.encoder.image_size``,
checked when the params are read) normalised with the weights' own mean and std, at
``train.encoder_lr_scale`` times the heads' learning rate, and frozen for the first
``train.head_warmup_epochs`` epochs; its checkpoint records the encoder as a frozen one's does
(the weights it started from) and holds the fine-tuned weights.

Progress (the start line, each epoch, early stopping, warm start, precision probe) is logged
through ``logging`` (``training.train`` and ``training.utils`` loggers); the CLI sends it to stdout.

Title expert: after the last epoch, with ``train.title_expert`` (the default), rank 0 fits the
linear TF-IDF title model of ``training.title_expert`` on the training titles and stores it in the
checkpoint; every prediction then joins it to the heads' leaf scores.

Calibration: after the title expert, rank 0 fits a temperature and the auto-categorisation
threshold at ``score.target_precision`` on the val split for the kept weights
(``training.calibration``) and stores them in the checkpoint, so that the served probability
is the calibrated one.

Multi-GPU / multi-process (DDP): ``train.nproc_per_node`` above 1 makes the stage start itself
again under torchrun (what ``dvc repro`` runs), the same as::

    torchrun --standalone --nproc_per_node 4 -m training.train --params params.yaml

The sampler gives each process every ``world_size``-th row of each global batch (so the global
batch size stays ``train.batch_size`` and the processes' shares of an epoch are disjoint); rank 0
evaluates, decides early stopping and writes the checkpoint. Backend: NCCL on CUDA, gloo on CPU.

CLI::

    python -m training.train --params params.yaml [--workspace .] [--test-only] [--no-resume]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from common.cli import LOG_FORMAT
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
from training.presets import IMAGENET, Normalization
from training.replay import ReplayPlan, read_plan
from training.warm_start import WarmStart, start_model

log = logging.getLogger(__name__)

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
        print_every: also log progress every this many steps (0: never).

    Returns:
        ``{"epoch", "train_loss", "train_accuracy", "rows", "img_per_s", "seconds", "lr"}`` of
        this rank's rows (``rows``: how many it trained on); img/s counts the images of all processes.
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
            log.info("epoch %d [%d/%d] loss %.4f %.1f img/s", epoch, step + 1, len(data_loader),
                     total_loss / seen, rate)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch, "train_loss": total_loss / max(seen, 1),
            "train_accuracy": correct / max(seen, 1), "rows": seen,
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
    from training.inference import checkpoint_model, checkpoint_normalization

    if ckpt is None:
        raise FileNotFoundError(f"--test-only needs a checkpoint at {workspace / CHECKPOINT}")
    cfg, labels, encoder = params.train, ckpt["labels"], ckpt.get("encoder")
    model = checkpoint_model(ckpt)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    frozen = encoder is not None and ckpt.get("image_encoder", "frozen") == "frozen"
    cache = EmbeddingCache(workspace / EMBEDDINGS, encoder["id"]) if frozen else None
    loader = eval_loader(load_split(workspace / PREPARED, "val", labels, cfg, cache), cfg, device,
                         model.image_encoder is not None, checkpoint_normalization(ckpt))
    result = evaluate(model, make_criterion(cfg), loader, device, LabelTree(labels), params.score,
                      precision_dtype(ckpt.get("precision", "float32")))
    log.info("test-only: %s", json.dumps(result))
    return result


def make_criterion(cfg: TrainParams) -> nn.Module:
    """Cross-entropy with ``train.label_smoothing``, summed (the model divides by the batch)."""
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What the checkpoint records of the run besides the weights, and what resuming compares
    (``utils.resumable``). :meth:`to_dict` gives the checkpoint's keys.

    Attributes:
        params: the run's params (``Params.to_dict``).
        labels: the leaf classes, in class order.
        pretrained: whether the image branch started from pretrained weights.
        image_size: side of the prepared images, pixels.
        data_fingerprint: ``training.data.data_fingerprint`` of the train split.
        world_size: processes of the run.
        init: ``"scratch"`` or ``"champion:v<N>"`` (``training.warm_start.WarmStart.init``).
        image_encoder: ``"scratch"``, ``"frozen"`` or ``"finetune"``.
        encoder: frozen or finetune: :func:`encoder_record` of the pretrained encoder.
        precision, precision_probe, precision_probe_record: set once chosen
            (``training.precision.choose_precision``, ``probe_record``).
        replay: what the next run's replay plan reads (``training.replay.ReplayPlan.record``:
            the batches this model has trained on, replay runs since the last full one).
    """

    params: dict
    labels: list[str]
    pretrained: bool
    image_size: int
    data_fingerprint: str
    world_size: int
    init: str
    image_encoder: str = "scratch"
    encoder: dict | None = None
    precision: str | None = None
    precision_probe: dict | None = None
    precision_probe_record: dict | None = None
    replay: dict | None = None

    def to_dict(self) -> dict:
        """The checkpoint's entries: a scratch run has no ``image_encoder``/``encoder`` keys, and
        the precision keys appear once chosen (as checkpoints have always been written)."""
        out = {"params": self.params, "labels": self.labels, "pretrained": self.pretrained,
               "image_size": self.image_size, "data_fingerprint": self.data_fingerprint,
               "world_size": self.world_size, "init": self.init}
        if self.encoder is not None:
            out.update(image_encoder=self.image_encoder, encoder=self.encoder)
        if self.precision is not None:
            out.update(precision=self.precision, precision_probe=self.precision_probe,
                       precision_probe_record=self.precision_probe_record)
        if self.replay is not None:
            out["replay"] = self.replay
        return out


def encoder_record(encoder, spec) -> dict:
    """What a checkpoint records of its pretrained encoder (frozen or fine-tuned): ``{"spec",
    "id", "dim", "weights": {"source", "licence", "sha256", "path"}, "preprocessing"}`` (plain
    data; ``path``: the weights file read here, which registration ships with the model;
    ``preprocessing``: ``training.encoders.Preprocessing`` at the encoder's input size, whose
    mean and std a fine-tuned model's pixels are normalised with).

    Args:
        encoder: the loaded :class:`training.encoders.Encoder`.
        spec: the ``train.encoder`` it was loaded from.
    """
    w = encoder.weights
    return {"spec": spec.model_dump(mode="json"), "id": encoder.id, "dim": int(encoder.dim),
            "weights": {"source": w.source, "licence": w.licence, "sha256": w.sha256,
                        "path": None if w.path is None else str(w.path)},
            "preprocessing": dataclasses.asdict(encoder.preprocessing)}


@dataclasses.dataclass(frozen=True)
class ImageBranch:
    """How the run's image branch reads images (:func:`image_branch`).

    Attributes:
        mode: ``train.image_encoder``, or ``"scratch"`` for a model without an image branch.
        encoder: frozen or finetune: :func:`encoder_record`.
        cache: frozen: the embed stage's embeddings of this encoder.
        pretrained: finetune: the loaded ``training.encoders.Encoder``, the model's image branch.
        norm: the pixels' normalisation (the encoder's for finetune, else ImageNet's).
    """

    mode: str = "scratch"
    encoder: dict | None = None
    cache: EmbeddingCache | None = None
    pretrained: nn.Module | None = None
    norm: Normalization = IMAGENET

    @property
    def embedding_dim(self) -> int | None:
        """Frozen: the embeddings' width the model reads; else None."""
        return self.encoder["dim"] if self.mode == "frozen" else None


def image_branch(workspace: Path, cfg: TrainParams) -> ImageBranch:
    """Loads the pretrained ``train.encoder`` of a frozen or finetune run (strictly,
    ``training.encoders.load_encoder``); a scratch or text run gets the default branch."""
    if cfg.branches == "text" or cfg.image_encoder == "scratch":
        return ImageBranch()
    from training.encoders import load_encoder

    loaded = load_encoder(cfg.encoder)
    record = encoder_record(loaded, cfg.encoder)
    if uses_encoder(cfg):  # frozen: the embed stage's embeddings, by this encoder's id
        return ImageBranch("frozen", record, EmbeddingCache(workspace / EMBEDDINGS, loaded.id))
    return ImageBranch("finetune", record, pretrained=loaded,
                       norm=Normalization(loaded.preprocessing.mean, loaded.preprocessing.std))


def _log_start(data: Data, meta: RunRecord, device: torch.device) -> None:
    """Rank 0's line before the first epoch: the data, the device and the chosen precision."""
    log.info("train %d val %d classes %d levels %s image %dpx device %s world %d threads %d "
             "pretrained %s image_encoder %s precision %s", len(data.train), len(data.val), len(meta.labels),
             data.tree.sizes, meta.image_size, device, meta.world_size, torch.get_num_threads(),
             meta.pretrained, meta.image_encoder, meta.precision)


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
        print_every: also log progress every this many steps (0: per epoch only).

    Returns:
        The train log (also written to ``models/train_log.json``): final ``train_loss``,
        ``val_accuracy``, ``val_business_weighted_score``, ``best_epoch``, ``stopped_early``,
        ``img_per_s``, ``epoch_seconds``, ``total_seconds``, ``precision``, ``precision_probe``
        (img/s per precision, None when nothing was measured) and ``precision_probe_source``
        (``"measured"``, ``"champion:v<N>"`` when the champion's probe was reused, None when
        nothing was measured), ``pretrained``, ``weights_source``
        (see ``training.backbones.build_backbone``), ``init`` (``"scratch"`` or
        ``"champion:v<N>"``), ``init_reason`` and ``init_heads`` (see
        :func:`training.warm_start.init_model`), ``num_classes``, ``world_size``, ``title_expert``
        (:func:`training.title_expert.fit_title_expert`'s report), ``calibration``
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
    branch = image_branch(workspace, cfg)
    if branch.mode == "finetune" and cfg.head_warmup_epochs and world_size > 1:
        raise ValueError("train.head_warmup_epochs needs a single process: DDP fixes the parameters it "
                         "reduces when it wraps the model; set it to 0 under torchrun")
    model, pretrained = build_model(labels, cfg, branch.embedding_dim, branch.pretrained)
    pretrained = pretrained or branch.encoder is not None
    start = start_model(workspace, model, labels, cfg)
    plan = read_plan(workspace / PREPARED)
    if plan is not None and plan.mode == "replay" and not start.warm:
        raise ValueError(f"the prepared data is a replay sample ({plan.reason}) but this run starts from "
                         f"scratch ({start.reason}): re-run the prepare stage")
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    data = load_data(workspace / PREPARED, labels, cfg, device, model.image_encoder is not None,
                     rank, world_size, branch.cache, branch.norm)
    image_size = int(data.train.images.shape[1])
    if branch.mode == "finetune" and image_size != cfg.encoder.image_size:
        raise ValueError(f"the prepared images are {image_size} px but train.encoder.image_size is "
                         f"{cfg.encoder.image_size}: finetune trains the encoder at its input size; "
                         "re-run the prepare stage with prepare.image_size equal to it")
    criterion, optimizer = make_criterion(cfg), make_optimizer(model, cfg, device)
    steps_per_epoch = len(data.train_loader)
    # a warm start trains train.warm_epochs
    epochs = planned_epochs(cfg.model_copy(update={"epochs": cfg.warm_epochs}) if start.warm else cfg,
                            steps_per_epoch)
    lr_scheduler = make_lr_scheduler(optimizer, cfg.lr, epochs * steps_per_epoch, cfg.schedule)
    ema = utils.make_ema(model, cfg.ema_decay) if rank == 0 else None  # only rank 0 evaluates
    kept = ema.module if ema is not None else model  # the weights evaluated and kept
    stopper = utils.EarlyStopping(cfg.early_stopping_patience,
                                  warmup_steps(epochs * steps_per_epoch, cfg.schedule), steps_per_epoch)
    meta = RunRecord(params.to_dict(), labels, pretrained, image_size, data_fingerprint(data.train.frame),
                     world_size, start.init, branch.mode, branch.encoder,
                     replay=plan.record if plan is not None else None)
    progress = utils.resume(workspace / CHECKPOINT, ckpt, meta.to_dict(), model, optimizer, lr_scheduler, ema,
                            stopper, epochs, rank)
    model.set_encoder_trainable(progress.start_epoch >= cfg.head_warmup_epochs)
    net = utils.wrap_model(model, device, world_size, cfg.compile)
    inherited = inherited_probe(start.probe_record, cfg, device, image_size)
    used = {}

    def measure() -> dict[str, float]:
        """The champion's probe when it holds here (same machine and step), else a measurement."""
        if inherited:
            used["source"] = start.init
            log.info("precision probe of %s reused (same machine and training step)", start.init)
            return inherited
        return measure_precisions(model, criterion, data.train, data.tree, cfg, device)

    precision, probe = choose_precision(cfg, device, deterministic, measure, progress.precision, rank, world_size)
    meta = dataclasses.replace(
        meta, precision=precision, precision_probe=probe,
        precision_probe_record=((ckpt or {}).get("precision_probe_record") if progress.precision is not None
                                else probe_record(probe, device, cfg, image_size, used.get("source", "measured"))))
    dtype = precision_dtype(meta.precision)
    if rank == 0:
        _log_start(data, meta, device)

    for epoch in range(progress.start_epoch, epochs):
        if model.finetunes_encoder and epoch == cfg.head_warmup_epochs and epoch > progress.start_epoch:
            model.set_encoder_trainable(True)
            log.info("epoch %d: head warm-up over, the encoder trains from now on (lr x %g)",
                     epoch, cfg.encoder_lr_scale)
        data.train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(net, criterion, optimizer, data.train_loader, device, epoch,
                                lr_scheduler, data.tree, ema, dtype, print_every if rank == 0 else 0)
        progress.epochs_run.append(epoch)
        stats["rows_per_rank"] = utils.gather_counts(stats.pop("rows"), world_size)  # each rank's share
        if rank == 0:
            stats.update(_validate(kept, criterion, data, device, params.score, dtype))
            utils.end_epoch(epoch, stats, kept, stopper, progress)
            utils.atomic_save(utils.checkpoint_dict(
                model, optimizer, lr_scheduler, ema, epoch, progress.kept_state, stopper.state_dict(),
                progress.history, meta.to_dict()), workspace / CHECKPOINT)
        if utils.broadcast_flag(stopper.stopped, world_size):
            break

    result = {}
    if rank == 0:
        if not (ckpt is not None and ckpt.get("finished") and not progress.epochs_run):
            # the served checkpoint, without the training state (a resumed finished run keeps its file)
            utils.atomic_save(utils.final_checkpoint_dict(
                progress.history[-1]["epoch"], progress.kept_state, stopper.state_dict(), progress.history,
                meta.to_dict(), ema), workspace / CHECKPOINT)
        result = _finish(workspace, data, meta, stopper, progress, device,
                         model.weights_source if branch.encoder is None else branch.encoder["weights"]["source"],
                         start, plan)
        if params.train.title_expert and params.train.branches != "image":  # an image model reads no title
            result = _title_expert(workspace, result, params.train.title_max_rows)
        result = _calibrate(workspace, params, result)
    utils.close_distributed(world_size)
    return result


def _finish(workspace: Path, data: Data, meta: RunRecord, stopper: utils.EarlyStopping, progress: utils.Progress,
            device: torch.device, weights_source: str | None, start: WarmStart, plan: ReplayPlan | None) -> dict:
    """Writes the train log of a finished run (see :func:`train`'s Returns)."""
    best = next((h for h in reversed(progress.history) if h["epoch"] == stopper.epoch), {})
    return utils.write_train_log(workspace / TRAIN_LOG, progress.history, {
        "pretrained": meta.pretrained, "weights_source": weights_source,
        "num_classes": len(meta.labels), "levels": data.tree.sizes,
        "n_train": len(data.train), "n_val": len(data.val), "image_size": meta.image_size,
        "device": device.type, "precision": meta.precision,
        "precision_probe": meta.precision_probe,
        "precision_probe_source": (meta.precision_probe_record or {}).get("source"),
        "world_size": meta.world_size,
        "best_epoch": stopper.epoch, "stopped_early": stopper.stopped,
        "val_business_weighted_score": best.get("val_business_weighted_score"),
        "best_val_accuracy": best.get("val_accuracy"),
        "epochs_run": progress.epochs_run,
        "init": start.init, "init_reason": start.reason,
        "init_heads": (start.report or {}).get("heads"),
        "replay": plan.mode if plan else None, "replay_reason": plan.reason if plan else None,
        "replay_counts": plan.counts if plan else None,
        **_encoder_log(workspace, meta),
    })


def _encoder_log(workspace: Path, meta: RunRecord) -> dict:
    """The train log's image-encoder entries: ``image_encoder``, and for a pretrained encoder its
    ``encoder_id``, ``weights_licence``, ``weights_sha256`` and the embed stage's counts
    (``images_embedded`` now, ``images_reused`` from the cache; None when fine-tuned: nothing is
    embedded ahead)."""
    encoder = meta.encoder
    if encoder is None:
        return {"image_encoder": "scratch"}
    embedded = read_embed_log(workspace) or {}
    same = meta.image_encoder == "frozen" and embedded.get("encoder_id") == encoder["id"]
    return {"image_encoder": meta.image_encoder, "encoder_id": encoder["id"],
            "weights_licence": encoder["weights"]["licence"], "weights_sha256": encoder["weights"]["sha256"],
            "images_embedded": embedded.get("embedded") if same else None,
            "images_reused": embedded.get("reused") if same else None}


def _title_expert(workspace: Path, log: dict, max_rows: int) -> dict:
    """Fits the linear title expert of the kept weights (``training.title_expert``), stores it in
    the checkpoint before calibration, and adds its report to the train log as ``title_expert``."""
    from training.title_expert import attach_title_expert

    report = attach_title_expert(workspace / CHECKPOINT, workspace / PREPARED, max_rows=max_rows)
    return utils.write_train_log(workspace / TRAIN_LOG, log["epochs"],
                                 {**{k: v for k, v in log.items() if k != "epochs"}, "title_expert": report})


def _calibrate(workspace: Path, params: Params, log: dict) -> dict:
    """Fits the temperature and the auto-categorisation threshold of the kept weights on the val
    split (``training.calibration``), stores them in the checkpoint, and adds them to the train
    log as ``calibration``."""
    from training.calibration import calibrate_checkpoint

    calibration = calibrate_checkpoint(workspace / CHECKPOINT, workspace / PREPARED, params.score)
    return utils.write_train_log(workspace / TRAIN_LOG, log["epochs"],
                                 {**{k: v for k, v in log.items() if k != "epochs"},
                                  "calibration": calibration})


def _launch_torchrun(nproc: int, argv: list[str], workspace: Path) -> dict:
    """Runs this stage again under ``torchrun --standalone --nproc_per_node nproc`` (the same
    arguments, this Python) and returns the train log rank 0 wrote.

    Raises:
        SystemExit: with torchrun's exit status when a process failed.
    """
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "training.train", *argv]
    log.info("train.nproc_per_node %d: %s", nproc, " ".join(cmd[1:]))
    done = subprocess.run(cmd, check=False)
    if done.returncode:
        raise SystemExit(done.returncode)
    return json.loads((workspace / TRAIN_LOG).read_text(encoding="utf-8"))


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
    if not logging.getLogger().handlers:  # the stage's progress on stdout, with its JSON result
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout)
    params = load_params(args.params)
    if params.train.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ and not args.test_only:
        return _launch_torchrun(params.train.nproc_per_node, sys.argv[1:] if argv is None else argv,
                                Path(args.workspace))
    result = train(Path(args.workspace), params, resume=not args.no_resume,
                   test_only=args.test_only, deterministic=args.deterministic,
                   print_every=args.print_every)
    if result:
        print(json.dumps({k: v for k, v in result.items() if k != "epochs"}, indent=2))
    return result


if __name__ == "__main__":
    main()
