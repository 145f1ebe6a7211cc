"""Image checks of one listing: path inside the batch, format, size (before decoding), full decode.

The header is read first and the dimensions checked before any pixel is decoded, so a
decompression bomb (a small file that claims a huge image) costs a few bytes of reading.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image, ImageFile, ImageStat, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from common.params import ValidateParams

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
"""Accepted formats (PIL names) and the extension the store gives them."""

_OPENERS = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}
# The plugin classes parse the header only. ``Image.open`` would add PIL's own process-wide
# decompression-bomb check (``Image.MAX_IMAGE_PIXELS``); we apply ``params.max_image_pixels``
# ourselves instead, so the limit is the one in params.yaml and the reason names the size.

_SIGNATURES = (  # (magic prefix, offset, format name); only used to name a rejected format
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WEBP"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"8BPS", 0, "PSD"),
    (b"%PDF", 0, "PDF"),
    (b"<svg", 0, "SVG"),
    (b"<?xml", 0, "SVG"),
)


def _sniff(head: bytes) -> str | None:
    for magic, offset, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            if name == "WEBP" and head[:4] != b"RIFF":
                continue
            return name
    return None


def resolve_image(batch_dir: Path, image_key: str) -> Path | None:
    """The file an image key names, or ``None`` when the key leaves the batch folder.

    Refused: empty keys, absolute paths (POSIX or Windows), drive letters, backslashes, any
    ``..`` part, and keys whose resolved path (symlinks followed) is outside ``batch_dir``.
    """
    if not image_key or "\x00" in image_key or "\\" in image_key:
        return None
    posix, win = PurePosixPath(image_key), PureWindowsPath(image_key)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts:
        return None
    root = Path(batch_dir).resolve()
    target = (root / posix).resolve()
    if not target.is_relative_to(root) or target == root:
        return None
    return target


def check_image(batch_dir: Path, image_key: str | None,
                params: ValidateParams) -> tuple[str | None, str | None, str]:
    """Checks one listing image and hashes it.

    Args:
        batch_dir: the batch folder; the image must resolve inside it.
        image_key: image path relative to ``batch_dir`` (POSIX separators).
        params: ``max_image_pixels`` (width * height, checked from the header before decoding)
            and ``min_image_side`` (pixels).

    Returns:
        ``(error, sha256, ext)``: on success ``(None, <64 hex chars>, ".jpg" | ".png" | ".webp")``;
        on failure a short reason and ``None`` (``ext`` is the detected format's extension or
        ``""``). Reasons: ``image_key_missing``, ``image_path_outside_batch``, ``image_missing``,
        ``image_format_unsupported: <FORMAT|unknown>``, ``image_too_large: <W>x<H>``,
        ``image_too_small: <W>x<H>``, ``image_undecodable: <detail>``, ``image_blank: <detail>``
        (grey-level standard deviation below ``params.min_image_stddev``, 0-255 scale).

    Never raises for bad image content; ``OSError`` from the filesystem other than a missing
    file is reported as ``image_unreadable: <detail>``.
    """
    if image_key is None or not str(image_key).strip():
        return "image_key_missing", None, ""
    path = resolve_image(batch_dir, str(image_key))
    if path is None:
        return "image_path_outside_batch", None, ""
    if not path.is_file():  # also refuses folders, FIFOs and devices
        return "image_missing", None, ""
    try:
        with open(path, "rb") as fh:
            name = _sniff(fh.read(16))
            if name not in FORMATS:
                return f"image_format_unsupported: {name or 'unknown'}", None, ""
            ext = FORMATS[name]
            fh.seek(0)
            error = _check_pixels(fh, name, params)
            if error:
                return error, None, ext
            fh.seek(0)
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        return f"image_unreadable: {exc.strerror or exc}", None, ""
    return None, sha, ext


def _check_pixels(fh, name: str, params: ValidateParams) -> str | None:
    # Set, not saved and restored: checks run in threads, and a truncated image must never pass.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = _OPENERS[name](fh)  # header only, no pixel decoded yet
    except Exception as exc:  # noqa: BLE001 -- any parser failure means a bad file
        return f"image_undecodable: {_short(exc)}"
    with img:
        width, height = img.size
        if width * height > params.max_image_pixels:
            return f"image_too_large: {width}x{height}"
        if min(width, height) < params.min_image_side:
            return f"image_too_small: {width}x{height}"
        try:
            img.load()  # full decode: truncated or corrupt data fails here
            grey = img.convert("L")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return f"image_too_large: {width}x{height}"
        except Exception as exc:  # noqa: BLE001
            return f"image_undecodable: {_short(exc)}"
        # A blank (uniform) picture shows no product: grey-level standard deviation ~ 0.
        stddev = ImageStat.Stat(grey).stddev[0]
        if stddev < params.min_image_stddev:
            return f"image_blank: grey std dev {stddev:.2f} < {params.min_image_stddev}"
    return None


def _short(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
