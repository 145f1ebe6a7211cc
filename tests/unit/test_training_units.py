"""Unit tests of the training package's pure parts: title hashing, presets, model shapes, split."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from common.params import TrainParams
from training.model import build_model
from training.prepare import stratified_split
from training.presets import TrainPreset, pad_crop, to_tensor_batch
from training.text import encode_texts, hash_feature, select_bags, title_features


def test_title_features_lowercase_words_bigrams_trigrams():
    feats = title_features("Red SHIRT")
    assert feats[:3] == ["w:red", "w:shirt", "b:red shirt"]
    assert "c:<re" in feats and "c:rt>" in feats
    assert title_features("") == []


def test_hash_is_stable_across_processes():
    """Python's hash() is salted per process; ours must not be."""
    here = [hash_feature(f, 1 << 18) for f in ("w:shirt", "b:red shirt", "c:<re")]
    code = ("from training.text import hash_feature;"
            "print([hash_feature(f, 1 << 18) for f in ('w:shirt', 'b:red shirt', 'c:<re')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == str(here)
    assert all(1 <= h < 1 << 18 for h in here)


def test_encode_texts_offsets_and_empty_title():
    ids, offsets = encode_texts(["red shirt", "", None], None, 1024)
    assert ids.dtype == torch.long and offsets.dtype == torch.long
    assert offsets.tolist()[0] == 0 and offsets.shape == (3,)
    n_first = len(title_features("red shirt"))
    assert offsets.tolist() == [0, n_first, n_first + 1]
    assert ids[n_first:].tolist() == [0, 0]  # empty bags get the reserved id 0
    assert int(ids.max()) < 1024


def test_select_bags_matches_reencoding():
    titles = ["red shirt", "blue jeans men", "", "watch"]
    ids, offsets = encode_texts(titles, None, 4096)
    sub_ids, sub_offsets = select_bags(ids, offsets, [3, 1])
    ref_ids, ref_offsets = encode_texts([titles[3], titles[1]], None, 4096)
    assert torch.equal(sub_ids, ref_ids) and torch.equal(sub_offsets, ref_offsets)


def test_to_tensor_batch_shape_and_flip():
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x = to_tensor_batch(images)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    flipped = TrainPreset(hflip_prob=1.0)(images)
    assert torch.allclose(flipped, x.flip(-1))
    with pytest.raises(ValueError):
        to_tensor_batch(images.astype(np.float32))


def test_pad_crop_translates_each_image_by_its_own_offset():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = pad_crop(images, torch.tensor([[2, 2], [0, 4]]), 2)
    assert out.shape == images.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[0], images[0])  # origin (padding, padding): unchanged
    # origin (0, 4): shifted down by 2 and left by 2, the edge rows / columns repeated
    assert torch.equal(out[1, :, 2:, :4], images[1, :, :4, 2:])
    assert torch.equal(out[1, :, 0], out[1, :, 2]) and torch.equal(out[1, :, :, 5], out[1, :, :, 3])
    assert torch.equal(pad_crop(images, torch.zeros(2, 2, dtype=torch.long), 0), images)
    with pytest.raises(ValueError):
        pad_crop(images, torch.tensor([[0, 5], [0, 0]]), 2)


def _split(images: np.ndarray, targets: torch.Tensor | None = None):
    from training.data import Split

    n = len(images)
    zeros = torch.zeros(n, dtype=torch.long)
    return Split(images, None, zeros, torch.arange(n), zeros, torch.arange(n), torch.zeros(n, 2),
                 zeros if targets is None else targets, pd.DataFrame())


