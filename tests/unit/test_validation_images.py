"""check_image on real and hand-made images: formats, truncation, decompression bombs, paths."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import pytest
from PIL import Image

from common.params import ValidateParams
from tests.conftest import PROJECT_ROOT
from validation.images import check_image, resolve_image

PARAMS = ValidateParams()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _one_bit_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG: ~50 KB on disk for 20000x20000, but PIL decodes mode "1"
    to one byte per pixel, so decoding it would take width * height bytes (400 MB)."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


@pytest.fixture()
def batch(tmp_path: Path) -> Path:
    (tmp_path / "batch" / "images").mkdir(parents=True)
    return tmp_path / "batch"


def test_real_jpeg_accepted_with_its_sha(batch: Path, real_jpeg: Path) -> None:
    data = real_jpeg.read_bytes()
    (batch / "images" / "1.jpg").write_bytes(data)
    assert check_image(batch, "images/1.jpg", PARAMS) == (
        None, hashlib.sha256(data).hexdigest(), ".jpg")


def test_truncated_jpeg_refused(batch: Path, real_jpeg: Path) -> None:
    data = real_jpeg.read_bytes()
    (batch / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])
    error, sha, ext = check_image(batch, "images/cut.jpg", PARAMS)
    assert error == (f"image_truncated: the file ends at byte {len(data) // 2} inside the JPEG's "
                     "compressed data, before its end marker (EOI)")
    assert sha is None and ext == ".jpg"


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", ".png"), ("WEBP", ".webp")])
def test_png_and_webp_accepted(batch: Path, real_jpeg: Path, fmt: str, ext: str) -> None:
    path = batch / "images" / f"x{ext}"
    with Image.open(real_jpeg) as img:  # a real listing photo, re-encoded
        img.save(path, format=fmt)
    error, sha, got_ext = check_image(batch, f"images/x{ext}", PARAMS)
    assert error is None and got_ext == ext
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_blank_image_refused(batch: Path, fmt: str) -> None:
    Image.new("RGB", (224, 224), "white").save(batch / "images" / "blank.img", format=fmt)
    error = check_image(batch, "images/blank.img", PARAMS)[0]
    assert error.startswith("image_blank: grey std dev 0.00")


def test_extension_does_not_decide_the_format(batch: Path) -> None:
    Image.new("RGB", (40, 30)).save(batch / "images" / "really_png.jpg", format="PNG")
    assert check_image(batch, "images/really_png.jpg", PARAMS)[2] == ".png"


def test_gif_refused_as_unsupported(batch: Path) -> None:
    Image.new("RGB", (40, 30)).save(batch / "images" / "a.gif", format="GIF")
    assert check_image(batch, "images/a.gif", PARAMS) == (
        "image_format_unsupported: GIF", None, "")


def test_not_an_image_refused(batch: Path) -> None:
    (batch / "images" / "a.jpg").write_text("hello", encoding="utf-8")
    assert check_image(batch, "images/a.jpg", PARAMS)[0] == "image_format_unsupported: unknown"


def test_too_small_refused(batch: Path) -> None:
    Image.new("RGB", (8, 100)).save(batch / "images" / "thin.png")
    assert check_image(batch, "images/thin.png", PARAMS)[0] == "image_too_small: 8x100"


_PEAK_PROBE = """
import json, sys, time
from pathlib import Path
from common.params import ValidateParams
from PIL import Image
from validation.images import check_image
Image.init()  # Pillow registers its format plugins once per process: not the check's time
batch, key, params = Path(sys.argv[1]), sys.argv[2], ValidateParams.model_validate_json(sys.argv[3])
def peak_kib():  # VmHWM: this address space's peak RSS, new at exec (ru_maxrss is not: it keeps the parent's)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
before = peak_kib()
start = time.perf_counter()
error, sha, _ = check_image(batch, key, params)
seconds = time.perf_counter() - start
grown = peak_kib() - before
print(json.dumps({"error": error, "sha": sha, "seconds": seconds, "grown_kib": grown}))
"""
BOMB_PEAK_BOUND_KIB = 100 * 1024
"""Peak RSS growth allowed while refusing the bomb: decoding it takes >= 400 MB (one byte per
pixel in mode "1"), reading its header a few KB."""


def _check_image_in_a_fresh_process(batch: Path, key: str, params: ValidateParams) -> dict:
    """check_image in a new interpreter, with the growth of that process's own peak RSS.

    The peak is ``VmHWM`` of ``/proc/self/status``, which belongs to the address space and starts
    anew at ``exec``. ``ru_maxrss`` does not: Linux carries it across ``exec`` from the forked
    parent, so under a pytest process that had grown past 432 MB the decode read 0 KiB grown
    (CI, stop 22). In the test process itself earlier tests have pushed the peak up too.
    """
    proc = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(batch), key, params.model_dump_json()],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_decompression_bomb_refused_from_the_header(batch: Path) -> None:
    """A valid 50 KB PNG that decodes to 400 MB must be refused from its header, undecoded."""
    path = batch / "images" / "bomb.png"
    path.write_bytes(_one_bit_png(20_000, 20_000))
    assert path.stat().st_size < 100_000
    bomb = _check_image_in_a_fresh_process(batch, "images/bomb.png", PARAMS)
    assert bomb["error"] == "image_too_large: 20000x20000" and bomb["sha"] is None
    assert bomb["grown_kib"] < BOMB_PEAK_BOUND_KIB, f"peak memory grew by {bomb['grown_kib']} KiB: the image was decoded"
    assert bomb["seconds"] < 1.0


def test_the_peak_memory_probe_sees_a_decode(batch: Path) -> None:
    """The probe above can fail: a 12000 x 12000 1-bit PNG under a raised limit is decoded (144 MB
    in mode "1", 432 MB as RGB: well above what importing the checker peaks at) and its growth
    exceeds the bomb's bound."""
    (batch / "images" / "big.png").write_bytes(_one_bit_png(12_000, 12_000))
    decoded = _check_image_in_a_fresh_process(batch, "images/big.png",
                                              PARAMS.model_copy(update={"max_image_pixels": 2 * 10**8}))
    assert decoded["error"].startswith("image_blank")  # decoded all the way to the blank check
    assert decoded["grown_kib"] > BOMB_PEAK_BOUND_KIB, decoded


