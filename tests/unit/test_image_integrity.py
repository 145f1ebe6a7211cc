"""What a usable listing image is (issue 26): real listing photos damaged the ways hostile feeds
damage them: zeroed or cut data, a header larger than its data, another file appended, broken
checksums. Each is refused with its reason; the undamaged photos are accepted."""

from __future__ import annotations

import hashlib
import io
import struct
import time
from pathlib import Path

import pytest
from PIL import Image

from common.params import ValidateParams
from validation.images import check_image

PARAMS = ValidateParams()


@pytest.fixture()
def batch(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def photos(fashion_dir: Path) -> list[Path]:
    """Twenty real listing photos (JPEG, 224 x 224 or 225 x 300), spread over the catalog."""
    return sorted((fashion_dir / "images").glob("*.jpg"))[::500][:20]


def _check(batch: Path, data: bytes, name: str = "x.jpg") -> str | None:
    (batch / "images" / name).write_bytes(data)
    return check_image(batch, f"images/{name}", PARAMS)[0]


def _zero_middle_fifth(data: bytes) -> bytes:
    n = len(data)
    return data[: 2 * n // 5] + bytes(3 * n // 5 - 2 * n // 5) + data[3 * n // 5:]


def test_zeroed_middle_fifth_is_refused_as_grey_fill(batch, real_jpeg) -> None:
    """Zeros in the middle of the compressed data desynchronise libjpeg, which meets the end
    marker early and fills the rest with mid-grey; Pillow returned that picture without a word."""
    damaged = _zero_middle_fifth(real_jpeg.read_bytes())
    with Image.open(io.BytesIO(damaged)) as img:
        img.load()  # Pillow decodes it without an error: the check cannot lean on one
    error = _check(batch, damaged)
    assert error.startswith("image_truncated: ") and "grey fill for missing data" in error
    share = float(error.split("image_truncated: ")[1].split("%")[0]) / 100
    assert share > 0.05


def test_zeroed_real_photos_refused(batch, photos) -> None:
    """Every one of twenty real photos with its middle fifth zeroed is refused; each intact one
    is accepted (the same twenty)."""
    for photo in photos:
        data = photo.read_bytes()
        assert _check(batch, data) is None, photo.name
        assert (_check(batch, _zero_middle_fifth(data)) or "").startswith("image_truncated: "), photo.name


def _claim_size(data: bytes, width: int, height: int) -> bytes:
    sof = data.index(b"\xff\xc0")  # the catalog's photos are baseline JPEGs
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def test_header_larger_than_its_data_refused_before_decoding(batch, real_jpeg) -> None:
    """6000 x 6000 claimed over a 224 x 224 photo's data: within max_image_pixels (36 MP <
    40 MP), it decoded to a 108 MB, mostly grey, picture and was stored."""
    lying = _claim_size(real_jpeg.read_bytes(), 6000, 6000)
    start = time.perf_counter()
    error = _check(batch, lying)
    assert time.perf_counter() - start < 0.5  # the scans' size says it: no 36 MP decode
    assert error.startswith("image_truncated: its header claims 6000x6000 pixels, whose "
                            "843750 blocks need at least")


def test_header_twice_its_data_refused_as_fill(batch, real_jpeg) -> None:
    """A smaller lie (448 x 448) passes the bits bound; the decode's grey fill gives it away."""
    assert _check(batch, _claim_size(real_jpeg.read_bytes(), 448, 448)).startswith("image_truncated: ")


def test_cut_file_with_an_end_marker_refused(batch, real_jpeg) -> None:
    """Cut in the middle, then given an EOI: the container is whole, the data is not."""
    data = real_jpeg.read_bytes()
    assert _check(batch, data[: len(data) * 2 // 3] + b"\xff\xd9").startswith("image_truncated: ")


@pytest.mark.parametrize("payload", [
    b"PK\x03\x04" + bytes(20 * 2**20 - 4),  # a 20 MB ZIP
    b"<html><script>alert(1)</script>" + b"x" * 2000,
])
def test_appended_file_refused(batch, real_jpeg, payload) -> None:
    data = real_jpeg.read_bytes()
    error = _check(batch, data + payload)
    assert error == (f"image_trailing_data: {len(payload)} bytes after the JPG image's end marker "
                     f"(EOI) at byte {len(data)} (at most {PARAMS.max_image_trailing_bytes} allowed)")


def test_a_few_padding_bytes_are_tolerated(batch, real_jpeg) -> None:
    data = real_jpeg.read_bytes() + bytes(64)
    (batch / "images" / "pad.jpg").write_bytes(data)
    assert check_image(batch, "images/pad.jpg", PARAMS) == (
        None, hashlib.sha256(data).hexdigest(), ".jpg")
    strict = PARAMS.model_copy(update={"max_image_trailing_bytes": 0})
    assert check_image(batch, "images/pad.jpg", strict)[0].startswith("image_trailing_data: 64 bytes")


@pytest.mark.parametrize(("fmt", "ext", "end"), [("PNG", ".png", "IEND chunk"), ("WEBP", ".webp", "RIFF size")])
def test_png_and_webp_with_an_appended_file_refused(batch, real_jpeg, fmt, ext, end) -> None:
    buf = io.BytesIO()
    with Image.open(real_jpeg) as img:
        img.save(buf, format=fmt)
    data = buf.getvalue()
    error = _check(batch, data + b"PK\x03\x04" + bytes(4096), f"x{ext}")
    assert error == (f"image_trailing_data: 4100 bytes after the {ext[1:].upper()} image's {end} "
                     f"at byte {len(data)} (at most {PARAMS.max_image_trailing_bytes} allowed)")


def test_png_chunk_with_a_wrong_crc_refused(batch, real_jpeg) -> None:
    """A flipped bit in IDAT is caught by the chunk's CRC-32, before decoding (zlib's Adler-32
    would catch it only at the stream's end, after a full decode)."""
    buf = io.BytesIO()
    with Image.open(real_jpeg) as img:
        img.save(buf, format="PNG", compress_level=0)
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    data[idat + 4 + 5000] ^= 0x01
    assert _check(batch, bytes(data), "x.png") == (
        f"image_corrupt: the PNG chunk IDAT at byte {idat - 4} fails its CRC-32 check")


def test_truncated_png_refused(batch, real_jpeg) -> None:
    buf = io.BytesIO()
    with Image.open(real_jpeg) as img:
        img.save(buf, format="PNG")
    data = buf.getvalue()
    assert _check(batch, data[: len(data) // 2], "x.png").startswith("image_truncated: the file ends ")


def test_restart_markers_out_of_order_refused(batch, real_jpeg) -> None:
    """A JPEG with restart markers (every 2 blocks): one marker of the sequence lost to damage."""
    buf = io.BytesIO()
    with Image.open(real_jpeg) as img:
        img.save(buf, format="JPEG", quality=90, restart_marker_blocks=2)
    data = buf.getvalue()
    assert _check(batch, data) is None
    third = data.index(b"\xff\xd2")  # RST2
    damaged = data[:third] + b"\xff\xd5" + data[third + 2:]
    assert _check(batch, damaged) == (f"image_corrupt: restart marker RST5 at byte {third} where "
                                      "RST2 is due: the data between them is damaged")


def test_mpo_ends_after_its_last_frame(batch, real_jpeg) -> None:
    """A multi-picture JPEG (phone cameras) holds its other frames after the first EOI: they are
    part of the file, not trailing data; bytes after the last frame are."""
    from common.images import image_end, open_image

    with Image.open(real_jpeg) as img:
        frames = [img.convert("RGB"), img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buf = io.BytesIO()
    frames[0].save(buf, format="MPO", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    with open_image(io.BytesIO(data)) as img:
        assert img.format == "MPO" and image_end(io.BytesIO(data), img) == len(data)
    assert _check(batch, data) is None
    assert _check(batch, data + bytes(5000)).startswith("image_trailing_data: 5000 bytes")


def test_real_photos_have_no_fill(photos) -> None:
    from common.images import jpeg_fill_fraction, open_image, to_rgb

    for photo in photos:
        with open(photo, "rb") as fh:
            assert jpeg_fill_fraction(to_rgb(open_image(fh))) == 0.0, photo.name
