"""The one image loader, on a real listing photo re-encoded the ways marketplaces send them:
validation (``check_image``) and training (``load_image``, prepare, serving) must see the same
upright RGB picture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from common.images import ImageReadError, open_rgb, to_rgb
from common.params import ValidateParams
from training.prepare import _decode_chunk
from training.presets import load_image
from validation.images import check_image

PARAMS = ValidateParams()
ORIENTATION = 0x0112  # EXIF tag


@pytest.fixture(scope="module")
def photo(real_jpeg: Path) -> Image.Image:
    """The real photo, decoded once, in RGB, 224 x 224 (the catalog's size; cropped if not)."""
    with Image.open(real_jpeg) as img:
        return ImageOps.fit(img.convert("RGB"), (224, 224))


def _accepted(folder: Path, name: str) -> None:
    error, sha, _ = check_image(folder, name, PARAMS)
    assert error is None and sha is not None, error


def _border(size: tuple[int, int], width: int = 24) -> np.ndarray:
    """bool (H, W): True on a ``width``-pixel frame around the picture."""
    mask = np.ones(size[::-1], dtype=bool)
    mask[width:-width, width:-width] = False
    return mask


@pytest.mark.parametrize(("orientation", "stored_as"), [
    (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_applied(tmp_path, photo, orientation, stored_as) -> None:
    """A phone photo stored sideways with EXIF Orientation=6 (or 8) is read upright, equal
    within JPEG tolerance to the same photo saved upright; it used to be trained on sideways."""
    upright = photo.crop((0, 40, 224, 184))  # not square, so a rotation changes the shape
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    upright.transpose(stored_as).save(tmp_path / "sideways.jpg", quality=95, exif=exif)

    _accepted(tmp_path, "sideways.jpg")
    got = load_image(tmp_path / "sideways.jpg", 64).astype(int)
    want = load_image(tmp_path / "upright.jpg", 64).astype(int)
    unturned = np.asarray(upright.transpose(stored_as).resize((64, 64))).astype(int)
    assert np.abs(got - want).mean() < 1.0
    assert np.abs(unturned - want).mean() > 3.0  # the check above can tell the two apart
    assert open_rgb(tmp_path / "sideways.jpg").size == upright.size


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path, photo) -> None:
    """The photo as a 16-bit grey PNG (mode I;16): accepted, read as its 8-bit grey version;
    converting it clipped every level above 255 to white (refused as image_blank)."""
    grey = photo.convert("L")
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(tmp_path / "g16.png")
    grey.save(tmp_path / "g8.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode == "I;16"

    _accepted(tmp_path, "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png", 64),
                                  load_image(tmp_path / "g8.png", 64))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I", "F"])
def test_every_16_bit_and_float_grey_mode_is_scaled(photo, mode) -> None:
    grey = np.asarray(photo.convert("L"))
    wide = grey.astype(np.uint32) * 257  # 0..65535
    if mode == "F":
        img = Image.fromarray((grey / 255.0).astype(np.float32))
    elif mode == "I":
        img = Image.fromarray(wide.astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        img = Image.frombytes(mode, photo.size, wide.astype(dtype).tobytes())
    assert img.mode == mode
    got = np.asarray(to_rgb(img))
    assert got.shape == (*grey.shape, 3) and got.dtype == np.uint8
    assert np.abs(got[..., 0].astype(int) - grey).max() <= 1


def test_rgba_png_transparent_background_is_white(tmp_path, photo) -> None:
    """Transparent pixels (black underneath) are composited on white, not shown black."""
    rgba = np.dstack([np.asarray(photo), np.full(photo.size[::-1], 255, np.uint8)])
    frame = _border(photo.size)
    rgba[frame] = (0, 0, 0, 0)
    Image.fromarray(rgba).save(tmp_path / "cut_out.png")

    _accepted(tmp_path, "cut_out.png")
    got = load_image(tmp_path / "cut_out.png", photo.size[0])  # the photo is square: no resize
    assert (got[frame] == 255).all()
    np.testing.assert_array_equal(got[~frame], np.asarray(photo)[~frame])


def test_fully_transparent_png_is_blank(tmp_path, photo) -> None:
    """The blank check sees what training sees: a transparent picture is a white one, whatever
    the colour values underneath (which the grey check used to read)."""
    rgba = np.dstack([np.asarray(photo), np.zeros(photo.size[::-1], np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "invisible.png")
    assert check_image(tmp_path, "invisible.png", PARAMS)[0].startswith(
        "image_blank: grey std dev 0.00")


def test_palette_png_with_a_transparent_index_is_white(tmp_path, photo) -> None:
    quantised = photo.quantize(colors=200)
    indices = np.asarray(quantised).copy()
    frame = _border(photo.size)
    indices[frame] = 255
    palette = quantised.getpalette()[:200 * 3]
    palette += [0, 0, 0] * (256 - 200)  # index 255: black, and transparent
    img = Image.frombytes("P", photo.size, indices.tobytes())
    img.putpalette(palette)
    img.save(tmp_path / "palette.png", transparency=255)
    with Image.open(tmp_path / "palette.png") as reread:
        assert reread.mode == "P" and "transparency" in reread.info

    _accepted(tmp_path, "palette.png")
    got = load_image(tmp_path / "palette.png", photo.size[0])
    assert (got[frame] == 255).all()
    np.testing.assert_array_equal(got[~frame], np.asarray(quantised.convert("RGB"))[~frame])


def test_grey_with_alpha_is_composited_on_white(photo) -> None:
    frame = _border(photo.size)
    grey = np.where(frame, 0, np.asarray(photo.convert("L"))).astype(np.uint8)  # black under
    alpha = np.where(frame, 0, 255).astype(np.uint8)
    got = np.asarray(to_rgb(Image.fromarray(np.dstack([grey, alpha]))))  # mode LA
    assert (got[frame] == 255).all()
    np.testing.assert_array_equal(got[~frame][:, 0], grey[~frame])


def test_cmyk_jpeg_read_as_rgb(tmp_path, photo) -> None:
    photo.convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    with Image.open(tmp_path / "print.jpg") as img:
        assert img.mode == "CMYK"
    _accepted(tmp_path, "print.jpg")
    got = load_image(tmp_path / "print.jpg", photo.size[0]).astype(int)
    assert np.abs(got - np.asarray(photo).astype(int)).mean() < 2.0


@pytest.mark.parametrize(("fmt", "options"), [("PNG", {}), ("WEBP", {"lossless": True})])
def test_animated_image_reads_its_first_frame(tmp_path, photo, fmt, options) -> None:
    """An animated PNG / WebP of two frames: validation and training both use frame 0."""
    path = tmp_path / f"animated.{fmt.lower()}"
    photo.save(path, format=fmt, save_all=True, append_images=[ImageOps.invert(photo)],
               duration=100, **options)
    with Image.open(path) as img:
        assert img.n_frames == 2
    photo.save(tmp_path / f"still.{fmt.lower()}", format=fmt, **options)

    _accepted(tmp_path, path.name)
    np.testing.assert_array_equal(load_image(path, 64),
                                  load_image(tmp_path / f"still.{fmt.lower()}", 64))


def test_empty_file_is_image_empty(tmp_path) -> None:
    """0 bytes is ``image_empty`` (it read ``image_format_unsupported: unknown``) in validation
    and in prepare."""
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert check_image(tmp_path, "empty.jpg", PARAMS) == ("image_empty", None, "")
    with pytest.raises(ImageReadError) as info:
        load_image(tmp_path / "empty.jpg", 32)
    assert info.value.reason == "image_empty"
    with pytest.raises(OSError, match=r"cannot decode image .*empty\.jpg: image_empty$"):
        _decode_chunk(([str(tmp_path / "empty.jpg")], 32))


def test_serving_names_the_loaders_reason() -> None:
    from training.inference import decode_image  # imports torch: a few seconds

    with pytest.raises(ValueError, match=r"^row 2: cannot read its image \(image_bytes of 0 bytes\): image_empty$"):
        decode_image(b"", 32, row=2)
    with pytest.raises(ValueError, match=r"^cannot read its image \(image_bytes of 5 bytes\): image_format_unsupported: unknown$"):
        decode_image(b"hello", 32)


def test_unconvertible_mode_is_refused_with_its_name(tmp_path, photo) -> None:
    """A LAB TIFF (a format training reads) used to come out with false colours."""
    photo.convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(ImageReadError, match=r"^image_mode_unsupported: LAB$"):
        load_image(tmp_path / "lab.tif", 32)
    with pytest.raises(OSError, match="image_mode_unsupported: LAB"):
        _decode_chunk(([str(tmp_path / "lab.tif")], 32))


def test_jpeg_draft_decodes_at_a_reduced_scale(real_jpeg) -> None:
    """Training asks libjpeg for the smallest scale that keeps ``draft_size`` pixels a side."""
    with Image.open(real_jpeg) as img:
        width, height = img.size
    assert min(width, height) >= 224
    assert open_rgb(real_jpeg).size == (width, height)
    small = open_rgb(io.BytesIO(real_jpeg.read_bytes()), draft_size=28).size
    assert min(small) >= 28 and small[0] <= -(-width // 4) and small[1] <= -(-height // 4)


def test_header_is_checked_before_decoding(photo) -> None:
    data = io.BytesIO()
    photo.save(data, format="PNG")
    with pytest.raises(ImageReadError, match=r"^image_too_large: 224x224$") as info:
        open_rgb(data, max_pixels=224 * 223)
    assert info.value.format == "PNG"
    with pytest.raises(ImageReadError, match=r"^image_format_unsupported: PNG$"):
        open_rgb(data, formats=("JPEG",))


@pytest.mark.parametrize("workers", [0, 2])
def test_decoded_batches_are_the_images_in_order_and_name_the_bad_row(
        monkeypatch, tmp_path, photo, workers) -> None:
    """Serial (``DECODE_WORKERS = 0``) and pooled decoding yield the same batches, in row
    order, and stop at the first unreadable image with its row."""
    import training.inference as inference

    files = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        photo.rotate(72 * i).save(path)
        files.append(path)
    monkeypatch.setattr(inference, "DECODE_WORKERS", workers)
    batches = list(inference._decoded_batches(files, 32, 2))
    assert [b.shape for b in batches] == [(2, 32, 32, 3), (2, 32, 32, 3), (1, 32, 32, 3)]
    expected = np.stack([inference.decode_image(f, 32) for f in files])
    assert np.array_equal(np.concatenate(batches), expected)
    broken = [*files[:3], tmp_path / "missing.png", files[4]]
    with pytest.raises(ValueError, match=r"^row 3: "):
        list(inference._decoded_batches(broken, 32, 2))


def test_open_rgb_never_follows_a_link(tmp_path, real_jpeg) -> None:
    """The shared loader opens paths with common.files.open_regular: a link is refused, named."""
    from common.files import NotRegularFileError

    (tmp_path / "link.jpg").symlink_to(real_jpeg)
    with pytest.raises(NotRegularFileError, match="symbolic link"):
        open_rgb(tmp_path / "link.jpg")
    assert open_rgb(real_jpeg).size == (224, 224)
