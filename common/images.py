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

Failures raise :class:`ImageReadError`, whose ``str`` is the reason validation records, e.g.
``image_empty``, ``image_format_unsupported: GIF``, ``image_too_large: 20000x20000``,
``image_too_small: 8x100``, ``image_undecodable: image file is truncated ...``,
``image_mode_unsupported: LAB``. Errors of the file system (a missing file) stay ``OSError``.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

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
            ``image_too_small``, ``image_undecodable`` or ``image_mode_unsupported``.
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
        OSError: when the file cannot be opened or read.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
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
        ImageReadError: ``image_undecodable: <detail>`` (truncated or corrupt data),
            ``image_mode_unsupported: <MODE>``.
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
        raise ImageReadError("image_undecodable", _short(exc), fmt) from exc
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