def test_training_batches_flip_then_translate_each_listing_by_its_own_draw():
    """The train preset draws flips, then crops, for the whole global batch from the batch's
    seed; each listing gets the draw of its place in the global batch, whichever rank reads it."""
    from training.data import ListingDataset
    from training.presets import AugmentParams, EvalPreset, TrainPreset
    from training.sampler import BatchIndex

    images = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    preset = TrainPreset(0.5, crop_padding=2)
    dataset = ListingDataset(_split(images), preset, True)
    # this rank reads places 1, 3, 4 of a global batch of 5 (rows 3, 0, 4 there)
    batch = BatchIndex(torch.tensor([3, 0, 4]), torch.tensor([1, 3, 4]), 5, seed=7)
    drawn = preset.get_params(5, torch.Generator().manual_seed(7))
    got = dataset[batch][0]
    mine = drawn.select(torch.tensor([3, 1, 4]))  # the source reads rows in sorted order: 0, 3, 4
    assert torch.allclose(got, preset(images[[0, 3, 4]], mine))
    x = to_tensor_batch(images[[0, 3, 4]])
    for i in range(3):
        if mine.flip[i]:
            x[i] = x[i].flip(-1)
    assert torch.allclose(got, pad_crop(x, mine.crop, 2))
    fixed = AugmentParams(torch.tensor([False, True, False]), torch.tensor([[0, 4], [2, 2], [4, 0]]))
    x = to_tensor_batch(images[[0, 3, 4]])
    x[1] = x[1].flip(-1)
    assert torch.allclose(preset(images[[0, 3, 4]], fixed), pad_crop(x, fixed.crop, 2))
    plain = ListingDataset(_split(images), EvalPreset(), True)[BatchIndex.of(torch.tensor([3, 0, 4]))][0]
    assert torch.allclose(plain, to_tensor_batch(images[[0, 3, 4]]))