def test_limit_comes_from_params(batch: Path) -> None:
    Image.new("RGB", (100, 100)).save(batch / "images" / "a.png")
    small = PARAMS.model_copy(update={"max_image_pixels": 5_000})
    assert check_image(batch, "images/a.png", small)[0] == "image_too_large: 100x100"


@pytest.mark.parametrize("key", ["../x.jpg", "images/../../x.jpg", "/etc/passwd",
                                 "..\\x.jpg", "C:/x.jpg", "images/../images/../../x.jpg"])
def test_path_tricks_refused(batch: Path, real_jpeg: Path, key: str) -> None:
    (batch.parent / "x.jpg").write_bytes(real_jpeg.read_bytes())  # exists, outside the batch
    assert check_image(batch, key, PARAMS) == ("image_path_outside_batch", None, "")


def test_symlink_pointing_outside_refused(batch: Path, real_jpeg: Path) -> None:
    (batch / "images" / "link.jpg").symlink_to(real_jpeg)
    assert check_image(batch, "images/link.jpg", PARAMS) == (
        "image_not_regular_file: images/link.jpg is a symbolic link", None, "")
    assert resolve_image(batch, "images/link.jpg") is None


def test_symlink_inside_the_batch_refused_too(batch: Path, real_jpeg: Path) -> None:
    """A link is never followed, wherever it points: the store must hold what was checked."""
    (batch / "images" / "a.jpg").write_bytes(real_jpeg.read_bytes())
    (batch / "images" / "b.jpg").symlink_to(batch / "images" / "a.jpg")
    assert check_image(batch, "images/b.jpg", PARAMS) == (
        "image_not_regular_file: images/b.jpg is a symbolic link", None, "")
    assert check_image(batch, "images/a.jpg", PARAMS)[0] is None


