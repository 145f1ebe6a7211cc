"""The one image loader: validation, prepare, evaluate and serving all read pixels through it.

:func:`open_rgb` turns an image file into an RGB picture the same way for every stage, so what
validation checked is what training reads:

- **Size before pixels.** The header is parsed first and ``width * height`` compared with the
  limit before anything is decoded: a decompression bomb (a small file that claims a huge image)
  costs a few bytes of reading. Pillow's own process-wide check (``Image.MAX_IMAGE_PIXELS``) is
  replaced by the caller's limit, so the reason names the size.
- **EXIF orientation** is applied (``ImageOps.exif_transpose``): a phone photo stored sideways
  with ``Orientation=6`` comes out upright.
- **Every Pillow mode to RGB**, correctly: 16-bit grey (``I;16``, ``I;16B``, ``I;16L``,
  ``I;16N``, and ``I`` read as 16-bit) is scaled to 8 bits (``>> 8``) instead of being clipped to
  white; ``F`` in ``[0, 1]`` is scaled by 255, other floats are clipped to ``[0, 255]``;
  ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX`` use Pillow's conversion; anything
  with transparency (``RGBA``, ``RGBa``, ``LA``, ``PA``, ``P``, a ``tRNS`` colour) is composited
  on a **white** background, as a product photo's empty background is. Other modes (``LAB``,
  ``La``, ...) are refused: ``image_mode_unsupported: <MODE>``.
- **Animated images** (animated PNG, animated WebP, GIF, MPO): the first frame (Pillow's default
  frame 0) is the picture; the other frames are never decoded.
- **Paths are opened with** :func:`common.files.open_regular`: never through a symbolic link,
  never blocking on a FIFO.

Two checks of the whole file, for validation (:func:`image_end`, :func:`jpeg_fill_fraction`):
where the image's data ends (its end marker: the bytes after it are not the image), and how
much of a decoded JPEG is libjpeg's grey fill for data it did not find. Pillow cannot tell:
libjpeg's warnings ("Corrupt JPEG data: premature end of data segment") are discarded by its
JPEG decoder, which then returns a picture whose missing blocks are mid-grey.

Failures raise :class:`ImageReadError`, whose ``str`` is the reason validation records, e.g.
``image_empty``, ``image_format_unsupported: GIF``, ``image_too_large: 20000x20000``,
``image_too_small: 8x100``, ``image_truncated: image file is truncated ...``,
``image_undecodable: broken data stream ...``, ``image_mode_unsupported: LAB``, and from
:func:`image_end` ``image_truncated`` / ``image_corrupt``. Errors of the file system (a missing
file, a link: :class:`common.files.NotRegularFileError`) stay ``OSError``.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from common.files import open_regular

_SIGNATURES = {  # format name: the magic prefixes its files start with; only names a refused format
    "JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",), "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",), "TIFF": (b"II*\x00", b"MM\x00*"), "ICO": (b"\x00\x00\x01\x00",),
    "PSD": (b"8BPS",), "PDF": (b"%PDF",), "SVG": (b"<svg", b"<?xml"),
}
"""WebP is a RIFF container (``RIFF`` at 0, ``WEBP`` at 8): :func:`_sniff` checks it apart."""
_GREY16 = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA = frozenset({"RGBA", "RGBa", "LA", "PA", "P"})
_CONVERTIBLE = frozenset({"RGB", "1", "L", "CMYK", "YCbCr", "HSV", "RGBX"})
_WHITE = (255, 255, 255)


class ImageReadError(ValueError):
    """An image that cannot be used, with the reason validation records.

    Attributes:
        reason: the code: ``image_empty``, ``image_format_unsupported``, ``image_too_large``,
            ``image_too_small``, ``image_undecodable``, ``image_truncated``, ``image_corrupt``
            or ``image_mode_unsupported``.
        detail: what failed (a format, ``<W>x<H>``, a mode, the decoder's message), or ``""``.
        format: the file's format (Pillow name) when it was recognised, else ``None``.
    """

    def __init__(self, reason: str, detail: str = "", fmt: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.format = reason, detail, fmt


def open_rgb(source: str | os.PathLike | BinaryIO, max_pixels: int | None = None,
             min_side: int | None = None, formats: tuple[str, ...] | None = None,
             draft_size: int | None = None) -> Image.Image:
    """Reads an image as an upright RGB picture: :func:`open_image`, then :func:`to_rgb`.

    Args:
        source: a file path, or a binary file object read from its start.
        max_pixels: see :func:`open_image`.
        min_side: see :func:`open_image`.
        formats: see :func:`open_image`.
        draft_size: see :func:`to_rgb`.

    Returns:
        an in-memory mode ``"RGB"`` image (``H x W x 3`` uint8 as a numpy array), EXIF-oriented.

    Raises:
        ImageReadError: when the content cannot be used (see the module docstring).
        OSError: when the file cannot be opened or read;
            :class:`common.files.NotRegularFileError` when ``source`` is a path to a symbolic
            link, a FIFO, a folder or another non-regular file.
    """
    if isinstance(source, str | os.PathLike):
        with open_regular(source) as fh:
            return open_rgb(fh, max_pixels, min_side, formats, draft_size)
    return to_rgb(open_image(source, max_pixels, min_side, formats), draft_size)


def open_image(fh: BinaryIO, max_pixels: int | None = None, min_side: int | None = None,
               formats: tuple[str, ...] | None = None) -> ImageFile.ImageFile:
    """Parses an image's header and checks its size; no pixel is decoded.

    Args:
        fh: binary file object, read from its start; it must stay open until the image is loaded.
        max_pixels: largest ``width * height`` accepted; ``None``: Pillow's
            ``Image.MAX_IMAGE_PIXELS`` (no limit if that is ``None`` too).
        min_side: smallest ``min(width, height)`` accepted, in pixels; ``None``: any.
        formats: Pillow format names accepted, e.g. ``("JPEG", "PNG", "WEBP")``; ``None``: any
            format Pillow reads.

    Returns:
        the lazily loaded image (``.format``, ``.size``, ``.mode`` set), frame 0 selected.

    Raises:
        ImageReadError: ``image_empty`` (0 bytes), ``image_format_unsupported: <FORMAT|unknown>``,
            ``image_undecodable: <detail>`` (a broken header), ``image_too_large: <W>x<H>``,
            ``image_too_small: <W>x<H>``.
        OSError: when the file cannot be read.
    """
    try:
        fh.seek(0)
    except (AttributeError, io.UnsupportedOperation):  # a pipe or socket: Pillow needs to seek
        fh = io.BytesIO(fh.read())
    head = fh.read(16)
    if not head:
        raise ImageReadError("image_empty")
    img = _identify(fh, head, formats)
    width, height = img.size
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit is not None and width * height > limit:
        raise ImageReadError("image_too_large", f"{width}x{height}", img.format)
    if min_side is not None and min(width, height) < min_side:
        raise ImageReadError("image_too_small", f"{width}x{height}", img.format)
    return img


def to_rgb(img: Image.Image, draft_size: int | None = None) -> Image.Image:
    """Decodes an opened image (its frame 0) to an upright RGB picture.

    Args:
        img: an image from :func:`open_image` (or any Pillow image).
        draft_size: when given, a JPEG is decoded by libjpeg at the smallest scale (1/8, 1/4, 1/2)
            that keeps both sides at least this many pixels: much faster for training's small
            images; other formats ignore it.

    Returns:
        a new mode ``"RGB"`` image, EXIF orientation applied, transparency composited on white.

    Raises:
        ImageReadError: ``image_truncated: <detail>`` (the data ends before the picture),
            ``image_undecodable: <detail>`` (corrupt data), ``image_mode_unsupported: <MODE>``.
    """
    # Set, not saved and restored: loads run in threads, and a truncated image must never pass.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    fmt = img.format
    try:
        if draft_size:
            img.draft("RGB", (draft_size, draft_size))
        img.load()  # full decode: truncated or corrupt data fails here
        upright = ImageOps.exif_transpose(img)  # always a new image
    except Exception as exc:  # noqa: BLE001 -- any decoder failure means a bad file
        reason = "image_truncated" if "truncated" in str(exc).lower() else "image_undecodable"
        raise ImageReadError(reason, _short(exc), fmt) from exc
    mode = upright.mode
    try:
        if mode in _GREY16:
            return _grey16(upright)
        if mode == "F":
            return _float(upright)
        if mode in _ALPHA or (mode in ("L", "RGB") and "transparency" in upright.info):
            return _on_white(upright.convert("RGBA"))
        if mode == "RGB":
            return upright
        if mode in _CONVERTIBLE:
            return upright.convert("RGB")
    except ValueError as exc:  # a conversion Pillow does not have
        raise ImageReadError("image_mode_unsupported", f"{mode} ({_short(exc)})", fmt) from exc
    raise ImageReadError("image_mode_unsupported", mode, fmt)


JPEG_FILL = 128
"""The level libjpeg gives a block it found no data for: its coefficients stay 0, and a DCT
block of zeros decodes to the level shift, 128 (ITU-T T.81, A.3.1); Y = Cb = Cr = 128 is RGB
``(128, 128, 128)``."""
_FILL_RUN = 16
"""Pixels in a row segment counted as fill only when all 16 are: one MCU's width at 4:2:0, so a
photo's scattered mid-grey pixels do not count."""
_BLOCK = 1 << 20  # bytes read at a time by the walks below
_HUFFMAN_BLOCK_BITS = {0xC0: 2, 0xC1: 2, 0xC2: 1}
"""Least bits one 8x8 block costs in a Huffman-coded JPEG's scans (ITU-T T.81, F.1.2, G.1.2):
sequential (SOF0, SOF1) codes a DC difference and at least one AC symbol (end of block), each a
Huffman code of >= 1 bit; progressive (SOF2) codes every block's DC in its first DC scan (its AC
scans may skip blocks with an end-of-band run). Other frame types get no bound."""
_ECS_END = re.compile(rb"\xff[^\x00]")  # in entropy-coded data 0xFF is followed by 0x00 (stuffing)


def image_end(fh: BinaryIO, img: Image.Image) -> int:
    """Where the image's data ends, walking its container without decoding a pixel.

    - JPEG: marker segments from SOI to EOI (ITU-T T.81, B.1), the entropy-coded data of each
      scan searched for the next marker; restart markers must come in order (RST0..RST7,
      again); the scans must hold at least the bits the header's size needs (see
      :data:`_HUFFMAN_BLOCK_BITS`): a header claiming 6000x6000 over a 224x224 picture's data
      is refused here, before a 108 MB decode. MPO: the end of its last frame (the MP index
      of the first frame's APP2 segment).
    - PNG: chunks to IEND, each chunk's CRC-32 checked (Pillow does not check IDAT's).
    - WebP: the RIFF size (8 + size, padded to even), each chunk inside it.

    Args:
        fh: the image's binary file object, seekable; its position is left anywhere (Pillow
            seeks before it decodes).
        img: the image :func:`open_image` opened from ``fh`` (its ``format``, ``size``).

    Returns:
        the offset just past the image's last byte (``fh``'s size minus the trailing bytes).

    Raises:
        ImageReadError: ``image_truncated: <detail>`` (the file ends inside the image, or its
            scans cannot fill the header's size), ``image_corrupt: <detail>`` (a CRC mismatch,
            restart markers out of order, bytes where a marker must be).
        ValueError: for a format other than JPEG, MPO, PNG and WebP.
    """
    fmt = img.format
    if fmt in ("JPEG", "MPO"):
        end, mp_header = _jpeg_end(fh, 0, img.size)
        if fmt == "MPO" and mp_header is not None:
            for entry in getattr(img, "mpinfo", {}).get(0xB002, [])[1:]:
                start = mp_header + entry["DataOffset"]
                end = max(end, _jpeg_end(fh, start, None)[0])
        return end
    if fmt == "PNG":
        return _png_end(fh)
    if fmt == "WEBP":
        return _webp_end(fh)
    raise ValueError(f"image_end: no walk for format {fmt}")


def jpeg_fill_fraction(rgb: Image.Image, band_rows: int = 256) -> float:
    """Share of a decoded JPEG that is libjpeg's fill for missing data.

    When a scan's data ends early (a truncated file, zeroed or garbled bytes that make the
    decoder meet a marker too soon, a header larger than its data), libjpeg warns and leaves the
    remaining blocks' coefficients at zero: they decode to :data:`JPEG_FILL` grey, in runs of
    whole blocks to the end of the scan (or of a restart interval). Pillow discards the warning.
    Counted here: pixels in 16-pixel row segments (from the left edge) that are all
    ``(128, 128, 128)``; a real photo's mid-grey areas carry noise and rarely fill a segment.

    Args:
        rgb: the mode ``"RGB"`` picture (:func:`to_rgb`), any orientation.
        band_rows: rows converted to a numpy array at a time (bounds the memory to
            ``band_rows * width * 3`` bytes).

    Returns:
        the share, 0..1, of the picture's pixels.
    """
    width, height = rgb.size
    usable = width - width % _FILL_RUN
    if not usable or not height:
        return 0.0
    filled = 0
    for top in range(0, height, band_rows):
        bottom = min(height, top + band_rows)
        band = (np.asarray(rgb) if top == 0 and bottom == height else
                np.asarray(rgb.crop((0, top, width, bottom))))[:, :usable]
        grey = band[..., 0] == JPEG_FILL  # channel by channel: ~6x faster than .all(axis=2)
        if not grey.any():
            continue
        grey &= band[..., 1] == JPEG_FILL
        grey &= band[..., 2] == JPEG_FILL
        filled += int(grey.reshape(len(grey), -1, _FILL_RUN).all(axis=2).sum()) * _FILL_RUN
    return filled / (width * height)


class _Reader:
    """Reads a file forward through one block of bytes, so a walk never holds the whole file."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.base, self.buf = fh, 0, b""

    def at(self, pos: int, n: int) -> bytes:
        """``file[pos:pos + n]``, shorter at the end of the file."""
        if pos < self.base or pos + n > self.base + len(self.buf):
            self.fh.seek(pos)
            self.base, self.buf = pos, self.fh.read(max(n, _BLOCK))
        return self.buf[pos - self.base:pos - self.base + n]


def _truncated(detail: str) -> ImageReadError:
    return ImageReadError("image_truncated", detail)


def _corrupt(detail: str) -> ImageReadError:
    return ImageReadError("image_corrupt", detail)


def _jpeg_end(fh: BinaryIO, start: int, size: tuple[int, int] | None) -> tuple[int, int | None]:
    """``(end, mp_header)`` of the JPEG at ``start``: the offset past its EOI, and where its MPF
    header (the origin of an MPO's frame offsets) starts, or ``None``. ``size``: the header's
    size, checked against the scans' bits (``None``: not checked)."""
    data, file_size = _Reader(fh), _size(fh)
    if data.at(start, 2) != b"\xff\xd8":
        raise _corrupt(f"no JPEG start marker (SOI) at byte {start}")
    pos, block_bits, blocks, scan_bytes, restart_interval, mp_header = start + 2, 0, 0, 0, 0, None
    while True:
        head = data.at(pos, 2)
        if len(head) < 2:
            raise _truncated(f"the file ends at byte {pos}, before the JPEG's end marker (EOI)")
        if head[0] != 0xFF:
            raise _corrupt(f"byte {pos} is 0x{head[0]:02X} where a JPEG marker (0xFF..) must be")
        marker = head[1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        pos += 2
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # RSTn, SOI, TEM: no length
            raise _corrupt(f"marker 0xFF{marker:02X} at byte {pos - 2} outside a scan")
        seg = data.at(pos, 2)
        length = int.from_bytes(seg, "big") if len(seg) == 2 else 0
        if len(seg) < 2 or pos + length > file_size:
            raise _truncated(f"the file ends inside the JPEG segment 0xFF{marker:02X} at byte {pos - 2}")
        if length < 2:
            raise _corrupt(f"JPEG segment 0xFF{marker:02X} at byte {pos - 2} has length {length}")
        body = data.at(pos + 2, min(length - 2, 64))
        if marker in _HUFFMAN_BLOCK_BITS and len(body) >= 6:
            block_bits, blocks = _HUFFMAN_BLOCK_BITS[marker], _jpeg_blocks(body)
        elif marker == 0xDD and len(body) >= 2:  # DRI
            restart_interval = int.from_bytes(body[:2], "big")
        elif marker == 0xE2 and body.startswith(b"MPF\x00") and mp_header is None:
            mp_header = pos + 2 + 4
        pos += length
        if marker == 0xDA:  # SOS: entropy-coded data follows, to the next marker
            ecs_start, pos = pos, _jpeg_scan_end(data, pos, restart_interval)
            scan_bytes += pos - ecs_start
    need = block_bits * blocks // 8
    if size is not None and scan_bytes < need:
        raise _truncated(
            f"its header claims {size[0]}x{size[1]} pixels, whose {blocks} blocks need at least "
            f"{need} bytes of compressed data ({block_bits} bit(s) a block); its scans hold "
            f"{scan_bytes}")
    return pos, mp_header


def _jpeg_blocks(sof: bytes) -> int:
    """8x8 blocks of all components (without an MCU's padding) of a SOF segment's body."""
    height, width, count = int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big"), sof[5]
    factors = [(sof[7 + 3 * i] >> 4, sof[7 + 3 * i] & 15) for i in range(count) if 8 + 3 * i < len(sof)]
    if not factors:
        return 0
    h_max, v_max = max(h for h, _ in factors) or 1, max(v for _, v in factors) or 1
    return sum(math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
               for h, v in factors)


def _jpeg_scan_end(data: _Reader, pos: int, restart_interval: int) -> int:
    """The offset of the marker that ends the entropy-coded data at ``pos``; restart markers in
    it must count RST0, RST1, ... RST7, RST0 (T.81, B.2.1)."""
    expected = 0
    while True:
        chunk = data.at(pos, _BLOCK)
        if len(chunk) < 2:
            raise _truncated(f"the file ends at byte {pos + len(chunk)} inside the JPEG's "
                             "compressed data, before its end marker (EOI)")
        for found in _ECS_END.finditer(chunk, 0, len(chunk)):
            marker = found.group()[1]
            if 0xD0 <= marker <= 0xD7:
                if marker - 0xD0 != expected or not restart_interval:
                    raise _corrupt(f"restart marker RST{marker - 0xD0} at byte {pos + found.start()} "
                                   f"where RST{expected} is due: the data between them is damaged")
                expected = (expected + 1) % 8
                continue
            return pos + found.start()
        pos += len(chunk) - 1  # a 0xFF at the block's end is read again with the byte after it


def _png_end(fh: BinaryIO) -> int:
    data, pos, size = _Reader(fh), 8, _size(fh)
    while True:
        head = data.at(pos, 8)
        if len(head) < 8:
            raise _truncated(f"the file ends at byte {pos + len(head)}, before the PNG's IEND chunk")
        length, kind = struct.unpack(">I4s", head)
        name = kind.decode("latin-1")
        if pos + 12 + length > size:
            raise _truncated(f"the file ends inside the PNG chunk {name} at byte {pos}")
        crc, done = zlib.crc32(kind), 0
        fh.seek(pos + 8)
        while done < length:
            piece = fh.read(min(_BLOCK, length - done))
            crc, done = zlib.crc32(piece, crc), done + len(piece)
        if fh.read(4) != struct.pack(">I", crc):
            raise _corrupt(f"the PNG chunk {name} at byte {pos} fails its CRC-32 check")
        pos += 12 + length
        if kind == b"IEND":
            return pos


def _webp_end(fh: BinaryIO) -> int:
    data, size = _Reader(fh), _size(fh)
    riff = int.from_bytes(data.at(4, 4), "little")
    end = 8 + riff + (riff & 1)
    if end > size:
        raise _truncated(f"its RIFF header claims {end} bytes, the file holds {size}")
    pos = 12
    while pos < end:
        head = data.at(pos, 8)
        chunk = int.from_bytes(head[4:8], "little") if len(head) == 8 else end
        if pos + 8 + chunk > end:
            raise _corrupt(f"the WebP chunk {head[:4]!r} at byte {pos} runs past the RIFF size")
        pos += 8 + chunk + (chunk & 1)
    return end


def _size(fh: BinaryIO) -> int:
    try:
        return os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        here = fh.tell()
        try:
            return fh.seek(0, io.SEEK_END)
        finally:
            fh.seek(here)


def _identify(fh: BinaryIO, head: bytes, formats: tuple[str, ...] | None) -> ImageFile.ImageFile:
    # Pillow's Image.open without its process-wide decompression-bomb check (open_image applies
    # the caller's limit instead): the registered plugin whose signature matches parses the header.
    Image.preinit()
    if formats is None or any(name not in Image.OPEN for name in formats):
        Image.init()
    for name in formats if formats is not None else tuple(Image.ID):
        factory, accept = Image.OPEN.get(name, (None, None))
        if factory is None:
            continue
        verdict = accept(head) if accept else None
        if accept and (not verdict or isinstance(verdict, str)):
            continue  # a str is Pillow's "looks like it, but unsupported" message
        fh.seek(0)
        try:
            return factory(fh, "")
        except Exception as exc:  # noqa: BLE001 -- any parser failure means a bad header
            if accept is None:
                continue  # a format without a signature: it was only a guess
            raise ImageReadError("image_undecodable", _short(exc), name) from exc
    raise ImageReadError("image_format_unsupported", _sniff(head) or "unknown")


def _grey16(img: Image.Image) -> Image.Image:
    """16-bit grey (``I`` read as 16-bit, clipped to [0, 65535]) -> 8 bits by ``>> 8``."""
    values = np.asarray(img)
    grey = (np.clip(values, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
    transparent = img.info.get("transparency")
    if isinstance(transparent, int):  # a PNG tRNS grey level: that level is the background
        grey[values == transparent] = 255
    return Image.fromarray(grey).convert("RGB")


def _float(img: Image.Image) -> Image.Image:
    """``F``: values in [0, 1] scaled by 255, otherwise read on the 0-255 scale; NaN -> 0."""
    values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(values, 0.0, 255.0).round().astype(np.uint8)).convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    out = Image.new("RGB", rgba.size, _WHITE)
    out.paste(rgba, mask=rgba)  # the alpha band is the mask
    return out


def _sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for name, magics in _SIGNATURES.items() if head.startswith(magics)), None)


def _short(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