def _write_train_split(folder, images: np.ndarray) -> None:
    """A ``train`` split of ``len(images)`` listings over ``LEAVES`` and its image cache."""
    n = len(images)
    pd.DataFrame({"listing_id": [str(i) for i in range(n)],
                  "title": [f"listing {i} cotton shirt" for i in range(n)],
                  "brand": ["Nike", "Puma"] * (n // 2), "price": np.arange(n, dtype=float),
                  "category_path": [LEAVES[i % len(LEAVES)] for i in range(n)]}
                 ).to_parquet(folder / "train.parquet")
    np.save(folder / "train_images.npy", images)


def test_worker_processes_assemble_the_same_batches_as_the_training_process(tmp_path):
    """``train.workers > 0`` (the CUDA setting) ships the dataset to persistent DataLoader worker
    processes, which re-open the memory-mapped image cache: over epochs set on the sampler they
    must yield what the training process assembles itself, in the same order (flips and
    translations included), and leave the global RNG (dropout's) alone."""
    from training.data import ListingDataset, load_split, make_loader
    from training.presets import TrainPreset
    from training.sampler import EpochBatchSampler

    n = 40
    _write_train_split(tmp_path, np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
    split = load_split(tmp_path, "train", LEAVES, TrainParams(text_buckets=1024))
    assert isinstance(split.images, np.memmap)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    untouched = torch.rand(3)
    epochs = {}
    for workers in (0, 2):
        loader = make_loader(ListingDataset(split, TrainPreset(0.5, crop_padding=2)),
                             EpochBatchSampler(split.targets, 16, seed=3), workers, cpu)
        torch.manual_seed(0)
        epochs[workers] = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            epochs[workers].append(list(loader))
        assert torch.equal(torch.rand(3), untouched)
    for here, there in zip(epochs[0], epochs[2], strict=True):
        assert len(here) == len(there) == 3
        for a, b in zip(here, there, strict=True):
            assert [tuple(t.shape) for t in a] == [tuple(t.shape) for t in b]
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(epochs[0][0][0][0], epochs[0][1][0][0])  # another epoch, other rows


def test_the_batch_source_pickles_without_its_images_for_spawned_workers(tmp_path):
    """Under the spawn and forkserver start methods (macOS, Windows; Python 3.14's Linux
    default) a DataLoader pickles its dataset into each worker. The batch source must leave the
    memory-mapped image cache out of the pickle (a memmap pickles as a full copy of the array)
    and re-open it in the worker, yielding the same batches."""
    import pickle

    from training.data import ListingDataset, load_split
    from training.sampler import EpochBatchSampler

    n = 40
    images = np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    _write_train_split(tmp_path, images)
    split = load_split(tmp_path, "train", LEAVES, TrainParams(text_buckets=1024))
    sampler = EpochBatchSampler(split.targets, 16, seed=0)
    dataset = ListingDataset(split)
    expected = [dataset[b] for b in sampler]
    blob = pickle.dumps(dataset)
    assert len(blob) < images.nbytes / 4  # the 491,520 image bytes stay out of the pickle
    assert split.images is not None  # the training process keeps its own memmap
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=1,
                                         multiprocessing_context="spawn")
    for a, b in zip(expected, loader, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    first = next(iter(sampler))
    assert all(torch.equal(x, y) for x, y in zip(expected[0], pickle.loads(blob)[first], strict=True))


def test_bf16_autocast_on_cpu_only_with_native_bf16_instructions():
    from pathlib import Path

    from training.precision import autocast, autocast_dtype, cpu_has_native_bf16

    cpu = torch.device("cpu")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the kernel's CPU flags, an independent reading of the same features
        flags = set(cpuinfo.read_text().split())
        assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    native = cpu_has_native_bf16()
    assert autocast_dtype(cpu, True) == (torch.bfloat16 if native else None)
    assert autocast_dtype(cpu, False) is None
    assert autocast_dtype(torch.device("cuda"), True) == torch.bfloat16
    model, _ = build_model(LEAVES, TrainParams(backbone="resnet18", branches="image", structured=False, weights="none"))
    with torch.no_grad(), autocast(cpu, autocast_dtype(cpu, True)):
        logits = model.eval()(torch.zeros(2, 3, 32, 32), None, None)[-1]
    assert logits.dtype == (torch.bfloat16 if native else torch.float32)


def _never() -> dict:
    raise AssertionError("the precision was measured where the rule needs no measurement")


def test_amp_auto_keeps_bf16_on_a_cpu_only_when_measured_clearly_faster():
    from training.precision import BF16_MIN_SPEEDUP, cpu_has_native_bf16, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    native = cpu_has_native_bf16()
    bf16_if_native = torch.bfloat16 if native else None
    fast, slow = {"float32": 100.0, "bfloat16": 100.0 * BF16_MIN_SPEEDUP + 1}, {"float32": 100.0, "bfloat16": 110.0}
    assert resolve_precision(TrainParams(amp=False), cpu, measure=_never) == (None, None)
    assert resolve_precision(TrainParams(amp=False), cuda, measure=_never) == (None, None)
    assert resolve_precision(TrainParams(amp=True), cpu, measure=_never) == (bf16_if_native, None)
    assert resolve_precision(TrainParams(amp="auto"), cuda, measure=_never) == (torch.bfloat16, None)
    # deterministic mode: the choice must not hang on a timing
    assert resolve_precision(TrainParams(amp="auto"), cpu, deterministic=True, measure=_never) == (None, None)
    if native:
        assert resolve_precision(TrainParams(amp="auto"), cpu, measure=lambda: fast) == (torch.bfloat16, fast)
        assert resolve_precision(TrainParams(amp="auto"), cpu, measure=lambda: slow) == (None, slow)
    else:  # emulated bf16 is never measured
        assert resolve_precision(TrainParams(amp="auto"), cpu, measure=_never) == (None, None)


def test_a_champions_probe_is_reused_only_on_the_same_machine_for_the_same_training_step():
    from training.precision import inherited_probe, machine_fingerprint, probe_record

    cpu = torch.device("cpu")
    cfg = TrainParams(backbone="resnet18", batch_size=64, epochs=3)
    rates = {"float32": 150.0, "bfloat16": 250.0}
    record = probe_record(rates, cpu, cfg, 48)
    assert record["source"] == "measured" and record["machine"] == machine_fingerprint(cpu)
    assert probe_record(None, cpu, cfg, 48) is None
    # what does not change a step's cost may differ: a warm start's epochs, its lr, its init
    warm = cfg.model_copy(update={"epochs": 1, "warm_epochs": 2, "init": "champion", "lr": 1e-4, "seed": 7})
    assert inherited_probe(record, warm, cpu, 48) == rates
    # another step, image size or machine: measure again
    assert inherited_probe(record, cfg.model_copy(update={"batch_size": 32}), cpu, 48) is None
    assert inherited_probe(record, cfg.model_copy(update={"backbone": "resnet50"}), cpu, 48) is None
    assert inherited_probe(record, cfg, cpu, 64) is None
    assert inherited_probe({**record, "machine": "cpu another CPU torch 2.0 threads 8"}, cfg, cpu, 48) is None
    assert inherited_probe(None, cfg, cpu, 48) is None
    assert inherited_probe({**record, "rates": None}, cfg, cpu, 48) is None


def test_precision_probe_times_both_precisions_and_leaves_the_model_and_rng_alone():
    from training.hierarchy import LabelTree
    from training.precision import measure_precisions

    n = 6
    images = np.random.default_rng(2).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    split = _split(images, torch.arange(n) % len(LEAVES))
    cfg = TrainParams(backbone="resnet18", branches="image", structured=False, weights="none", batch_size=4)
    model, _ = build_model(LEAVES, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    rates = measure_precisions(model, torch.nn.CrossEntropyLoss(), split, LabelTree(LEAVES), cfg,
                               torch.device("cpu"), repeats=1)
    after_probe = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_probe, torch.rand(3))  # the global RNG stream is where it was
    assert set(rates) == {"float32", "bfloat16"} and all(r > 0 for r in rates.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert all(p.grad is None for p in model.parameters())


def test_optimizer_is_fused_adamw_and_steps_like_the_for_loop_adamw():
    """The fused kernel is a speed choice only: a step moves every parameter as the default
    AdamW does, with no weight decay on biases, norms and embeddings."""
    from training.optim import make_optimizer, param_groups

    cfg = TrainParams(backbone="resnet18", branches="fused", weights="none", lr=0.01, weight_decay=0.1,
                      text_buckets=1024, field_buckets=64)
    fused_model, _ = build_model(LEAVES, cfg)
    plain_model, initial = copy.deepcopy(fused_model), copy.deepcopy(fused_model)
    optimizer = make_optimizer(fused_model, cfg, torch.device("cpu"))
    assert optimizer.defaults["fused"]
    reference = torch.optim.AdamW(param_groups(plain_model, cfg.weight_decay), lr=cfg.lr, foreach=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    moved = 0
    for (name, p), q, p0 in zip(fused_model.named_parameters(), plain_model.parameters(), initial.parameters(),
                                strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(p, p0)
    assert moved == len(list(fused_model.parameters()))
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(fused_model.text_encoder.embedding.weight) not in decayed
    assert id(fused_model.heads[-1].weight) in decayed and id(fused_model.heads[-1].bias) not in decayed


LEAVES = sorted(["Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts", "Apparel > Bottomwear > Jeans",
          "Footwear > Shoes > Casual Shoes", "Footwear > Shoes > Sports Shoes", "Footwear > Sandal > Sandals",
          "Personal Care > Fragrance"])


def _listings(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({
        "title": ["a red shirt", "shoes", ""][:n],
        "description": ["soft cotton", None, "leather"][:n],
        "brand": ["Nike", None, "Puma"][:n],
        "price": [799.0, float("nan"), 1999.0][:n],
        "currency": ["INR", "INR", None][:n],
        "attributes": ['{"gender": "Men"}', None, '{"gender": "Women", "usage": "Sports"}'][:n],
    })


@pytest.mark.parametrize("branches", ["fused", "image", "text"])
def test_model_forward_shapes_one_head_per_level(branches):
    from training.text import encode_listings

    torch.manual_seed(0)
    params = TrainParams(branches=branches, text_buckets=1024, text_dim=16, weights="none",
                         fields=("brand", "currency", "gender", "usage"))
    model, pretrained = build_model(LEAVES, params)
    assert pretrained is False
    assert (model.image_encoder is None) == (branches == "text")
    assert (model.text_encoder is None) == (branches == "image")
    assert (model.field_encoder is None) == (branches == "text")  # image: a title-less catalog
    images = torch.randn(3, 3, 32, 32)
    model.eval()
    level_logits = model(images if branches != "text" else None, *encode_listings(_listings(), params))
    # 3 levels: {Apparel, Footwear, Personal Care}, 5 level-2 prefixes, 7 leaves
    assert [tuple(t.shape) for t in level_logits] == [(3, 3), (3, 5), (3, 7)]
    probs = model.leaf_log_probs(level_logits).exp()
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)


def test_flat_model_has_one_head_trained_on_the_leaf_targets():
    """``hierarchical: false``: the one head learns leaves, whatever the depth of the taxonomy
    whose level targets the training loop passes."""
    from training.hierarchy import LabelTree
    from training.text import encode_listings

    params = TrainParams(branches="text", hierarchical=False, text_buckets=1024)
    model, _ = build_model(LEAVES, params)
    assert len(model.heads) == 1 and model.num_classes == len(LEAVES)
    criterion = torch.nn.CrossEntropyLoss(reduction="sum")
    targets = torch.tensor([6, 0, 3])
    logits = model(None, *encode_listings(_listings(), params))
    loss = model.level_loss(logits, LabelTree(LEAVES).level_targets(targets), criterion)
    assert torch.allclose(loss, criterion(logits[0], targets) / 3)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_large",
                                      "convnext_tiny"])
def test_named_backbones_give_what_their_last_linear_reads_and_train(backbone):
    """The image branch of each backbone the issue names outputs exactly what the torchvision
    model's last Linear reads (ConvNeXt's head LayerNorm2d and MobileNetV3's 1280-wide layer kept),
    and a training step reaches every parameter."""
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    model, pretrained = build_model(LEAVES, TrainParams(backbone=backbone, branches="image", structured=False, weights="none"))
    assert pretrained is False and model.weights_source is None
    encoder = model.image_encoder
    reference = torchvision.models.get_model(backbone, weights=None)
    name, last = [(n, m) for n, m in reference.named_modules() if isinstance(m, nn.Linear)][-1]
    missing, unexpected = reference.load_state_dict(encoder.state_dict(), strict=False)
    assert sorted(missing) == [f"{name}.bias", f"{name}.weight"] and unexpected == []
    read = []
    last.register_forward_hook(lambda module, inputs, output: read.append(inputs[0]))
    images = torch.randn(2, 3, 64, 64)
    encoder.eval(), reference.eval()
    with torch.no_grad():
        features = encoder(images)
        reference(images)
    assert features.shape == (2, last.in_features) == (2, model.heads[0].in_features)
    assert torch.allclose(features, read[0], atol=1e-5)

    model.train()
    loss = sum(logits.logsumexp(1).mean() for logits in model(images, None, None))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_pretrained_weights_from_a_file_or_the_torch_hub_cache_never_downloaded(tmp_path, monkeypatch):
    import os

    import torchvision

    from training.backbones import build_backbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    backbone, dim, source = build_backbone("resnet18", "auto")  # nothing cached, no network
    assert dim == 512 and source is None
    torch.manual_seed(1)
    donor = torchvision.models.resnet18()
    for i, saved in enumerate([donor.state_dict(), {"model": donor.state_dict()}]):  # also the reference
        path = tmp_path / f"weights{i}.pth"                                        # scripts' checkpoint
        torch.save(saved, path)
        backbone, _, source = build_backbone("resnet18", str(path))
        assert source == f"file {path.resolve()}"
        assert torch.equal(backbone.conv1.weight, donor.conv1.weight)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a state dict")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        build_backbone("resnet18", str(tmp_path / "photo.jpg"))
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no key matches a resnet18"):
        build_backbone("resnet18", str(tmp_path / "other.pth"))
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(ValueError, match=r"does not fit a resnet18 model \(\d+ errors\), e.g. size mismatch for layer1"):
        build_backbone("resnet18", str(tmp_path / "resnet50.pth"))

    # weights: auto finds a file in the cache under the name torchvision downloads it as
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(donor.state_dict(), cache / os.path.basename(weights.url))
    model, pretrained = build_model(LEAVES, TrainParams(branches="image", structured=False, weights="auto"))
    assert pretrained is True
    assert model.weights_source == "torchvision ResNet18_Weights.IMAGENET1K_V1 (cached)"
    assert torch.equal(model.image_encoder.conv1.weight, donor.conv1.weight)


def test_label_tree_levels_ancestors_and_shorter_paths():
    from training.hierarchy import LabelTree, level_weights

    tree = LabelTree(LEAVES)
    assert tree.depth == 3 and tree.sizes == [3, 5, 7]
    assert tree.level_labels[0] == ["Apparel", "Footwear", "Personal Care"]
    # the 2-level path is its own prefix at level 3
    assert "Personal Care > Fragrance" in tree.level_labels[2]
    for j, leaf in enumerate(LEAVES):
        for k in range(tree.depth):
            assert leaf.startswith(tree.level_labels[k][int(tree.ancestors[k, j])])
    targets = tree.level_targets(torch.tensor([LEAVES.index("Footwear > Shoes > Sports Shoes"), -1]))
    assert [t.tolist() for t in targets] == [[1, -1], [tree.level_labels[1].index("Footwear > Shoes"), -1],
                                           [tree.level_labels[2].index("Footwear > Shoes > Sports Shoes"), -1]]
    assert level_weights([0.25, 0.5, 1.0], 2) == [0.5, 1.0]
    assert level_weights([0.5], 3) == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError):
        level_weights([1.0, 0.0], 2)
    with pytest.raises(ValueError):
        LabelTree(["A > B", "A > B"])


def test_predictions_are_consistent_with_the_tree():
    """Heads that disagree (level 1 sure of Footwear, leaf head slightly prefers a Shirt) give a
    leaf under the level-1 choice: the predicted leaf's ancestors are the predicted ancestors."""
    from training.hierarchy import LabelTree

    tree = LabelTree(LEAVES)
    model, _ = build_model(LEAVES, TrainParams(branches="text", text_buckets=1024,
                                               level_weights=(1.0, 1.0, 1.0)))
    level1 = torch.tensor([[-5.0, 5.0, -5.0]])
    level2 = torch.zeros(1, 5)
    leaf = torch.zeros(1, 7)  # the leaf head's classes: the last level's labels (sorted leaves)
    leaf[0, tree.level_labels[2].index("Apparel > Topwear > Shirts")] = 1.0
    leaf[0, tree.level_labels[2].index("Footwear > Shoes > Sports Shoes")] = 0.5
    top = int(model.leaf_log_probs([level1, level2, leaf]).argmax(1))
    assert tree.leaves[top] == "Footwear > Shoes > Sports Shoes"
    flat, _ = build_model(LEAVES, TrainParams(branches="text", hierarchical=False, text_buckets=1024))
    assert tree.leaves[int(flat.leaf_log_probs([leaf]).argmax(1))] == "Apparel > Topwear > Shirts"


def test_structured_and_description_features():
    from training.text import description_features, encode_fields, field_tokens, price_features

    rows = _listings().to_dict("records")
    assert field_tokens(rows[0], ["brand", "currency", "gender"]) == ["brand=nike", "currency=inr", "gender=men"]
    assert field_tokens(rows[1], ["brand", "gender"]) == []
    assert field_tokens(rows[2], ["usage"]) == ["usage=sports"]
    numeric = price_features([799.0, None, -1.0, "x"])
    assert numeric[0, 0] == pytest.approx(np.log1p(799.0) / 10) and numeric[0, 1] == 0
    assert numeric[1:, 1].tolist() == [1.0, 1.0, 1.0]
    ids, offsets, num = encode_fields(rows, ["brand", "gender"], 64)
    assert offsets.tolist() == [0, 2, 3] and ids[2] == 0 and num.shape == (3, 2)
    assert description_features("Soft cotton tee", 2) == ["d:soft", "d:cotton", "db:soft cotton"]
    assert description_features(None) == []


def test_class_balanced_sampling_lifts_the_long_tail():
    from training.sampler import epoch_order

    targets = torch.tensor([0] * 900 + [1] * 100)
    uniform = epoch_order(targets, 0, 1)
    assert sorted(uniform.tolist()) == list(range(1000))
    balanced = epoch_order(targets, 0, 1, "class_balanced", 1.0)
    share = float((targets[balanced] == 1).float().mean())
    assert 0.4 < share < 0.6  # power 1: each class ~half of the draws
    sqrt = float((targets[epoch_order(targets, 0, 1, "class_balanced", 0.5)] == 1).float().mean())
    assert 0.2 < sqrt < 0.35  # sqrt(100) / (sqrt(900) + sqrt(100)) = 0.25
    assert torch.equal(balanced, epoch_order(targets, 0, 1, "class_balanced", 1.0))


@pytest.mark.parametrize("sampling", ["uniform", "class_balanced"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_samples_its_own_share_of_every_global_batch(world_size, sampling):
    """Under DDP the ranks' samplers split each epoch's global batches between them: disjoint
    shares (by place in the batch) that together are exactly the one-process epoch, in its
    order and batch by batch, each rank with its 1/N share (within one row per batch)."""
    from training.sampler import EpochBatchSampler

    n, batch_size = 103, 16
    targets = torch.tensor([0] * 80 + [1] * 20 + [2] * 3)
    kw = {"seed": 5, "sampling": sampling, "balance_power": 0.5}
    single = EpochBatchSampler(targets, batch_size, **kw)
    ranks = [EpochBatchSampler(targets, batch_size, rank=r, world_size=world_size, **kw)
             for r in range(world_size)]
    orders = []
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        whole = list(single)
        shares = [list(s) for s in ranks]
        assert len(whole) == len(single) == 7 and all(len(s) == len(whole) for s in shares)
        for step, batch in enumerate(whole):
            parts = [share[step] for share in shares]
            places = torch.cat([p.positions for p in parts])
            assert sorted(places.tolist()) == list(range(batch.global_size))  # disjoint, covering
            assert all(p.global_size == batch.global_size == single.global_batch_size(step) for p in parts)
            assert max(len(p.rows) for p in parts) - min(len(p.rows) for p in parts) <= 1
            rebuilt = torch.empty_like(batch.rows)
            for p in parts:
                rebuilt[p.positions] = p.rows
            assert torch.equal(rebuilt, batch.rows)  # the same rows, in the same places
            assert len({p.seed for p in parts} | {batch.seed}) == 1  # one augmentation draw per batch
        rows = torch.cat([b.rows for b in whole])
        orders.append(rows)
        per_rank = [torch.cat([b.rows for b in share]) for share in shares]
        assert sum(len(r) for r in per_rank) == n
        if sampling == "uniform":  # each listing once per epoch, on exactly one rank
            assert sorted(torch.cat(per_rank).tolist()) == list(range(n))
            assert all(not set(a.tolist()) & set(b.tolist())
                       for i, a in enumerate(per_rank) for b in per_rank[i + 1:])
    assert not torch.equal(orders[0], orders[1])  # set_epoch reshuffles


def test_early_stopping_keeps_the_best_and_ignores_the_warm_up():
    from training.utils import EarlyStopping

    stopper = EarlyStopping(patience=2, warmup=3 * 10, steps_per_epoch=10)
    kept = [stopper.update(e, s) for e, s in enumerate([0.5, 0.4, 0.3, 0.6, 0.5, 0.55])]
    # epochs 1 and 2 end inside the warm-up (steps 20, 30): not counted; 4 and 5 are
    assert kept == [True, False, False, True, False, False] and stopper.stopped
    assert stopper.state_dict() == {"score": 0.6, "epoch": 3, "bad_epochs": 2, "stopped": True}
    again = EarlyStopping(2, 30, 10)
    again.load_state_dict(stopper.state_dict())
    assert again.state_dict() == stopper.state_dict()
    off = EarlyStopping(0, 0, 10)
    assert all(off.update(e, s) for e, s in enumerate([0.5, 0.1, 0.2])) and not off.stopped


def test_stratified_split_is_deterministic_and_keeps_singletons_in_train():
    frame = pd.DataFrame({
        "listing_id": [str(i) for i in range(41)],
        "category_path": ["A > B > C"] * 20 + ["A > B > D"] * 20 + ["X > Y > Z"],
    })
    side = stratified_split(frame, 0.1, seed=7)
    assert side.tolist() == stratified_split(frame, 0.1, seed=7).tolist()
    assert (side == "val").sum() == 4
    assert side.iloc[-1] == "train"
    assert set(side[frame.category_path == "A > B > C"]) == {"train", "val"}


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
@pytest.mark.parametrize("total_steps", [1, 3, 4, 5, 8, 200])
def test_lr_schedule_is_valid_for_tiny_and_long_runs(total_steps, schedule):
    """A week with a few hundred listings gives a handful of steps: the schedule must still run."""
    from training.optim import make_lr_scheduler

    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scheduler = make_lr_scheduler(optimizer, 0.1, total_steps, schedule)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(rates) <= 0.1 + 1e-9 and min(rates) > 0
    if total_steps >= 4:
        assert rates[0] < max(rates)  # warm-up
        assert rates[-1] < max(rates)  # annealing


def test_min_steps_raise_the_epochs_of_a_small_catalog():
    from training.optim import planned_epochs, warmup_steps

    assert planned_epochs(TrainParams(epochs=8), 7) == 8
    assert planned_epochs(TrainParams(epochs=8, min_steps=400), 7) == 58  # ceil(400 / 7)
    assert planned_epochs(TrainParams(epochs=8, min_steps=400), 66) == 8
    assert warmup_steps(528, "onecycle") == 132 and warmup_steps(528, "cosine") == 26
    assert warmup_steps(3, "onecycle") == 0


def test_level_accuracies_count_shared_leading_levels():
    from training.evaluate import level_accuracies

    true = ["A > B > C", "A > B > C", "A > X > Y", "D > E > F"]
    pred = ["A > B > C", "A > B > Z", "A > B > Y", "G > E > F"]
    assert level_accuracies(true, pred) == {
        "level_1_accuracy": 0.75, "level_2_accuracy": 0.5, "level_3_accuracy": 0.25}


def test_branch_heads_train_only_and_add_to_the_loss():
    from training.hierarchy import LabelTree
    from training.text import encode_listings

    params = TrainParams(branches="fused", text_buckets=1024, text_dim=16, weights="none",
                         branch_loss_weight=0.5)
    model, _ = build_model(LEAVES, params)
    inputs = (torch.randn(3, 3, 32, 32), *encode_listings(_listings(), params))
    model.train()
    out = model(*inputs)
    assert len(out) == 3 + 3  # 3 levels, then one leaf head per branch (image, text, structured)
    assert all(o.shape == (3, len(LEAVES)) for o in out[3:])
    tree = LabelTree(LEAVES)
    targets = tree.level_targets(torch.tensor([0, 1, 2]))
    criterion = torch.nn.CrossEntropyLoss(reduction="sum")
    assert model.level_loss(out, targets, criterion) > model.level_loss(out[:3], targets, criterion)
    model.eval()
    assert len(model(*inputs)) == 3


def test_char_ngram_lengths_are_configurable():
    assert title_features("Red", (2, 4)) == ["w:red", "c2:<r", "c2:re", "c2:ed", "c2:d>", "c4:<red", "c4:red>"]