def test_symlinked_folder_on_the_way_refused(batch: Path, real_jpeg: Path) -> None:
    (batch / "real").mkdir()
    (batch / "real" / "a.jpg").write_bytes(real_jpeg.read_bytes())
    (batch / "images" / "sub").symlink_to(batch / "real", target_is_directory=True)
    assert check_image(batch, "images/sub/a.jpg", PARAMS) == (
        "image_not_regular_file: images/sub is a symbolic link", None, "")
    (batch / "images" / "dangling.jpg").symlink_to(batch / "nowhere.jpg")
    assert check_image(batch, "images/dangling.jpg", PARAMS)[0] == (
        "image_not_regular_file: images/dangling.jpg is a symbolic link")


def test_fifo_refused_without_blocking(batch: Path) -> None:
    """A FIFO with no writer: open() would wait forever; check_image answers at once."""
    import os
    import threading

    os.mkfifo(batch / "images" / "pipe.jpg")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(
        check_image(batch, "images/pipe.jpg", PARAMS)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result == [("image_not_regular_file: images/pipe.jpg is a FIFO", None, "")]


def test_nul_in_the_key_is_named(batch: Path) -> None:
    assert check_image(batch, "images/a\x00.jpg", PARAMS) == (
        "image_key_invalid: the key holds a NUL character (\\x00) at position 8", None, "")


@pytest.mark.parametrize(("key", "reason"), [
    ("images/none.jpg", "image_missing"), ("images/none/a.jpg", "image_missing"),
    ("images", "image_not_regular_file: images is a folder"),
    (None, "image_key_missing"), ("", "image_key_missing")])
def test_missing_images(batch: Path, key: str | None, reason: str) -> None:
    assert check_image(batch, key, PARAMS) == (reason, None, "")


def _nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_nfd_named_file_found_by_its_nfc_key(batch: Path, real_jpeg: Path) -> None:
    """Listing ids (so image keys) are NFC; a file written on macOS is named in NFD."""
    folder = batch / "images" / _nfd("Señora")
    folder.mkdir()
    (folder / _nfd("café.jpg")).write_bytes(real_jpeg.read_bytes())
    key = unicodedata.normalize("NFC", "images/Señora/café.jpg")
    assert not (batch / key).exists()
    assert resolve_image(batch, key) == (folder / _nfd("café.jpg")).resolve()
    assert check_image(batch, key, PARAMS) == (
        None, hashlib.sha256(real_jpeg.read_bytes()).hexdigest(), ".jpg")


def test_nfc_matching_never_leaves_the_batch(batch: Path, real_jpeg: Path) -> None:
    (batch.parent / _nfd("café.jpg")).write_bytes(real_jpeg.read_bytes())  # outside the batch
    (batch / "images" / _nfd("thé.jpg")).symlink_to(batch.parent / _nfd("café.jpg"))
    assert check_image(batch, "../café.jpg", PARAMS) == ("image_path_outside_batch", None, "")
    assert check_image(batch, "images/thé.jpg", PARAMS) == (
        "image_not_regular_file: images/thé.jpg is a symbolic link", None, "")
    (batch / "images" / _nfd("élan")).symlink_to(batch.parent, target_is_directory=True)
    assert check_image(batch, "images/élan/café.jpg", PARAMS) == (
        "image_not_regular_file: images/élan is a symbolic link", None, "")


def test_two_files_differing_only_in_normalisation_are_not_guessed(batch: Path,
                                                                   real_jpeg: Path) -> None:
    key = "images/" + unicodedata.normalize("NFC", "ǘ.jpg")  # u + diaeresis + acute
    for name in ("u\u0308\u0301.jpg", "\u00fc\u0301.jpg"):  # two non-NFC spellings of it
        (batch / "images" / name).write_bytes(real_jpeg.read_bytes())
    assert check_image(batch, key, PARAMS) == ("image_missing", None, "")


def test_a_name_part_too_long_for_the_filesystem_is_a_reason_not_a_crash(tmp_path):
    """A 300-byte listing id makes an image key the OS refuses (ENAMETOOLONG): a row reason."""
    from common.params import ValidateParams
    from validation.images import check_image

    (tmp_path / "images").mkdir()
    reason, sha, _ = check_image(tmp_path, "images/" + "a" * 300 + ".jpg", ValidateParams())
    assert sha is None and reason in ("image_missing", "image_unreadable: File name too long")
